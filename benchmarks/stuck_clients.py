"""What other clients cost the next photographer's run through the warm engine.

    python benchmarks/stuck_clients.py [--repeats 5] [--size 128]

Starts ``nst-engine serve`` in a runtime folder of its own and warms it with one
plug-in-like run (amber.jpg's pixels at 512² × mosaic.jpg, ``--size`` px working
size). Then times, from the request's start, a run through ``nst_engine connect``
to its first ``progress`` event in each condition: nothing else connected; twenty
connections that were greeted and send nothing; just after 200 connections that
opened and closed. Medians of ``--repeats``; the run's events say whether it was
queued.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench import SHARED
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gimp_plugin"
                       / "neural-style-transfer"))
import nst_client  # noqa: E402

from nst_engine.relay import reach, socket_path  # noqa: E402

CONNECT = [sys.executable, "-m", "nst_engine", "connect"]


def timed_run(layer: np.ndarray, size: int) -> tuple[float, bool]:
    """Seconds from the request to the first step, and whether it was queued."""
    marks = {}
    run = nst_client.EngineRun(CONNECT, lambda e: marks.setdefault(e["event"],
                                                                   time.perf_counter()))
    began = time.perf_counter()
    run.send_request({"iterations": 3, "max_size": size, "device": "cpu", "seed": 0},
                     layer.tobytes(), layer.shape,
                     nst_client.Style.from_file(SHARED / "mosaic.jpg"))
    run.read_to_end()
    return marks["progress"] - began, "queued" in marks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    with Image.open(SHARED / "amber.jpg") as photo:
        layer = np.asarray(photo.convert("RGB").resize((512, 512)), np.float32) / 255
    with tempfile.TemporaryDirectory() as folder:
        runtime = Path(folder) / "run"
        runtime.mkdir(mode=0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        service = subprocess.Popen([sys.executable, "-m", "nst_engine", "serve",
                                    "--idle-timeout", "120"], stderr=subprocess.DEVNULL)
        path = socket_path(runtime / "nst-engine")
        try:
            while not path.exists():
                time.sleep(0.1)
            timed_run(layer, args.size)  # warm: network loaded, targets cached

            def nothing() -> list:
                return []

            def stalled() -> list:
                return [reach(path).sock for _ in range(20)]

            def dead() -> list:
                for _ in range(200):
                    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    conn.connect(str(path))
                    conn.close()
                return []

            rows = []
            for name, before in (("nothing else connected", nothing),
                                 ("20 connections that send nothing", stalled),
                                 ("after 200 connections that closed at once", dead)):
                seconds, queued = [], []
                for _ in range(args.repeats):
                    held = before()
                    took, was_queued = timed_run(layer, args.size)
                    seconds.append(took)
                    queued.append(was_queued)
                    for conn in held:
                        conn.close()
                rows.append((name, statistics.median(seconds), any(queued)))
        finally:
            service.send_signal(signal.SIGTERM)
            service.wait(timeout=60)
    print(f"| condition ({args.repeats} runs, {args.size} px) | request → first step, "
          "median (s) | queued |")
    print("|---|---|---|")
    for name, median, queued in rows:
        print(f"| {name} | {median:.2f} | {'yes' if queued else 'no'} |")


if __name__ == "__main__":
    main()
