"""GPU check: NaN-free, bf16 autocast vs fp32, the speed of 500 steps at 1024 px, a
24 MP run with the refinement at full size (target: the refinement within 60 s), and
the engine as the plug-in reaches it on this device: a one-shot engine, then the warm
service three times, request → first step, and the GPU memory the service holds
between runs (its cache given back).

    bash benchmarks/gpu_check.sh            # on an NVIDIA GPU (target: < 5 minutes on an H200)
    bash benchmarks/gpu_check.sh --device cpu --size 64 --steps 4 --compare-steps 3 \
        --detail-size 300 --detail-iterations 4 --detail-max-size 128 \
        --service-megapixels 0.05 --service-iterations 3   # dry run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nst_contract.layers import LAYER_NAMES
from nst_contract.plan import Scale
from nst_engine import Picture, Settings, StyleTransfer
from nst_engine.enlarging import resize
from nst_engine.tensors import to_array, to_tensor

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's figure for the H200 SXM, dense
PLUGIN = Path(__file__).resolve().parent.parent / "gimp_plugin" / "neural-style-transfer"


def synthetic(width: int, height: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([0.5 + 0.4 * np.sin(11 * x + rng.random() * 6), 0.5 + 0.4 * np.cos(9 * y),
                    0.5 + 0.4 * np.sin(5 * (x + y))], axis=0)
    return torch.from_numpy(rgb.astype(np.float32))[None]


def vgg_flops(engine: StyleTransfer, width: int, height: int) -> float:
    """Forward FLOPs of the truncated VGG19 (2·Cin·Cout·9 per output pixel per conv)."""
    flops, h, w = 0.0, height, width
    for name, module in zip(engine.network.vgg.names, engine.network.vgg.body):
        if isinstance(module, torch.nn.Conv2d):
            flops += 2 * module.in_channels * module.out_channels * 9 * h * w
        if name.startswith("pool"):
            h, w = h // 2, w // 2
    return flops


def run(engine: StyleTransfer, content, style, steps: int) -> tuple[float, float, int, bool]:
    """One single-scale optimisation; returns (fp32 objective, seconds, evaluations, finite)."""
    height, width = content.shape[-2:]
    calls = {"n": 0}
    features = engine.network.features

    def counting(image, tap=None):
        calls["n"] += 1
        return features(image, tap)

    finite = {"ok": True}

    def check(iterate):
        finite["ok"] &= math.isfinite(iterate.loss)

    engine.network.features = counting
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = engine.stylize(Picture(to_array(content)), [Picture(to_array(style))], check,
                            scales=[Scale(width, height, steps)])
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    engine.network.features = features
    autocast, engine.network.autocast = engine.network.autocast, False
    budget = engine.work_budget(width * height)
    targets = engine.targets
    objective = targets.objective(content, targets.style_grams([style], max(width, height), budget))
    with torch.no_grad():
        picture = to_tensor(result.picture.rgb, engine.device)
        value = objective(picture, engine.network.features)[0].item()
    engine.network.autocast = autocast
    return value, seconds, calls["n"], finite["ok"] and math.isfinite(value)


def refinement(args, style: torch.Tensor) -> dict:
    """A whole run on a ``detail_size`` × 2/3 photo with the refinement at full size."""
    settings = Settings(device=args.device, detail="full", iterations=args.detail_iterations,
                        max_size=args.detail_max_size)
    engine = StyleTransfer(settings)
    photo = synthetic(args.detail_size, args.detail_size * 2 // 3, 3)
    picture = Picture(photo[0].permute(1, 2, 0).numpy().copy())
    marks = {}

    def clock(it) -> None:
        marks["refinement" if it.refining else "working"] = it.elapsed
        if it.refining:
            marks["tiles"] = it.tiles

    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = engine.stylize(picture, [Picture(to_array(style))], clock)
    seconds = time.perf_counter() - start
    report = {"size": list(photo.shape[-2:]), "seconds": seconds, "steps": result.steps,
              "refinement_seconds": marks["refinement"] - marks["working"],
              "refinement_steps": settings.refinement_steps(engine.device.type),
              "tiles": marks["tiles"], "finite": bool(np.isfinite(result.picture.rgb).all())}
    report["refinement_within_60_s"] = report["refinement_seconds"] <= 60.0
    if engine.device.type == "cuda":
        report["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return report


def service(args, style: torch.Tensor) -> dict:
    """A ``service_megapixels`` RGBA layer as GIMP sends it, through ``nst_engine stream``
    (one-shot) and then three times through ``nst_engine connect`` (the first starts the
    warm service), in a runtime folder of its own; the service is stopped at the end."""
    from PIL import Image

    sys.path.insert(0, str(PLUGIN))
    import nst_client

    folder = Path(tempfile.mkdtemp(prefix="nst-gpu-check-"))
    (folder / "run").mkdir(mode=0o700)
    os.environ.update(XDG_RUNTIME_DIR=str(folder / "run"), NST_SERVICE_IDLE_S="120")
    painting = folder / "painting.png"
    Image.fromarray((to_array(style) * 255).round().astype(np.uint8)).save(painting)
    side = int((args.service_megapixels * 1e6 / 1.5) ** 0.5)
    layer = np.random.default_rng(4).random((side, side * 3 // 2, 4), dtype=np.float32)
    raw = layer.tobytes()
    settings = {"iterations": args.service_iterations, "max_size": 0, "detail": "working",
                "device": args.device, "seed": 0}
    runs, pid = [], None
    for name in ("one-shot", "warm (starts the service)", "warm", "warm"):
        command = "stream" if name == "one-shot" else "connect"
        marks, started = {}, {}

        def on_event(event, marks=marks, started=started):
            marks.setdefault(event["event"], time.monotonic())
            if event["event"] == "started":
                started.update(event)

        run = nst_client.EngineRun([sys.executable, "-m", "nst_engine", command], on_event)
        begin = time.monotonic()
        run.send_request(settings, raw, layer.shape, nst_client.Style.from_file(painting), 2.0)
        run.read_to_end()
        if command == "connect":
            pid = started["engine_pid"]
        runs.append({"engine": name, "device": started.get("device"),
                     "loaded_network": started.get("loaded_network"),
                     "first_step_s": round(marks["progress"] - begin, 3),
                     "total_s": round(marks["result"] - begin, 3),
                     "service_gpu_memory_after_mb": _gpu_memory_mb(pid) if pid else None})
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):  # its socket goes with it
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
    shutil.rmtree(folder, ignore_errors=True)
    warm = runs[2:]
    return {"layer": list(layer.shape), "iterations": args.service_iterations, "runs": runs,
            "warm_first_step_within_0_5_s": all(r["first_step_s"] <= 0.5 for r in warm)}


def _gpu_memory_mb(pid: int) -> float | None:
    """What nvidia-smi says the process holds on the GPU; None where it cannot say (a
    CUDA process is always listed, with its context: not listed means another PID
    namespace or no nvidia-smi)."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                               "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in done.stdout.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return float(fields[1])
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--compare-size", type=int, default=512)
    parser.add_argument("--compare-steps", type=int, default=200)
    parser.add_argument("--detail-size", type=int, default=6000, help="0: skip")
    parser.add_argument("--detail-iterations", type=int, default=200)
    parser.add_argument("--detail-max-size", type=int, default=0, help="0: automatic")
    parser.add_argument("--service-megapixels", type=float, default=24.0, help="0: skip")
    parser.add_argument("--service-iterations", type=int, default=20)
    args = parser.parse_args()
    engine = StyleTransfer(Settings(device=args.device, converge=False))
    device = engine.device
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "weights": engine.network.family}

    content = synthetic(args.compare_size, args.compare_size * 3 // 4, 0).to(device)
    style = resize(synthetic(256, 256, 1).to(device) ** 3, 256, 256)
    results = {}
    for mode in ("fp32", "bf16"):
        engine.network.autocast = mode == "bf16"  # on the CPU too, so the dry run tests this path
        torch.manual_seed(0)
        results[mode] = run(engine, content, style, args.compare_steps)
    fp32, bf16 = results["fp32"][0], results["bf16"][0]
    report["compare"] = {"size": list(content.shape[-2:]), "steps": args.compare_steps,
                         "fp32_objective": fp32, "bf16_objective": bf16,
                         "relative_difference": abs(bf16 - fp32) / fp32}

    engine.network.autocast = engine.network.precision.name == "bf16"
    big = synthetic(args.size, args.size * 3 // 4, 2).to(device)
    value, seconds, evaluations, finite = run(engine, big, style, args.steps)
    flops = 3 * vgg_flops(engine, big.shape[-1], big.shape[-2]) * evaluations
    tflops = flops / seconds / 1e12
    report["speed"] = {
        "size": list(big.shape[-2:]), "steps": args.steps, "seconds": seconds,
        "evaluations": evaluations, "objective": value, "achieved_tflops": tflops,
        "share_of_h200_bf16_peak": tflops / H200_BF16_DENSE_TFLOPS,
        "layers": engine.network.vgg.names[-1], "total_layers": len(LAYER_NAMES),
    }
    if device.type == "cuda":
        report["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    # A failing part is reported, not fatal: a GPU session is too rare to lose the rest.
    for name, wanted, part in (("detail", args.detail_size, refinement),
                               ("service", args.service_megapixels, service)):
        if wanted:
            try:
                report[name] = part(args, style)
            except Exception as exc:
                report[name] = {"error": f"{type(exc).__name__}: {exc}"}
    report["no_nan"] = finite and all(r[3] for r in results.values())
    report["bf16_within_2_percent"] = report["compare"]["relative_difference"] <= 0.02
    report["bf16_ran"] = fp32 != bf16  # the same objective would mean the bf16 pass never ran
    report["500_steps_within_10_s"] = seconds <= 10.0
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
