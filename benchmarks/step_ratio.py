"""Engine evaluation vs the bare VGG19 floor, interleaved so both see the same load.

    python benchmarks/step_ratio.py [--size 512] [--repeats 9] [--precision auto]

A shorter, less noise-prone check of bench.py's "evaluation / floor" column: the
two are timed alternately and the median of the per-pair ratios is reported.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from bench import SHARED, floor_and_evaluation, interleaved

from nst_engine import Settings, StyleTransfer, load_picture
from nst_engine.enlarging import resize
from nst_engine.tensors import to_tensor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args()
    engine = StyleTransfer(Settings(max_size=args.size, device="cpu", precision=args.precision))
    photo = load_picture(SHARED / "amber.jpg")
    content = resize(to_tensor(photo.rgb, engine.device), args.size, args.size)
    style = to_tensor(load_picture(SHARED / "mosaic.jpg").rgb, engine.device)
    floor, evaluation = floor_and_evaluation(engine, content, style)

    pairs = interleaved(floor, evaluation, args.repeats)
    ratios = [e / f for f, e in pairs]
    precision = engine.network.precision.name
    print(f"{args.size} px, {precision}, {torch.get_num_threads()} threads: floor "
          f"{statistics.median(f for f, _ in pairs) * 1000:.0f} ms, evaluation "
          f"{statistics.median(e for _, e in pairs) * 1000:.0f} ms, median ratio "
          f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
