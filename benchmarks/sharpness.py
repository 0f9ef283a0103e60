"""Sharpness at 100 %: the enlargements compared with the photo and with each other.

    python benchmarks/sharpness.py PHOTO WORKING_RESULT [--full-run FILE] [--detail FILE]
        [--crop X,Y,SIDE] [--out FOLDER]

``WORKING_RESULT`` is the engine's result at the working size (run the engine on
the photo shrunk to that size). Prints, for each enlargement, the time it takes
and its finest-octave energy (mean squared difference from itself shrunk ×2 and
enlarged again) relative to the photo's, and writes 100 % crops of one region
side by side. ``pyramid`` (the photo's finest band added at gain 1) is here for
the comparison only; the engine offers ``guided`` and ``bicubic``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from nst_engine.enlarging import enlarge, luma_plane, resize
from nst_engine.images import load_picture
from nst_engine.tensors import to_array, to_tensor

CPU = torch.device("cpu")


def finest_octave_energy(image: torch.Tensor) -> float:
    """Mean squared luminance of the finest octave: the image minus itself at half size."""
    y = luma_plane(image)
    height, width = y.shape[-2:]
    half = resize(y, width // 2, height // 2)
    return float(((y - resize(half, width, height)) ** 2).mean())


def pyramid(painting: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """Bicubic, plus the photo's luminance detail the working size lost, at gain 1."""
    height, width = photo.shape[-2:]
    small = resize(photo, painting.shape[-1], painting.shape[-2])
    lost = luma_plane(photo) - luma_plane(resize(small, width, height))
    return (resize(painting, width, height) + lost).clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("working", type=Path)
    parser.add_argument("--full-run", type=Path, help="a true full-resolution run's result")
    parser.add_argument("--detail", type=Path, action="append", default=[],
                        help="a result with the refinement at full size (NAME=FILE)")
    parser.add_argument("--crop", default=None, help="X,Y,SIDE of the 100 %% crop")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    photo = to_tensor(load_picture(args.photo).rgb, CPU)
    painting = to_tensor(load_picture(args.working).rgb, CPU)
    results: dict[str, torch.Tensor] = {"photo": photo}
    for name, method in (("bicubic", lambda: enlarge(painting, photo, "bicubic")),
                         ("guided", lambda: enlarge(painting, photo, "guided")),
                         ("pyramid", lambda: pyramid(painting, photo))):
        start = time.perf_counter()
        results[name] = method()
        print(f"{name}: {time.perf_counter() - start:.2f} s")
    for spec in args.detail:
        name, _, path = str(spec).partition("=")
        results[name] = to_tensor(load_picture(Path(path)).rgb, CPU)
    if args.full_run:
        results["full-res run"] = to_tensor(load_picture(args.full_run).rgb, CPU)
    reference = finest_octave_energy(photo)
    full = finest_octave_energy(results["full-res run"]) if args.full_run else None
    print("| result | finest-octave energy / photo's | / full-res run's |")
    print("|---|---|---|")
    for name, image in results.items():
        energy = finest_octave_energy(image)
        versus_full = f"{energy / full:.2f}" if full else "–"
        print(f"| {name} | {energy / reference:.2f} | {versus_full} |")
    height, width = photo.shape[-2:]
    x, y, side = map(int, args.crop.split(",")) if args.crop else (
        width // 2 - 192, height // 2 - 192, 384)
    crops = [(name, to_array(image[..., y:y + side, x:x + side])) for name, image in
             results.items()]
    sheet = Image.new("RGB", (len(crops) * (side + 8), side + 24), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, crop) in enumerate(crops):
        sheet.paste(Image.fromarray((crop * 255 + 0.5).astype(np.uint8)), (i * (side + 8), 24))
        draw.text((i * (side + 8) + 4, 6), name, fill="black")
    out = args.out / f"crops-{args.photo.stem}.jpg"
    sheet.save(out, quality=92)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
