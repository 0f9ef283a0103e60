"""How soon the command line paints when a warm engine runs, and how soon it helps.

    python benchmarks/cli_start.py [--repeats 5] [--size 128]

Starts ``nst-engine serve`` in a runtime folder of its own, runs one ``stylize``
to warm it (network loaded, the painting's targets cached), then times from the
command's start: ``stylize --help`` to its exit, and a ``stylize`` of amber.jpg
(1080²) × mosaic.jpg at ``--size`` px through the service to its first
``progress`` event (the command is then cancelled). Medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import SHARED

from nst_engine.relay import socket_path

ENGINE = [sys.executable, "-m", "nst_engine"]


def first_progress(env: dict, size: int, out: Path) -> tuple[float, int]:
    """Seconds from the command's start to its first progress event, and who painted."""
    began = time.perf_counter()
    process = subprocess.Popen(
        [*ENGINE, "stylize", str(SHARED / "amber.jpg"), str(SHARED / "mosaic.jpg"), "-o",
         str(out), "--max-size", str(size), "--progress", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    painter = None
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == "started":
            painter = event["engine_pid"]
        if event["event"] == "progress":
            seconds = time.perf_counter() - began
            process.send_signal(signal.SIGINT)
            break
    process.communicate(timeout=60)
    return seconds, painter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runtime = Path(folder) / "run"
        runtime.mkdir(mode=0o700)
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
        service = subprocess.Popen([*ENGINE, "serve", "--idle-timeout", "120"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while not socket_path(runtime / "nst-engine").exists():
                time.sleep(0.1)
            out = Path(folder) / "out.png"
            first_progress(env, args.size, out)  # warms the service: network, targets
            helps, firsts = [], []
            for _ in range(args.repeats):
                began = time.perf_counter()
                subprocess.run([*ENGINE, "stylize", "--help"], env=env, check=True,
                               stdout=subprocess.DEVNULL)
                helps.append(time.perf_counter() - began)
                seconds, painter = first_progress(env, args.size, out)
                assert painter == service.pid, "not served by the warm engine"
                firsts.append(seconds)
        finally:
            service.terminate()
            service.wait(timeout=30)
    print(f"stylize --help: median {statistics.median(helps):.2f} s "
          f"({', '.join(f'{s:.2f}' for s in helps)})")
    print(f"stylize through the warm engine, 1080² photo at {args.size} px, start to first "
          f"progress: median {statistics.median(firsts):.2f} s "
          f"({', '.join(f'{s:.2f}' for s in firsts)})")


if __name__ == "__main__":
    main()
