"""Request to first step, and whole run, for the three ways the plug-in reaches the engine.

    sudo python benchmarks/transports.py [--sizes 1 24] [--iterations 3] [--repeats 3]
                                         [--transports one-shot warm ssh]

* one-shot: ``nst_engine stream`` started for the request (what a run costs with no
  service: importing torch, loading the network, the style targets);
* warm: ``nst_engine connect`` to a running service (network and style targets kept);
* ssh: the same through ``ssh`` to a throwaway sshd on 127.0.0.1 (tests/sshd.py) with
  a warm service behind it: what a GPU machine over SSH adds, minus the network.
Layers of 1 and 24 megapixels (RGBA float32, as GIMP sends them), the default
automatic working size and a few iterations, so the figures are the fixed costs and
the transfer. Prints JSON lines: seconds from sending the request (the engine was
started before, as the plug-in starts it while GIMP reads the layer) to the first
``progress`` event and to the result, bytes sent and received.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "gimp_plugin" / "neural-style-transfer")]
import nst_client  # noqa: E402
import nst_config  # noqa: E402
from sshd import SSHServer  # noqa: E402


def one_run(command, layer: np.ndarray, style: Path, iterations: int) -> dict:
    """One request as the plug-in makes it: the engine started, the layer's bytes
    made meanwhile (GIMP reading the layer), then the request; the clock starts there."""
    settings = {"style_strength": 0.5, "iterations": iterations, "max_size": 0,
                "preserve_colors": False, "seed": 0, "device": "auto"}
    marks, received = {}, [0]

    def on_event(event):
        marks.setdefault(event["event"], time.monotonic() - start)
        received[0] += len(event.get("payload", b""))

    run = nst_client.EngineRun(command, on_event)
    raw = layer.tobytes()
    start = time.monotonic()
    run.send_request(settings, raw, layer.shape, nst_client.Style.from_file(style), 2.0)
    run.read_to_end()
    return {"first_step_s": marks["progress"], "total_s": time.monotonic() - start,
            "sent_bytes": len(raw) + style.stat().st_size, "received_bytes": received[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--style", type=Path, default=ROOT / "docs" / "images" / "before-after.jpg")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 24])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--transports", nargs="+", default=["one-shot", "warm", "ssh"])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="nst-transports-"))
    runtime = folder / "run"
    runtime.mkdir(mode=0o700)
    os.environ.update(XDG_RUNTIME_DIR=str(runtime), NST_SERVICE_IDLE_S="600")
    (folder / "ssh").mkdir()
    env = {k: os.environ[k] for k in ("NST_WEIGHTS", "NST_DATA_DIR") if k in os.environ}
    ssh = SSHServer(folder / "ssh", {**env, "XDG_RUNTIME_DIR": str(runtime),
                                     "NST_SERVICE_IDLE_S": "600"})
    os.environ["NST_SSH_OPTIONS"] = ssh.client_options()
    python = sys.executable
    commands = {
        "one-shot": [python, "-m", "nst_engine", "stream"],
        "warm": [python, "-m", "nst_engine", "connect"],
        "ssh": nst_config.ssh_command(ssh.host, [python, "-m", "nst_engine", "connect"]),
    }
    try:
        for megapixels in args.sizes:
            side = int((megapixels * 1e6 / 1.5) ** 0.5)
            rng = np.random.default_rng(0)
            layer = rng.random((side, int(side * 1.5), 4), dtype=np.float32)
            one_run(commands["warm"], layer, args.style, args.iterations)  # warms it
            for name in args.transports:
                runs = [one_run(commands[name], layer, args.style, args.iterations)
                        for _ in range(args.repeats)]
                print(json.dumps({
                    "transport": name, "megapixels": megapixels,
                    "layer": list(layer.shape),
                    "first_step_s": statistics.median(r["first_step_s"] for r in runs),
                    "total_s": statistics.median(r["total_s"] for r in runs),
                    "sent_bytes": runs[0]["sent_bytes"],
                    "received_bytes": runs[0]["received_bytes"],
                }), flush=True)
    finally:
        ssh.stop()


if __name__ == "__main__":
    main()
