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


FAKE_PYTHON = r"""#!/bin/bash
# A python3 for install.sh's torch step: makes a venv of itself; pip cannot reach
# PyTorch's CPU index and installs everything else.
echo "$*" >> "$CALLS"
case "$1 $2" in
  "-m venv") mkdir -p "${@: -1}/bin" && cp "$0" "${@: -1}/bin/python" ;;
  "-m pip")
    if [[ " $* " == *" --index-url "* ]]; then
      echo "ERROR: Could not find a version that satisfies the requirement torch" >&2
      exit 1
    fi ;;
esac
exit 0
"""


def test_the_cpu_builds_expected_fallback_reads_as_expected(tmp_path):
    """A photographer's install printed pip's "ERROR: Could not find a version that
    satisfies the requirement torch" before falling back to PyPI's build, which read
    as a failed install; and --check then advised a reinstall that repeats it."""
    if Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi",
                                                                      path="/usr/bin:/bin"):
        pytest.skip("this machine has an NVIDIA driver")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "CALLS": str(tmp_path / "calls"), "NST_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(["bash", str(INSTALL), "--no-weights"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert "ERROR" not in said and "WARNING: https" not in said
    assert "PyPI's build instead" in said and "expected in that case" in said
    calls = (tmp_path / "calls").read_text().splitlines()
    torch_installs = [c for c in calls if c.endswith("install torch torchvision")
                      or "torch torchvision" in c]
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_installs[0]
    assert "--index-url" not in torch_installs[1]
    record = tmp_path / "data" / "venv" / "nst-torch-source"  # read by --check
    assert record.read_text().split() == ["fallback", "https://download.pytorch.org/whl/cpu"]


def test_the_installers_speed_test_gives_the_dialog_an_estimate_before_the_first_run(
        tmp_path):
    """The photographer's first run is the one an estimate matters most for: the
    installer runs the engine once on generated pictures, measured by the plug-in's own
    code, and a reinstall keeps what was measured (here or by runs since). It also
    records the devices the engine has, for the dialog's Device list."""
    import json
    import sys

    profile = tmp_path / "profile"
    env = {**os.environ, "HOME": str(tmp_path), "NST_DATA_DIR": str(tmp_path / "data")}
    command = ["bash", str(INSTALL), "--python", sys.executable, "--venv",
               str(tmp_path / "venv"), "--no-weights", "--gimp-profile", str(profile)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "speed measured" in done.stdout, done.stdout + done.stderr
    path = profile / "plug-ins" / "neural-style-transfer" / "nst-calibration.json"
    measured = json.loads(path.read_text())
    assert measured["measured_by"] == "installer" and measured["device"] == "cpu"
    assert measured["step_s_per_megapixel"] > 0 and measured["top_fractions"] == {}
    assert len(measured["points"]) == 2  # the two working scales, 128 and 256 px
    config = json.loads((path.parent / "nst-engine.json").read_text())
    assert config["devices"] == ["cpu"]  # what the engine's torch has: the Device list
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "measuring" not in again.stdout
    assert json.loads(path.read_text()) == measured  # kept, not measured again
