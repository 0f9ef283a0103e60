"""What the photographer waits for, measured as the plug-in sees it (nst_client, no GIMP).

    python benchmarks/run_window.py PHOTO STYLE [--sizes 256 512 1024] [--cold 3]

* first picture: seconds from starting a cold engine (no service running: each cold
  run gets a runtime folder of its own) to its first ``preview`` event, for
  the plug-in's request (the whole photo, automatic size, previews every 2 s), then the
  same with the warm service;
* preview cost: the engine's own time writing previews, as a share of the run;
* estimates: before each run, the dialog's estimate from the calibration of the run
  before it (as the plug-in stores it), against the run's actual time.
The engine must have the real weights (NST_DATA_DIR). Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gimp_plugin"
                       / "neural-style-transfer"))
import nst_client  # noqa: E402
import nst_estimates  # noqa: E402

from nst_engine import load_picture  # noqa: E402

COMMAND = [sys.executable, "-m", "nst_engine", "connect"]


def run(photo: np.ndarray, style: Path, settings: dict, interval: float) -> tuple:
    """One plug-in-like run through ``nst_engine connect``; returns (SpeedLog, events)."""
    speed, events = nst_estimates.SpeedLog(), []

    def on_event(event):
        speed.on_event(event)
        events.append(event)

    engine_run = nst_client.EngineRun(COMMAND, on_event)
    engine_run.send_request(settings, photo.tobytes(), photo.shape,
                            nst_client.Style.from_file(style), interval)
    engine_run.read_to_end()
    return speed, events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("photo", type=Path)
    parser.add_argument("style", type=Path)
    parser.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024])
    parser.add_argument("--cold", type=int, default=3, help="cold starts timed")
    args = parser.parse_args()
    photo = load_picture(args.photo).rgb.astype(np.float32)
    height, width = photo.shape[:2]
    base = {"style_strength": 0.5, "iterations": 200, "max_size": 0, "preserve_colors": False,
            "seed": 0, "device": "auto"}

    for mode in ("cold", "warm"):
        os.environ["NST_SERVICE_IDLE_S"] = "5" if mode == "cold" else "600"
        if mode == "warm":
            os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="nst-bench-")
            run(photo, args.style, {**base, "iterations": 3}, 2.0)  # starts the service
        firsts, steps = [], []
        for _ in range(args.cold):
            if mode == "cold":  # a runtime folder of its own: no service there yet
                os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="nst-bench-")
            speed, _ = run(photo, args.style, {**base, "iterations": 3}, 2.0)
            firsts.append(speed.first_seen["preview"])
            steps.append(speed.first_seen["progress"])
        print(json.dumps({"engine": mode, "first_picture_s": statistics.median(firsts),
                          "first_step_s": statistics.median(steps), "runs": firsts}),
              flush=True)

    calibration = None
    for size in args.sizes:
        settings = {**base, "max_size": size}
        estimate = nst_estimates.estimate_seconds(calibration, width, height, settings)
        speed, events = run(photo, args.style, settings, 2.0)
        actual = speed.first_seen["result"]
        previews = [e for e in events if e["event"] == "preview"]
        result = events[-1]
        print(json.dumps({
            "size": size, "estimate_s": estimate, "actual_s": actual,
            "estimate_error": None if estimate is None else estimate / actual - 1,
            "steps": result["steps"], "stopped": result["stopped"],
            "final_loss": [e for e in events if e["event"] == "progress"][-1]["loss"],
            "previews": len(previews),
            "preview_share": previews[-1]["write_s"] / actual if previews else 0.0,
            "first_preview_s": speed.first_seen.get("preview"),
        }), flush=True)
        calibration = speed.calibration()


if __name__ == "__main__":
    main()
