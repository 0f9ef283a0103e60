"""Where the engine computes, in which precision, and how much memory it may use there."""

from __future__ import annotations

import ctypes
import functools
import gc
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nst_contract.errors import bad_input

CPU_FIXED_BYTES = 1.0e9  # importing torch and holding the network, on the CPU
CUDA_SHARE = 0.8  # of the GPU memory available to the engine
# What torch.cpu.get_capabilities() calls native bf16 arithmetic: AVX512-BF16 and AMX
# on x86, the BF16 extensions on ARM. Elsewhere oneDNN emulates bf16, slower than fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
BF16_MIN_GAIN = 1.1  # bf16 on the processor only where the probe ran this much faster
PROBE_SIDE = 64  # the probe: two VGG-like convolutions, forward and backward ...
PROBE_REPEATS = 3  # ... timed alternately in each precision (under a second in all)


def pick(name: str) -> torch.device:
    """``auto`` prefers CUDA, then Apple's MPS, then the CPU; the device is set up."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise bad_input("CUDA was asked for but this torch sees no CUDA GPU; use --device cpu")
    if name == "mps" and not mps_ok:
        raise bad_input("MPS was asked for but is not available; use --device cpu")
    if name not in ("cuda", "mps", "cpu"):
        raise bad_input(f"unknown device {name!r}; use auto, cuda, mps or cpu")
    if name == "cpu":
        torch.set_num_threads(usable_cpus())
    if name == "cuda":
        torch.backends.cudnn.benchmark = True
    return torch.device(name)


def usable_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup v2
    CPU quota (containers) and by OMP_NUM_THREADS where set (Ray sets it to the CPUs
    it gave a worker), not the machine's count."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        count = min(count, int(threads))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def memory_budget(device: torch.device, gigabytes: float | None) -> float:
    """Bytes the engine may use in all: ``gigabytes`` when given; on CUDA 80 % of what
    the engine can get (free memory plus torch's own cache) plus what it already
    holds; else a third of the RAM (GIMP holds the same photo, with undo, and the
    rest of the desktop needs room too)."""
    if gigabytes is not None:
        return gigabytes * 1e9
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return CUDA_SHARE * (free + cached) + torch.cuda.memory_allocated(device)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8e9
    return ram / 3


def fixed_bytes(device: torch.device) -> float:
    """What the engine holds whatever the image: on CUDA the network's tensors (counted
    once, as allocated memory); elsewhere torch itself and the network."""
    if device.type == "cuda":
        return float(torch.cuda.memory_allocated(device))
    return CPU_FIXED_BYTES


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def release_memory(device: torch.device) -> None:
    """Gives cached memory back between runs: torch's CUDA cache, and the C heap's free
    pages, which glibc would otherwise keep (an idle service after a 24 MP run: 1.05 GB
    resident without this, 0.80 GB with it)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@dataclass(frozen=True)
class Precision:
    """The precision of the network's pass on a device, and why (shown by
    ``install.sh --check``). The style targets, ``G − A``, the losses and the pixels
    are fp32 whatever it is (``losses.py``)."""

    name: str  # "fp32" or "bf16"
    reason: str


def precision(device: torch.device, asked: str) -> Precision:
    """``asked`` (``auto``, ``fp32``, ``bf16``) resolved for ``device``.

    ``auto``: bf16 on CUDA GPUs that compute it, fp32 on Apple's GPU (not measured
    there), and on the processor bf16 only where it computes bf16 natively and a
    short probe ran faster in it (``cpu_precision``). ``bf16`` asked where it would
    be emulated, and so slower than fp32, is refused with a message.
    """
    if asked == "fp32":
        return Precision("fp32", "asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "the GPU computes bf16")
        if asked == "bf16":
            raise bad_input("this GPU does not compute bf16; use --precision auto or fp32")
        return Precision("fp32", "the GPU does not compute bf16")
    if device.type == "mps":
        if asked == "bf16":
            raise bad_input("bf16 is not offered on Apple GPUs; use --precision auto or fp32")
        return Precision("fp32", "Apple GPUs run fp32")
    flags = native_cpu_bf16()
    if asked == "bf16":
        if not flags:
            raise bad_input(
                "this processor has no native bf16 arithmetic (AVX512-BF16, AMX or ARM "
                "BF16): bf16 would run slower than fp32 here; use --precision auto or fp32")
        return Precision("bf16", f"asked for ({flags})")
    return cpu_precision()


def native_cpu_bf16() -> str:
    """The processor's native bf16 features as torch reports them ("" for none)."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:  # torch 2.10 and later
        capabilities = get()
        return ", ".join(flag for flag in NATIVE_BF16_FLAGS if capabilities.get(flag))
    found = [flag for flag, check in (("avx512_bf16", "_is_avx512_bf16_supported"),
                                      ("amx", "_is_amx_tile_supported"))
             if getattr(torch.cpu, check, lambda: False)()]
    return ", ".join(found)


@functools.lru_cache(maxsize=1)
def cpu_precision() -> Precision:
    """fp32 or bf16 for ``auto`` on this processor: bf16 where it is native and the
    probe ran at least ``BF16_MIN_GAIN`` times faster in it. The probe's verdict is
    kept in the user's cache folder (per torch version, native features and
    threads), so it runs once per machine, not once per run."""
    flags = native_cpu_bf16()
    if not flags:
        return Precision("fp32", "no native bf16 arithmetic on this processor")
    key = {"torch": torch.__version__, "flags": flags, "threads": torch.get_num_threads()}
    path = _probe_path()
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept.get("key") == key and kept["precision"]["name"] in ("fp32", "bf16"):
            return Precision(**kept["precision"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    gain = probe_bf16_gain()
    faster = gain >= BF16_MIN_GAIN
    choice = Precision("bf16" if faster else "fp32",
                       f"{flags}; bf16 measured {gain:.2f}× as fast as fp32 here")
    try:
        from .files import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps({"key": key, "gain": round(gain, 3),
                                             "precision": asdict(choice)}), encoding="utf-8")
    except OSError:  # measured again next time: under a second
        pass
    return choice


def _probe_path() -> Path:
    """In the user's cache folder: a fact about this machine, made again if lost."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) \
            / "nst-engine" / "cache"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / "nst-engine"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nst-engine"
    return base / "cpu-precision.json"


def probe_bf16_gain() -> float:
    """fp32 time over bf16 time of a forward and backward pass through two convolutions
    shaped like VGG19's second block, timed in ``PROBE_REPEATS`` alternating pairs."""
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(128, 64, 3, 3, generator=generator) * 0.05,
               torch.randn(128, 128, 3, 3, generator=generator) * 0.03]
    start = torch.rand(1, 64, PROBE_SIDE, PROBE_SIDE, generator=generator)

    def seconds(bf16: bool) -> float:
        began = time.perf_counter()
        x = start.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = x
            for weight in weights:
                y = torch.relu(torch.nn.functional.conv2d(y, weight, padding=1))
        y.float().sum().backward()
        return time.perf_counter() - began

    for _ in range(2):  # oneDNN makes its kernels in the first calls of each precision
        seconds(False), seconds(True)
    pairs = [(seconds(False), seconds(True)) for _ in range(PROBE_REPEATS)]
    # The fastest of each: what the processor can do, least touched by other load.
    return min(fp32 for fp32, _ in pairs) / min(bf16 for _, bf16 in pairs)
