"""Side-by-side benchmark: engine vs the plain reference vs the bare VGG19 floor.

    python benchmarks/bench.py [--sizes 256 512] [--steps 300] [--out benchmarks/RESULTS.md]

Needs the real weights (python -m nst_engine weights download) and the sample
images in ../shared/images (or any photo/painting given with --content/--style).
Timings on a shared machine are noisy: it reports medians and ratios from one run.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import reference
import torch
from PIL import Image

from nst_contract.plan import lbfgs_history, plan_scales
from nst_engine import Settings, StyleTransfer, load_picture, weights
from nst_engine.enlarging import resize
from nst_engine.tensors import to_tensor

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "images"
NOTES_MARK = "<!-- notes: kept by bench.py -->"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(first, second, repeats: int) -> list[tuple[float, float]]:
    """Times the two calls alternately (after one warm-up each), so that both see the
    same load on a shared machine; one (first, second) pair per repeat."""
    first(), second()
    return [(timed(first), timed(second)) for _ in range(repeats)]


def objective_at(engine: StyleTransfer, content, style):
    """The engine's objective (docs/losses.md) for images of ``content``'s size."""
    budget = engine.work_budget(content[0, 0].numel())
    targets = engine.targets
    return targets.objective(content, targets.style_grams([style], max(content.shape[-2:]), budget))


def evaluator(engine: StyleTransfer, content, style):
    objective = objective_at(engine, content, style)

    def value(image) -> float:
        with torch.no_grad():
            return objective(image, engine.network.features)[0].item()

    return value


def floor_and_evaluation(engine: StyleTransfer, content, style):
    """Two timeable calls at ``content``'s size: the floor (a bare forward + backward
    of torchvision's VGG19 layers up to relu5_1, stock modules, in the engine's
    precision and memory format: the pass as fast as it runs here) and one objective
    evaluation exactly as the engine's optimiser makes it."""
    objective = objective_at(engine, content, style)
    net = reference.vgg(weights.load("original")[0]).to(memory_format=engine.network.memory_format)
    x = content.clone().contiguous(memory_format=engine.network.memory_format).requires_grad_(True)

    def floor() -> None:
        with torch.autocast(engine.device.type, dtype=torch.bfloat16,
                            enabled=engine.network.autocast):
            out = net(reference.normalize(x))
        out.float().sum().backward()

    def evaluation() -> None:
        objective(x, engine.network.features)[0].backward()

    return floor, evaluation


def bench_size(size: int, steps: int, repeats: int, content_pic, style_pic) -> dict:
    engine = StyleTransfer(Settings(max_size=size, device="cpu"))
    w, h = content_pic.size
    scale = size / max(w, h)
    full = to_tensor(content_pic.rgb, engine.device)
    content = resize(full, round(w * scale), round(h * scale))
    style = to_tensor(style_pic.rgb, engine.device)

    floor, engine_eval = floor_and_evaluation(engine, content, style)
    pairs = interleaved(floor, engine_eval, repeats)

    # The reference: full run, then one shared evaluator at the final size.
    state, _ = weights.load("original")
    ref_image, ref_time = reference.stylize(state, content, resize(style, *_style_size(
        style, content)), steps)
    evaluate = evaluator(engine, content, style)
    initial = evaluate(content)
    ref_final = evaluate(ref_image)

    # The engine's default multi-scale run: time until its top-scale objective reaches
    # the reference's. After each top-scale step one floor pass is timed (and its time
    # taken off the engine's clock), so steps and floor are compared under one load.
    reached = None
    top = []  # (engine seconds so far, floor seconds right after that step)
    floor_spent = 0.0

    def on_step(p):
        nonlocal floor_spent, reached
        if p.scale != p.scales:
            return
        elapsed = p.elapsed - floor_spent
        if reached is None and p.loss <= ref_final:
            reached = elapsed
        floor_s = timed(floor)
        floor_spent += floor_s
        top.append((elapsed, floor_s))
    started = time.perf_counter()
    result = engine.stylize(content_picture_at(content_pic, content), [style_pic], on_step).picture
    engine_total = time.perf_counter() - started - floor_spent
    engine_final = evaluate(to_tensor(result.rgb, engine.device))
    # (duration of step i+1, the floor pass timed just before it)
    steps_and_floors = [(b - a, f) for (a, f), (b, _) in zip(top, top[1:])]
    return {
        "size": f"{content.shape[-1]}×{content.shape[-2]}",
        "floor_ms": statistics.median(f for f, _ in pairs) * 1000,
        "engine_eval_ms": statistics.median(e for _, e in pairs) * 1000,
        "eval_ratio": statistics.median(e / f for f, e in pairs),
        "engine_step_ms": statistics.median(d for d, _ in steps_and_floors) * 1000,
        "step_ratio": statistics.median(d / f for d, f in steps_and_floors),
        "top_steps": len(top),
        "ref_step_ms": ref_time / steps * 1000, "ref_time": ref_time, "ref_final": ref_final,
        "engine_reach": reached, "engine_total": engine_total,
        "engine_final": engine_final, "steps": steps, "iterations": engine.settings.iterations,
        "initial": initial,
    }


