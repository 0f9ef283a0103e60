"""Before/after check for a change that must not change results: the same runs through
two versions of the engine, compared to the bit.

    PYTHONPATH=/path/to/old/checkout python benchmarks/same_bits.py before.npz
    python benchmarks/same_bits.py after.npz --compare before.npz

Four runs with the real weights on amber.jpg × mosaic.jpg, in fp32 (``precision``
is passed only to versions that know it; older ones ran fp32 on the processor): the
default run at 128 px, a top scale in four tiles, Keep the photo's colours with the
refinement at full size in tiles, and Adam from noise. Each result is the full-size
float32 picture.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import sys
from pathlib import Path

import numpy as np
from bench import SHARED

import nst_engine
from nst_engine import Settings, StyleTransfer, load_picture

CASES = {
    "default-128": dict(max_size=128, iterations=60),
    # 1 GB for torch and the network, 75 MB for the photo's copies, 40 MB for work:
    # the 160 px scale is cut into four tiles.
    "tiled-160": dict(max_size=160, iterations=20, memory_budget=1.115),
    "colours-refined": dict(max_size=96, iterations=20, preserve_colors=True, detail="full",
                            detail_steps=2, memory_budget=1.3),
    "noise-adam": dict(max_size=96, iterations=20, init="noise", optimizer="adam", seed=7),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--compare", type=Path, help="an .npz written by another version")
    args = parser.parse_args()
    print(f"engine: {Path(nst_engine.__file__).parent}", file=sys.stderr)
    fp32 = {"precision": "fp32"} if "precision" in inspect.signature(Settings).parameters \
        else {}
    photo = load_picture(SHARED / "amber.jpg")
    style = load_picture(SHARED / "mosaic.jpg")
    arrays = {}
    for name, settings in CASES.items():
        result = StyleTransfer(Settings(device="cpu", **settings, **fp32)).stylize(
            photo, [style])
        arrays[name] = result.picture.rgb
        digest = hashlib.sha256(result.picture.rgb.tobytes()).hexdigest()[:16]
        print(f"{name}: {result.steps} steps, {result.stopped}, sha256 {digest}")
    np.savez(args.out, **arrays)
    if args.compare:
        before = np.load(args.compare)
        same = {name: np.array_equal(before[name], arrays[name]) for name in CASES}
        print("the same to the bit: " + ", ".join(f"{n} {'yes' if s else 'NO'}"
                                                  for n, s in same.items()))
        sys.exit(0 if all(same.values()) else 1)


if __name__ == "__main__":
    main()
