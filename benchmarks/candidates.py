"""What crowsonkb's engine does differently, tried on ours one change at a time
(issue 25, "adopt what wins"), judged as ``versus_crowsonkb.py`` judges.

    python benchmarks/candidates.py PHOTO:PAINTING... [--size 512] [--out DIR]

Per pair, the photo first scaled to ``--size`` on its long side (so the engine works
at its own size and the result needs no enlarging), in this process:

* **default**: the engine's default run (``Settings()``: Gram loss, L-BFGS, scales ×2
  apart, the convergence rule);
* **averaged 0.99** and **averaged 0.9**: that same run's top-scale iterates averaged
  as crowsonkb averages its Adam iterates (a bias-corrected exponential moving
  average; its decay 0.99, and 0.9 for L-BFGS's fewer, larger steps). Taken from the
  default run's own steps, no run of their own; crowsonkb also starts each scale from
  the coarser one's average, which this does not try;
* **√2 scales**: crowsonkb's ladder — scales √2 apart from 128 px to the top — for the
  same planned pixel-steps as the default (about its time), each scale getting 1/√2 of
  the next finer one's steps, so that every octave takes the share of the time it
  takes in the default plan;
* **replicate padding**: the default run with VGG19's first convolution padding the
  image by repeating its edge instead of with zeros (the mean pixel), as crowsonkb
  does "to reduce edge artifacts";
* **photo's colours**: the default run with its colours handled the other way the
  engine offers, ``preserve_colors`` (the result's luma on the photo's chroma); a
  finishing step of the same run, no run of its own.

``--runs`` picks some of the runs (default, root2, replicate; the averages and the
photo's colours come with default). Writes each result and a sheet per pair to
``--out``; prints JSON lines and a table.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from versus_crowsonkb import Judges, scaled_photo, sheet

from nst_contract import plan
from nst_contract.plan import MIN_SCALE_SIDE, Scale
from nst_engine import Settings, StyleTransfer, load_picture, save_picture
from nst_engine.pictures import keep_colors
from nst_engine.tensors import to_array

HERE = Path(__file__).resolve().parent
DECAYS = (0.99, 0.9)


class Average:
    """A bias-corrected exponential moving average of images (crowsonkb's ``EMA``)."""

    def __init__(self, decay: float) -> None:
        self.decay, self.value, self.weight = decay, None, 1.0

    def update(self, image: torch.Tensor) -> None:
        image = image.detach().float()
        self.value = torch.zeros_like(image) if self.value is None else self.value
        self.weight *= self.decay
        self.value.mul_(self.decay).add_(image, alpha=1 - self.decay)

    def get(self) -> torch.Tensor:
        return self.value / (1 - self.weight)


def root2_plan(default: list[Scale]) -> list[Scale]:
    """Scales √2 apart from the default plan's top down to ``MIN_SCALE_SIDE``, with the
    default plan's pixel-steps, each scale 1/√2 of the next finer one's steps."""
    top = default[-1]
    longest = max(top.width, top.height)
    sizes = []
    while not sizes or longest / 2 ** (len(sizes) / 2) >= MIN_SCALE_SIDE - 0.5:
        factor = 2 ** (-len(sizes) / 2)
        sizes.append((round(top.width * factor), round(top.height * factor)))
    shares = [2 ** (-k / 2) for k in range(len(sizes))]
    work = sum(scale.work for scale in default)
    top_steps = work / sum(share * w * h for share, (w, h) in zip(shares, sizes))
    return [Scale(w, h, max(1, round(top_steps * share)))
            for share, (w, h) in reversed(list(zip(shares, sizes)))]


def run(engine: StyleTransfer, photo, painting, scales: list[Scale]) -> dict:
    """One run on ``scales``; its result, seconds, steps and top-scale averages."""
    averages = {decay: Average(decay) for decay in DECAYS}

    def on_step(it) -> None:
        if it.scale == it.scales:
            for average in averages.values():
                average.update(it.image)

    began = time.perf_counter()
    result = engine.stylize(photo, [painting], on_step, scales=scales)
    return {"seconds": round(time.perf_counter() - began, 1), "steps": result.steps,
            "stopped": str(result.stopped), "plan": [(s.width, s.height, s.steps)
                                                     for s in scales],
            "rgb": result.picture.rgb,
            "averaged": {decay: to_array(a.get()) for decay, a in averages.items()}}


def replicating(engine: StyleTransfer) -> StyleTransfer:
    """``engine`` with VGG19's first convolution padding by repeating the edge."""
    engine.network.vgg.body[0].padding_mode = "replicate"
    return engine



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pairs", nargs="+", metavar="PHOTO:PAINTING")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "candidates")
    parser.add_argument("--runs", default="default,root2,replicate")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = args.runs.split(",")
    engine = StyleTransfer(Settings())
    replicate = replicating(StyleTransfer(Settings())) if "replicate" in wanted else None
    rows = []
    for pair in args.pairs:
        photo_path, painting_path = map(Path, pair.split(":"))
        name = f"{photo_path.stem}-{painting_path.stem}"
        scaled = scaled_photo(photo_path, args.size, args.out / f"{name}-photo.png")
        photo, painting = load_picture(scaled), load_picture(painting_path)
        judge = Judges(photo, painting, args.size)
        default_plan = engine.plan(*photo.size)
        runs, images = {}, {}
        if "default" in wanted:
            runs["default"] = run(engine, photo, painting, default_plan)
            images["default"] = runs["default"]["rgb"]
            images |= {f"averaged {decay}": rgb
                       for decay, rgb in runs["default"]["averaged"].items()}
            images["photo's colours"] = keep_colors(runs["default"]["rgb"], photo.rgb)
        if "root2" in wanted:
            runs["√2 scales"] = run(engine, photo, painting, plan.tile_scales(
                root2_plan(default_plan), engine.work_budget(math.prod(photo.size))))
        if replicate is not None:
            runs["replicate padding"] = run(replicate, photo, painting, default_plan)
        images |= {key: r["rgb"] for key, r in runs.items()}
        row = {"pair": name, "photo": judge.all(photo.rgb)}
        outputs = {"photo": scaled}
        for key, rgb in images.items():
            slug = re.sub(r"[^a-z0-9.]+", "-", key.replace("√2", "root2"))
            outputs[key] = args.out / f"{name}-{slug}.png"
            save_picture(replace(photo, rgb=np.ascontiguousarray(rgb)), outputs[key])
            source = runs[key] if key in runs else runs["default"]  # derived from it
            row[key] = {"seconds": source["seconds"] if key in runs else "–",
                        "steps": source["steps"], **judge.all(rgb)}
        row["plans"] = {key: r["plan"] for key, r in runs.items()}
        sheet(outputs, args.out / f"sheet-{name}.jpg")
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    print("\n| pair | run | seconds | steps | gram ↓ | w2 ↓ | content ↓ |\n"
          "|---|---|---|---|---|---|---|")
    for row in rows:
        for key, value in row.items():
            if key in ("pair", "plans"):
                continue
            print(f"| {row['pair']} | {key} | {value.get('seconds', '–')} | "
                  f"{value.get('steps', '–')} | {value['gram']} | {value['w2']} | "
                  f"{value['content']} |")


if __name__ == "__main__":
    main()
