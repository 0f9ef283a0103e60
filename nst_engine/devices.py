"""Where the engine computes and how much memory it may use there."""

from __future__ import annotations

import ctypes
import gc
import os
from pathlib import Path

import torch

from .errors import bad_input

CPU_FIXED_BYTES = 1.0e9  # importing torch and holding the network, on the CPU
CUDA_SHARE = 0.8  # of the GPU memory available to the engine


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
    CPU quota (containers), not the machine's count."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
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
