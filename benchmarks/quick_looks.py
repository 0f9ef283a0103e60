"""Five quick looks of five paintings, as the session window asks for them (nst_client,
no GIMP), through the warm engine.

    python benchmarks/quick_looks.py PHOTO PAINTING... [--finish]

Each painting is new to the engine (its style targets are worked out), as when a
photographer tries paintings one after another. Prints, per look, the seconds from
asking to the first picture and to the result, then the sum. With ``--finish``, what
*Finish this one* saves: the first painting's quick look finished (a full default run
starting from its result, its scales skipped) against a fresh default run — seconds,
and the objective each ended at (the last step's, at the same working size). A first,
tiny run warms the engine up (torch and the network loaded) and is not counted. The
engine must have the real weights (NST_DATA_DIR). Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gimp_plugin"
                       / "neural-style-transfer"))
import nst_arguments  # noqa: E402
import nst_client  # noqa: E402

from nst_contract.knobs import QUICK_LOOK  # noqa: E402
from nst_engine import load_picture  # noqa: E402

COMMAND = [sys.executable, "-m", "nst_engine", "connect"]
PREVIEW_INTERVAL_S = 2.0  # the plug-in's


def look(photo: np.ndarray, style: Path, settings: dict, start: dict | None = None) -> dict:
    """One run as the session window makes it (``start``: a quick look's row, to
    finish); the times it took, its last objective and its result."""
    asked = time.monotonic()
    seen, last = {}, {}

    def on_event(event):
        seen.setdefault(event["event"], time.monotonic() - asked)
        if event["event"] == "progress":
            last["loss"] = event["loss"]

    run = nst_client.EngineRun(COMMAND, on_event)
    run.send_request(settings, photo.tobytes(), photo.shape,
                     nst_client.Style.from_file(style), PREVIEW_INTERVAL_S,
                     start["result"]["payload"] if start else None,
                     QUICK_LOOK["max_size"] if start else 0)
    result = run.read_to_end()
    return {"painting": style.name, "first_picture_s": round(seen["preview"], 2),
            "result_s": round(time.monotonic() - asked, 2), "steps": result["steps"],
            "loss": round(last["loss"], 4), "result": result}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("photo", type=Path)
    parser.add_argument("paintings", type=Path, nargs="+")
    parser.add_argument("--finish", action="store_true",
                        help="also what Finish this one saves against a fresh run")
    args = parser.parse_args()
    photo = load_picture(args.photo).rgb.astype(np.float32)
    defaults = nst_arguments.settings_from_config(
        lambda name: nst_arguments.argument_default(name.replace("-", "_")))
    quick = {**defaults, "device": "cpu", **QUICK_LOOK}
    look(photo[:64, :64].copy(), args.paintings[0], {**quick, "max_size": 64,
                                                      "iterations": 2})  # warm-up
    looks = [look(photo, painting, quick) for painting in args.paintings]
    for row in looks:
        print(json.dumps({"quick_look": shown(row)}))
    print(json.dumps({"quick_looks": len(looks),
                      "total_s": round(sum(r["result_s"] for r in looks), 1),
                      "slowest_first_picture_s": max(r["first_picture_s"] for r in looks)}))
    if args.finish:
        full = {**defaults, "device": "cpu"}
        finished = look(photo, args.paintings[0], full, start=looks[0])
        fresh = look(photo, args.paintings[0], full)
        print(json.dumps({"finished": shown(finished), "fresh": shown(fresh),
                          "quick_plus_finish_s": round(looks[0]["result_s"]
                                                       + finished["result_s"], 1)}))


def shown(row: dict) -> dict:
    return {key: value for key, value in row.items() if key != "result"}


if __name__ == "__main__":
    main()
