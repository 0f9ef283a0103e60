"""Nothing lost, ever: the failures a hostile probe found, each as a real subprocess.

Every protocol case checks that the last event is ``error`` or ``result``.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from nst_engine import EngineError, load_picture
from nst_engine.errors import EXIT_CODES

FAST = ["--max-size", "48", "--iterations", "3", "--device", "cpu"]
ENGINE = [sys.executable, "-m", "nst_engine"]


def engine(*args, **kwargs):
    return subprocess.run([*ENGINE, *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def last_event(stdout: str) -> dict:
    event = json.loads(stdout.strip().splitlines()[-1])
    assert event["event"] in ("error", "result"), event
    return event


def request(folder: Path, painting: Path, layer=None, **fields) -> Path:
    layer = np.full((64, 64, 3), 0.5, np.float32) if layer is None else layer
    np.save(folder / "content.npy", layer)
    settings = {"max_size": 64, "iterations": 3, "device": "cpu", **fields.pop("settings", {})}
    body = {"protocol": 2, "content": "content.npy", "styles": [str(painting)],
            "output": "result.npy", "settings": settings, **fields}
    (folder / "request.json").write_text(json.dumps(body))
    return folder / "request.json"


@contextlib.contextmanager
def tiny_disk(tmp_path: Path, size: str, options: str = ""):
    """A small tmpfs this test mounts itself (root only, as in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs in CI: {done.stderr}")
        pytest.skip(f"cannot mount a tmpfs here (not root?): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave: int) -> None:
    """Fills the file system of ``folder`` up to ``leave`` bytes."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(folder / "filler", "wb") as handle:
        with contextlib.suppress(OSError):
            handle.write(b"\0" * max(0, free - leave))


# 1. a truncated output must never replace a good file
@pytest.mark.parametrize("name", ["old.jpg", "old.tif", "old.png"])
def test_full_disk_keeps_the_old_file_and_says_so(painting, tmp_path, name):
    photo = tmp_path / "big.png"
    noise = np.random.default_rng(0).integers(0, 255, (240, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(photo)
    with tiny_disk(tmp_path, "1m") as disk:
        old = disk / name
        Image.new("RGB", (300, 240), (10, 200, 30)).save(old)
        before = old.read_bytes()
        fill(disk, 8 * 1024)
        done = engine("stylize", str(photo), str(painting), "-o", str(old), *FAST)
        assert done.returncode == EXIT_CODES["bad_input"], done.stderr
        assert "disk" in done.stderr.lower() and "Traceback" not in done.stderr
        assert old.read_bytes() == before
        assert sorted(p.name for p in disk.iterdir()) == ["filler", name]


def test_full_disk_for_the_result_array(painting, tmp_path):
    with tiny_disk(tmp_path, "1m") as disk:
        big = np.random.default_rng(0).random((300, 300, 4), dtype=np.float32)  # 1.4 MB out
        folder = disk
        np.save(tmp_path / "content.npy", big)
        body = {"protocol": 2, "content": str(tmp_path / "content.npy"),
                "styles": [str(painting)], "output": str(folder / "result.npy"),
                "settings": {"max_size": 64, "iterations": 2, "device": "cpu"}}
        (tmp_path / "request.json").write_text(json.dumps(body))
        done = engine("run-request", str(tmp_path / "request.json"), stdin=subprocess.DEVNULL)
        event = last_event(done.stdout)
        assert event["kind"] == "bad_input" and "result" in event["message"]
        assert done.returncode == EXIT_CODES["bad_input"]
        assert list(folder.iterdir()) == []


# 2. extreme aspect ratios respect max size
def test_thin_image_is_refused_not_enlarged_past_max_size(tmp_path, painting):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1000, 16), (100, 100, 100)).save(thin)
    started = time.monotonic()
    done = engine("stylize", str(thin), str(painting), "-o", str(tmp_path / "o.png"),
                  "--max-size", "64", "--iterations", "3", "--device", "cpu")
    assert done.returncode == EXIT_CODES["bad_input"], done.stderr
    assert "too thin" in done.stderr and "at least 2000" in done.stderr
    assert time.monotonic() - started < 60


# 3. cancellation is seen within a second or so in every phase, and ends with an event
@pytest.mark.parametrize("how", ["sigterm", "stdin"])
def test_cancel_during_a_long_style_gram_pass(painting, tmp_path, how):
    # the painting enlarged 40× for the style targets: seconds of VGG in one pass
    path = request(tmp_path, painting, settings={"style_scale": 40.0})
    process = subprocess.Popen([*ENGINE, "run-request", str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json.loads(process.stdout.readline())["event"] == "started"
    time.sleep(1.0)  # inside the style Grams now
    asked = time.monotonic()
    if how == "sigterm":
        process.send_signal(signal.SIGTERM)
    else:
        process.stdin.close()
    out = process.stdout.read()
    code = process.wait(timeout=60)
    assert time.monotonic() - asked < 4.0
    assert code == EXIT_CODES["cancelled"]
    assert last_event(out)["kind"] == "cancelled"
    assert "Traceback" not in process.stderr.read()
    assert not (tmp_path / "result.npy").exists()


# 4. signals while torch is still being imported
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up(painting, tmp_path, signum):
    path = request(tmp_path, painting)
    process = subprocess.Popen([*ENGINE, "run-request", str(path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_CODES["cancelled"], err
    assert last_event(out)["kind"] == "cancelled"
    assert "Traceback" not in err and "cancelled" in err


# 5. a reader that goes away is a quiet cancellation
def test_closed_stdout_is_a_quiet_cancellation(photo, painting, tmp_path):
    out = tmp_path / "o.png"
    process = subprocess.Popen(
        [*ENGINE, "stylize", str(photo), str(painting), "-o", str(out), "--progress", "json",
         "--max-size", "64", "--iterations", "500", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.readline()  # as `| head -n 1`
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=60) == EXIT_CODES["cancelled"]
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert not out.exists()


# 6. non-finite and out-of-range values are bad input, named
@pytest.mark.parametrize("args, words", [
    (["--style-scale", "nan"], "style_scale must be a finite number"),
    (["--content-weight", "inf"], "content_weight must be a finite number"),
    (["--memory-budget", "inf"], "memory_budget must be a finite number"),
    (["--seed", str(10**20)], "seed must be at most"),
    (["--iterations", str(10**12)], "iterations must be at most 5000"),
])
def test_bad_numbers_on_the_command_line(photo, painting, tmp_path, args, words):
    done = engine("stylize", str(photo), str(painting), "-o", str(tmp_path / "o.png"),
                  "--device", "cpu", *args)
    assert done.returncode == EXIT_CODES["bad_input"], done.stderr
    assert words in done.stderr and "report" not in done.stderr


@pytest.mark.parametrize("field", ["style_weight", "tv_weight", "learning_rate"])
def test_nan_settings_in_a_request(painting, tmp_path, field):
    path = tmp_path / "request.json"
    request(tmp_path, painting)
    body = json.loads(path.read_text())
    path.write_text(json.dumps(body).replace('"device": "cpu"',
                                             f'"device": "cpu", "{field}": NaN'))
    done = engine("run-request", str(path), stdin=subprocess.DEVNULL)
    event = last_event(done.stdout)
    assert event["kind"] == "bad_input" and field in event["message"]


def test_nan_pixels_in_a_float_tiff(tmp_path):
    data = np.full((32, 32, 3), 0.5, np.float32)
    data[3, 4, 1] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", data, photometric="rgb")
    with pytest.raises(EngineError) as info:
        load_picture(tmp_path / "nan.tif")
    assert info.value.kind == "bad_input" and "NaN" in info.value.message


# 7. 32-bit float RGB TIFFs, as GIMP and raw developers export them
def test_float32_rgb_tiff_is_read(tmp_path):
    y, x = np.mgrid[0:40, 0:50]
    data = np.stack([x / 49, y / 39, (x * y) / 1960], axis=2).astype(np.float32)
    tifffile.imwrite(tmp_path / "float.tif", data, photometric="rgb")
    picture = load_picture(tmp_path / "float.tif")
    assert picture.bits == 32 and picture.size == (50, 40)
    assert np.allclose(picture.rgb, data)


# 8. damaged weights: exit 3 and the way out
def test_corrupt_weights_say_how_to_get_them_again(photo, painting, tmp_path):
    data = tmp_path / "nst-data"
    data.mkdir(exist_ok=True)
    (data / "vgg19-original.pth").write_bytes(b"PK\x03\x04 truncated")
    done = engine("stylize", str(photo), str(painting), "-o", str(tmp_path / "o.png"), *FAST,
                  env={**os.environ, "NST_DATA_DIR": str(data), "NST_WEIGHTS": "original"})
    assert done.returncode == EXIT_CODES["no_weights"], done.stderr
    assert "damaged" in done.stderr and "weights download" in done.stderr


# 9. system failures are classified, and found before the work
def test_read_only_output_folder_is_refused_before_working(painting, tmp_path):
    with tiny_disk(tmp_path, "1m", ",ro") as read_only:  # read-only even for root
        path = request(tmp_path, painting, output=str(read_only / "result.npy"))
        done = engine("run-request", str(path), stdin=subprocess.DEVNULL)
    event = last_event(done.stdout)
    assert event["kind"] == "bad_input" and "cannot write" in event["message"]
    assert '"progress"' not in done.stdout and '"started"' not in done.stdout


def test_weights_import_onto_a_full_disk(tmp_path):
    source = tmp_path / "vgg.pth"
    from nst_engine.layers import FEATURE_SHAPES

    torch.save({k: torch.zeros(s) for k, s in FEATURE_SHAPES.items()}, source)
    with tiny_disk(tmp_path, "1m") as disk:
        done = engine("weights", "import", str(source), env={**os.environ,
                                                              "NST_DATA_DIR": str(disk)})
        assert done.returncode == EXIT_CODES["bad_input"], done.stderr
        assert "disk" in done.stderr and "internal" not in done.stderr
        assert list(disk.iterdir()) == []


def test_huge_array_header_is_bad_input(painting, tmp_path):
    path = request(tmp_path, painting)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000, 4), }"
    header += " " * (118 - len(header)) + "\n"
    (tmp_path / "content.npy").write_bytes(b"\x93NUMPY\x01\x00" + bytes([len(header), 0])
                                           + header.encode() + b"\0" * 64)
    done = engine("run-request", str(path), stdin=subprocess.DEVNULL)
    event = last_event(done.stdout)
    assert event["kind"] in ("bad_input", "out_of_memory"), event
    assert "internal" not in event["message"]


# 10. smaller ones
def test_longest_legal_file_name(photo, painting, tmp_path):
    out = tmp_path / ("n" * 248 + ".png")  # 252 bytes
    done = engine("stylize", str(photo), str(painting), "-o", str(out), *FAST)
    assert done.returncode == 0, done.stderr
    assert out.exists()


def test_usage_errors_are_one_line():
    done = engine("stylize", "--max-size", "x")
    assert done.returncode == EXIT_CODES["bad_input"]
    assert len(done.stderr.strip().splitlines()) == 1 and "--help" in done.stderr


def test_running_out_of_memory_loading_a_style_is_out_of_memory(painting, monkeypatch):
    from nst_engine import images

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(images, "_from_pillow", no_memory)  # as an 8000² style on a small PC
    with pytest.raises(EngineError) as info:
        load_picture(painting, "style image")
    assert info.value.kind == "out_of_memory" and "too large" in info.value.message


def test_run_request_ends_with_its_parent(painting, tmp_path):
    """run-request asks for a parent-death signal (stylize does not: docs/protocol.md)."""
    path = request(tmp_path, painting, settings={"iterations": 5000, "max_size": 256},
                   layer=np.full((260, 300, 3), 0.5, np.float32))
    parent = subprocess.Popen(
        ["sh", "-c", f'{sys.executable} -m nst_engine run-request "$1" < /dev/zero '
         '> "$2" 2>/dev/null & echo $!; wait', "sh", str(path), str(tmp_path / "events")],
        stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        events = tmp_path / "events"
        while not events.exists() or b'"progress"' not in events.read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        parent.kill()  # the shell goes; the engine must not run on
        parent.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists():
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
            assert time.monotonic() < deadline, "the engine outlived its parent"
            time.sleep(0.2)
    finally:
        parent.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    assert last_event((tmp_path / "events").read_text())["kind"] == "cancelled"
