"""The engine side by side with crowsonkb/style-transfer-pytorch (issue 25), judged
three ways.

    python benchmarks/versus_crowsonkb.py CHECKOUT PHOTO:PAINTING... [--size 512]
        [--theirs-defaults] [--ours NAME=ARGS ...] [--out DIR]

For each pair the photo is first scaled to ``--size`` on its long side, so that both
engines work at that size and return it. Runs, one after another on this machine:

* ours: ``nst-engine stylize`` with its defaults (and each ``--ours`` variant: a name
  and extra options, e.g. ``w2="--style-loss w2"``);
* theirs, cut to our default run's wall time: its own CLI (benchmarks/crowsonkb_cli.py:
  only its VGG19 is ours) with its iterations per scale scaled down together, the
  factor worked out from a short probe run's per-scale step times;
* with ``--theirs-defaults``, theirs as it comes (1000 + 4 × 500 Adam steps, 128 →
  512 px in five scales): 50 to 80 minutes a pair on two cores; with
  ``--only-theirs-defaults`` that run alone, its sheet taking the other runs' images
  from an earlier run's ``--out``.

Judged with the real VGG19 in fp32 at the working size (``precision.Judge``):
``gram``, the mean over relu1_1 … relu5_1 of ‖G(result) − G(painting)‖/‖G(painting)‖
(our objective's family); ``w2``, the mean over the same layers of the
Wasserstein-2 distance between the features' means and covariances, result to
painting, over the photo's own (its objective's family: 1 is the photo, 0 the
painting's statistics); ``content``, ‖F(result) − F(photo)‖/‖F(photo)‖ at relu4_2;
and the look: a sheet per pair (whole images at 100 %, then their middles ×2) in
``--out``.
Prints JSON lines and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from precision import Judge

from nst_engine import load_picture

HERE = Path(__file__).resolve().parent
THEIR_SCALES = 5  # 128, 181, 256, 362, 512 px: gen_scales(128, 512)
THEIR_ITERATIONS, THEIR_INITIAL = 500, 1000


def w2_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Wasserstein-2 distance between two feature maps' Gaussians (mean, covariance)."""
    def moments(features):
        flat = features.double().flatten(-2)[0]  # C × HW
        mean = flat.mean(1)
        centred = flat - mean[:, None]
        return mean, centred @ centred.T / flat.shape[1]

    def sqrtm(matrix):
        values, vectors = torch.linalg.eigh(matrix)
        return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T

    (mean_a, cov_a), (mean_b, cov_b) = moments(a), moments(b)
    root_b = sqrtm(cov_b)
    cross = sqrtm(root_b @ cov_a @ root_b)
    squared = (mean_a - mean_b).square().sum() + torch.trace(cov_a + cov_b - 2 * cross)
    return float(squared.clamp(min=0).sqrt())


class Judges(Judge):
    """precision.Judge's Gram and content distances, and the W2 distance."""

    def __init__(self, photo, painting, size: int) -> None:
        super().__init__(photo, painting, size)  # keeps the painting's features
        self.photo_w2 = {name: w2_distance(self.photo[name], self.painting[name])
                         for name in self.grams}

    def all(self, rgb) -> dict:
        from nst_engine.tensors import to_tensor

        gram, content = self.distances(rgb)
        features = self.features(to_tensor(rgb, self.engine.device))
        w2 = statistics.mean(w2_distance(features[name], self.painting[name]) /
                             self.photo_w2[name] for name in self.grams)
        return {"gram": round(gram, 4), "w2": round(w2, 4), "content": round(content, 4)}


def ours(photo: Path, painting: Path, output: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "nst_engine", "stylize", str(photo), str(painting), "-o",
               str(output), "--no-service", "--progress", "json", *extra]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    return {"seconds": round(time.perf_counter() - began, 1), "steps": events[-1]["steps"],
            "precision": events[0]["precision"]}


def theirs(checkout: Path, photo: Path, painting: Path, output: Path, iterations: int,
           initial: int) -> dict:
    """Its CLI in a folder of its own (it writes trace.json where it runs)."""
    folder = Path(tempfile.mkdtemp(prefix="nst-crowsonkb-"))
    command = [sys.executable, str(HERE / "crowsonkb_cli.py"), str(checkout), str(photo),
               str(painting), "-o", str(output.resolve()), "-s", str(max(
                   Image.open(photo).size)), "-i", str(iterations), "-ii", str(initial),
               "--save-every", str(10**9)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent), *filter(None, [os.environ.get("CROWSONKB_PYTHONPATH")])])}
    began = time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - began
    trace = json.loads((folder / "trace.json").read_text())["iterates"]
    return {"seconds": round(seconds, 1), "iterations": iterations, "initial": initial,
            "trace": trace}


