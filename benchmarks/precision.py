"""The processor's precision: the engine's default run in fp32 and in ``auto`` (bf16
where the processor computes it natively), side by side, in one run.

    python benchmarks/precision.py [--sizes 256 512] [--repeats 2] [--floor-size 256]

Whole command-line runs (``nst-engine stylize --no-service``: start-up, planning,
every scale and the enlargement to 1080²), fp32 and auto alternating so that both
see the same load; per size the median wall time of each and their ratio. Each
result is judged at the working size with the real VGG19 in fp32:

* style: the mean over relu1_1 … relu5_1 of ‖G(result) − G(painting)‖ / ‖G(painting)‖,
  the painting resized as the engine resizes it (lower: closer to the painting);
* content: ‖F(result) − F(photo)‖ / ‖F(photo)‖ at relu4_2 (lower: closer to the photo).

Then step / floor under the resolved precision at ``--floor-size``: each top-scale
L-BFGS step of a default in-process run, over one bare VGG19 forward + backward
(stock layers, same precision) timed right after it. The results and a sheet of
them (whole and 100 % crops) go to ``benchmarks/out/precision/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench import SHARED, content_picture_at, floor_and_evaluation, timed
from PIL import Image

from nst_engine import Settings, StyleTransfer, load_picture
from nst_engine.enlarging import resize
from nst_engine.losses import gram_matrix
from nst_engine.tensors import to_tensor

OUT = Path(__file__).resolve().parent / "out" / "precision"


def stylize(photo: Path, style: Path, size: int, precision: str, output: Path) -> dict:
    """One whole command-line run; its wall time, steps and the precision it reported."""
    command = [sys.executable, "-m", "nst_engine", "stylize", str(photo), str(style),
               "-o", str(output), "--max-size", str(size), "--precision", precision,
               "--device", "cpu", "--no-service", "--progress", "json"]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - began
    events = [json.loads(line) for line in done.stdout.splitlines()]
    return {"seconds": seconds, "precision": events[0]["precision"],
            "steps": events[-1]["steps"], "stopped": events[-1]["stopped"]}


class Judge:
    """The two distances, with the real weights in fp32, at one working size."""

    def __init__(self, photo, painting, size: int) -> None:
        self.engine = StyleTransfer(Settings(max_size=size, device="cpu", precision="fp32"))
        width, height = photo.size
        factor = size / max(width, height)
        self.size = round(width * factor), round(height * factor)
        device = self.engine.device
        self.photo = self.features(to_tensor(photo.rgb, device))
        style = to_tensor(painting.rgb, device)
        side = max(self.size) * self.engine.settings.style_scale / max(style.shape[-2:])
        style = resize(style, round(style.shape[-1] * side), round(style.shape[-2] * side))
        with torch.no_grad():
            self.painting = self.engine.network.features(style)
        self.grams = {name: gram_matrix(self.painting[name])
                      for name in self.engine.settings.style_layers}

    def features(self, image: torch.Tensor) -> dict:
        with torch.no_grad():
            return self.engine.network.features(resize(image, *self.size))

    def distances(self, rgb) -> tuple[float, float]:
        features = self.features(to_tensor(rgb, self.engine.device))
        style = statistics.mean(
            float((gram_matrix(features[name]) - gram).norm() / gram.norm())
            for name, gram in self.grams.items())
        layer = self.engine.settings.content_layer
        content = float((features[layer] - self.photo[layer]).norm() / self.photo[layer].norm())
        return style, content


def step_and_floor(size: int, photo, painting) -> dict:
    """Top-scale steps of a default run over the floor pass timed right after each."""
    engine = StyleTransfer(Settings(max_size=size, device="cpu"))
    width, height = photo.size
    factor = size / max(width, height)
    content = resize(to_tensor(photo.rgb, engine.device), round(width * factor),
                     round(height * factor))
    floor, evaluation = floor_and_evaluation(engine, content,
                                             to_tensor(painting.rgb, engine.device))
    floor(), evaluation()  # warm-up
    evaluations = [(timed(floor), timed(evaluation)) for _ in range(5)]
    marks: list[tuple[float, float]] = []
    spent = [0.0]

    def on_step(it) -> None:
        if it.scale == it.scales:
            seconds = timed(floor)
            marks.append((it.elapsed - spent[0], seconds))
            spent[0] += seconds

    engine.stylize(content_picture_at(photo, content), [painting], on_step)
    steps = [(b - a, f) for (a, f), (b, _) in zip(marks, marks[1:])]
    return {"precision": engine.network.precision.name, "size": size, "top_steps": len(marks),
            "floor_ms": statistics.median(f for _, f in steps) * 1000,
            "step_ms": statistics.median(d for d, _ in steps) * 1000,
            "step_over_floor": statistics.median(d / f for d, f in steps),
            "evaluation_over_floor": statistics.median(e / f for f, e in evaluations)}


def sheet(photo: Path, results: dict[str, Path], out: Path) -> None:
    """The photo and the results side by side, whole (halved) and a 100 % crop each."""
    images = {"photo": Image.open(photo).convert("RGB"),
              **{name: Image.open(path).convert("RGB") for name, path in results.items()}}
    width, height = images["photo"].size
    half = width // 2, height // 2
    crop = (width // 2 - half[0] // 2, height // 2 - 160, width // 2 + half[0] // 2,
            height // 2 + 160)
    canvas = Image.new("RGB", (len(images) * half[0], half[1] + 320), "white")
    for index, image in enumerate(images.values()):
        canvas.paste(image.resize(half, Image.LANCZOS), (index * half[0], 0))
        canvas.paste(image.crop(crop), (index * half[0], half[1]))
    canvas.save(out, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--floor-size", type=int, default=256)
    parser.add_argument("--content", type=Path, default=SHARED / "amber.jpg")
    parser.add_argument("--style", type=Path, default=SHARED / "mosaic.jpg")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    photo, painting = load_picture(args.content), load_picture(args.style)
    rows = []
    for size in args.sizes:
        runs = {"fp32": [], "auto": []}
        outputs = {}
        for _ in range(args.repeats):
            for precision in ("fp32", "auto"):
                outputs[precision] = OUT / f"{size}-{precision}.png"
                runs[precision].append(stylize(args.content, args.style, size, precision,
                                               outputs[precision]))
                print(size, precision, runs[precision][-1], flush=True)
        judge = Judge(photo, painting, size)
        row = {"size": size, "photo": judge.distances(photo.rgb)}
        for precision, done in runs.items():
            row[precision] = {"seconds": statistics.median(r["seconds"] for r in done),
                              "precision": done[0]["precision"],
                              "steps": [r["steps"] for r in done],
                              "distances": judge.distances(load_picture(outputs[precision]).rgb)}
        row["time_ratio"] = row["fp32"]["seconds"] / row["auto"]["seconds"]
        rows.append(row)
        sheet(args.content, {p: outputs[p] for p in runs}, OUT / f"sheet-{size}.jpg")
        print(json.dumps(row), flush=True)
    floor = step_and_floor(args.floor_size, photo, painting)
    print(json.dumps(floor), flush=True)
    print("\n| size | fp32 run (s) | auto run (s) | auto ran | fp32 / auto | style fp32 / auto "
          "| content fp32 / auto | photo's own style / content |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        f, a = row["fp32"], row["auto"]
        print(f"| {row['size']} px | {f['seconds']:.1f} | {a['seconds']:.1f} | "
              f"{a['precision']} | {row['time_ratio']:.2f}× | {f['distances'][0]:.4f} / "
              f"{a['distances'][0]:.4f} | {f['distances'][1]:.4f} / {a['distances'][1]:.4f} | "
              f"{row['photo'][0]:.4f} / {row['photo'][1]:.4f} |")
    print(f"\nstep / floor ({floor['precision']}, {floor['size']} px, {floor['top_steps']} "
          f"top-scale steps): floor {floor['floor_ms']:.0f} ms, step {floor['step_ms']:.0f} ms, "
          f"step / floor {floor['step_over_floor']:.3f}, evaluation / floor "
          f"{floor['evaluation_over_floor']:.3f}")


if __name__ == "__main__":
    main()
