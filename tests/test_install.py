"""install.sh's choice of torch build, checked without the network (--show-torch-plan)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

INSTALL = Path(__file__).resolve().parent.parent / "install.sh"


def plan(tmp_path, *args, gpu: bool) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nvidia-smi"
    if gpu:
        fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
        fake.chmod(0o755)
    elif fake.exists():
        fake.unlink()
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(INSTALL), "--show-torch-plan", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_without_an_nvidia_gpu_the_cpu_build_comes_first_then_pypi(tmp_path):
    if Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi",
                                                                      path="/usr/bin:/bin"):
        pytest.skip("this machine has an NVIDIA driver")
    assert plan(tmp_path, gpu=False) == [
        "pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision",
        "pip install torch torchvision",
    ]


def test_with_an_nvidia_gpu_pypi_s_cuda_build(tmp_path):
    assert plan(tmp_path, gpu=True) == ["pip install torch torchvision"]


def test_torch_index_wins(tmp_path):
    for gpu in (False, True):
        assert plan(tmp_path, "--torch-index", "https://example.invalid/cu124", gpu=gpu) == [
            "pip install --index-url https://example.invalid/cu124 torch torchvision"]