def _style_size(style, content):
    side = max(content.shape[-2:])
    factor = side / max(style.shape[-2:])
    return round(style.shape[-1] * factor), round(style.shape[-2] * factor)


def content_picture_at(picture, tensor):
    from nst_engine.pictures import Picture
    from nst_engine.tensors import to_array
    return Picture(to_array(tensor))


def peak_rss(megapixels: float, content: Path, style: Path) -> tuple[int, int, float]:
    """Peak RSS (GiB) of a whole CLI run whose working size has this many megapixels;
    returns the side, the iterations and the peak.

    The photo is first enlarged (or reduced) to exactly that size, so the working
    size is not capped by the sample photo's own size. The run is the shortest whose
    top scale gets two steps more than L-BFGS keeps curvature pairs, so the top
    scale runs with its history full, as in a real run.
    """
    side = round((megapixels * 1e6) ** 0.5)
    needed = lbfgs_history(3 * side * side) + 2
    iterations = next(n for n in itertools.count(1)
                      if plan_scales(side, side, side, n)[-1].steps >= needed)
    with tempfile.TemporaryDirectory() as tmp:
        photo = Image.open(content).convert("RGB").resize((side, side), Image.LANCZOS)
        photo.save(f"{tmp}/photo.png")
        code = (
            "import resource, subprocess, sys;"
            "subprocess.run(sys.argv[1:], check=True);"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, sys.executable, "-m", "nst_engine", "stylize",
             f"{tmp}/photo.png", str(style), "-o", f"{tmp}/o.png", "--max-size", str(side),
             "--iterations", str(iterations), "--device", "cpu", "--progress", "none"],
            capture_output=True, text=True, check=True)
    return side, iterations, int(out.stdout.strip().splitlines()[-1]) / 1024 / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, nargs="+", default=[300],
                        help="reference steps per size (one value, or one per size)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--content", type=Path, default=SHARED / "amber.jpg")
    parser.add_argument("--style", type=Path, default=SHARED / "mosaic.jpg")
    parser.add_argument("--memory", type=float, nargs="*", default=[0.25, 1, 4])
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    content_pic, style_pic = load_picture(args.content), load_picture(args.style)
    steps = args.steps * len(args.sizes) if len(args.steps) == 1 else args.steps
    rows = [bench_size(s, n, args.repeats, content_pic, style_pic)
            for s, n in zip(args.sizes, steps)]
    memory = [(mp, peak_rss(mp, args.content, args.style)) for mp in args.memory]
    write_results(args, rows, memory)


def write_results(args, rows, memory) -> None:
    lines = [
        "# Benchmark results", "",
        f"Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}; CPU only.", "",
        f"Command: `python benchmarks/bench.py {' '.join(sys.argv[1:])}` "
        f"on {args.content.name} (content) and {args.style.name} (style), real VGG19 "
        "(original weights), default settings (style strength 0.5).", "",
        "## Time per step", "",
        "Medians of ratios of calls timed alternately: evaluation and floor in turns; "
        "each L-BFGS step at the top scale of the engine's run followed by one floor pass.",
        "",
        "| size | floor f+b (ms) | engine evaluation (ms) | evaluation / floor "
        "| engine L-BFGS step (ms) | step / floor | reference step (ms, mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['floor_ms']:.0f} | {r['engine_eval_ms']:.0f} | "
            f"{r['eval_ratio']:.2f} | {r['engine_step_ms']:.0f} | "
            f"{r['step_ratio']:.2f} ({r['top_steps'] - 1} steps) | {r['ref_step_ms']:.0f} |")
    lines += ["", "## Time to the reference's final objective", "",
              "| size | J of the photo | reference steps | reference time (s) | reference final J"
              " | engine reaches it at (s) | ratio | engine iterations | engine full run (s) "
              "| engine final J |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reach = r["engine_reach"]
        lines.append(
            f"| {r['size']} | {r['initial']:.3f} | {r['steps']} | {r['ref_time']:.1f} | "
            f"{r['ref_final']:.4f} | "
            f"{'not reached' if reach is None else f'{reach:.1f}'} | "
            f"{'–' if reach is None else format(reach / r['ref_time'], '.2f')} | "
            f"{r['iterations']} | {r['engine_total']:.1f} | {r['engine_final']:.4f} |")
    lines += ["", "## Peak memory (whole CLI run, RSS)", "",
              "| working size (MP) | pixels | iterations | peak RSS (GiB) | peak RSS (GB) |",
              "|---|---|---|---|---|"]
    lines += [f"| {mp} | {side}×{side} | {n} | {gib:.2f} | {gib * 2**30 / 1e9:.2f} |"
              for mp, (side, n, gib) in memory]
    old = args.out.read_text() if args.out.exists() else ""
    # the hand-written analysis below the mark survives a rerun
    notes = "\n" + old[old.index(NOTES_MARK):] if NOTES_MARK in old else ""
    args.out.write_text("\n".join(lines) + "\n" + notes)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