def cut_to(probe: dict, target_s: float) -> tuple[int, int]:
    """Its iterations (per scale, first scale) scaled down together so that its run
    takes ``target_s``: per-scale step times and the fixed cost from the probe."""
    by_scale: dict[int, list[float]] = {}
    trace = probe["trace"]
    for before, after in zip(trace, trace[1:]):
        if after["i"] > 1:
            by_scale.setdefault(after["w"] * after["h"], []).append(after["time"] - before["time"])
    steps = [statistics.median(times) for _, times in sorted(by_scale.items())]
    stepping = steps[0] * probe["initial"] + sum(steps[1:]) * probe["iterations"]
    fixed = probe["seconds"] - stepping
    per_unit = steps[0] * THEIR_INITIAL + sum(steps[1:]) * THEIR_ITERATIONS
    factor = max(0.0, target_s - fixed) / per_unit
    return max(1, round(THEIR_ITERATIONS * factor)), max(1, round(THEIR_INITIAL * factor))


def scaled_photo(photo: Path, size: int, out: Path) -> Path:
    """``photo`` scaled to ``size`` on its long side (Lanczos) and saved as ``out``, so
    that an engine works at that size and returns it."""
    with Image.open(photo) as image:
        image = image.convert("RGB")
        factor = size / max(image.size)
        image.resize((round(image.width * factor), round(image.height * factor)),
                     Image.LANCZOS).save(out)
    return out


def sheet(images: dict[str, Path], out: Path) -> None:
    """Whole images side by side (each at its working size, 100 %), and below each the
    middle quarter of it enlarged ×2 (nearest neighbour: the strokes as they are)."""
    loaded = {name: Image.open(path).convert("RGB") for name, path in images.items()}
    width, height = next(iter(loaded.values())).size
    box = (width // 4, height // 4, width // 4 + width // 2, height // 4 + height // 2)
    canvas = Image.new("RGB", (len(loaded) * width, 2 * height), "white")
    for index, image in enumerate(loaded.values()):
        canvas.paste(image, (index * width, 0))
        canvas.paste(image.crop(box).resize((width, height), Image.NEAREST),
                     (index * width, height))
    canvas.save(out, quality=88)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkout", type=Path)
    parser.add_argument("pairs", nargs="+", metavar="PHOTO:PAINTING")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--theirs-defaults", action="store_true")
    parser.add_argument("--only-theirs-defaults", action="store_true")
    parser.add_argument("--ours", action="append", default=[], metavar="NAME=ARGS")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "versus")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    variants = {"ours": []} | {v.split("=", 1)[0]: shlex.split(v.split("=", 1)[1])
                               for v in args.ours}
    rows = []
    for pair in args.pairs:
        photo_path, painting_path = map(Path, pair.split(":"))
        name = f"{photo_path.stem}-{painting_path.stem}"
        photo = scaled_photo(photo_path, args.size, args.out / f"{name}-photo.png")
        judge = Judges(load_picture(photo), load_picture(painting_path), args.size)
        row = {"pair": name, "photo": judge.all(load_picture(photo).rgb)}
        outputs = {"photo": photo}
        for variant, extra in variants.items():
            outputs[variant] = args.out / f"{name}-{variant}.png"
            if args.only_theirs_defaults:
                row[variant] = {}
                continue
            row[variant] = ours(photo, painting_path, outputs[variant], extra)
            print(json.dumps({"pair": name, variant: row[variant]}), flush=True)
        outputs["theirs (same time)"] = args.out / f"{name}-theirs-cut.png"
        if args.only_theirs_defaults:
            row["theirs (same time)"] = {}
        else:
            probe = theirs(args.checkout, photo, painting_path, args.out / f"{name}-probe.png",
                           6, 6)
            iterations, initial = cut_to(probe, row["ours"]["seconds"])
            row["theirs (same time)"] = theirs(args.checkout, photo, painting_path,
                                               outputs["theirs (same time)"], iterations,
                                               initial)
        if args.theirs_defaults or args.only_theirs_defaults:
            outputs["theirs (defaults)"] = args.out / f"{name}-theirs-defaults.png"
            row["theirs (defaults)"] = theirs(args.checkout, photo, painting_path,
                                              outputs["theirs (defaults)"], THEIR_ITERATIONS,
                                              THEIR_INITIAL)
        for key in [key for key, path in outputs.items() if not path.exists()]:
            del outputs[key], row[key]  # --only-theirs-defaults: no earlier run of it
        for key, path in outputs.items():
            if key != "photo":
                row[key].pop("trace", None)
                row[key].update(judge.all(load_picture(path).rgb))
        sheet(outputs, args.out / f"sheet-{name}.jpg")
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| pair | run | seconds | gram ↓ | w2 ↓ | content ↓ |\n|---|---|---|---|---|---|")
    for row in rows:
        for key, value in row.items():
            if key == "pair":
                continue
            print(f"| {row['pair']} | {key} | {value.get('seconds', '–')} | {value['gram']} | "
                  f"{value['w2']} | {value['content']} |")


if __name__ == "__main__":
    main()
