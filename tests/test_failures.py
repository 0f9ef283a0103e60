"""Nothing lost, ever: the failures a hostile probe found, each as a real subprocess.

Every protocol case checks that the last event is ``error`` or ``result``.
"""

import contextlib
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
from streaming import EngineProcess, request

from nst_contract.errors import EXIT_CODES
from nst_engine import EngineError, load_picture

FAST = ["--max-size", "48", "--iterations", "3", "--device", "cpu"]
ENGINE = [sys.executable, "-m", "nst_engine"]


def engine(*args, **kwargs):
    return subprocess.run([*ENGINE, *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


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
def test_cancel_during_a_long_style_gram_pass(painting, how):
    # the painting enlarged 40× for the style targets: seconds of VGG in one pass
    run = EngineProcess()
    run.send(request(painting, np.full((64, 64, 3), 0.5, np.float32),
                     {"max_size": 64, "iterations": 3, "style_scale": 40.0}))
    assert run.next_event()["event"] == "started"
    time.sleep(1.0)  # inside the style Grams now
    asked = time.monotonic()
    if how == "sigterm":
        run.process.send_signal(signal.SIGTERM)
    else:
        run.close_stdin()
    event, code = run.finish(timeout=60)
    assert time.monotonic() - asked < 4.0
    assert code == EXIT_CODES["cancelled"] and event["kind"] == "cancelled"
    assert [e["event"] for e in run.events] == ["started", "error"]  # no step was made
    assert "Traceback" not in run.stderr()


# 4. signals while torch is still being imported
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up(painting, signum):
    run = EngineProcess()
    run.send(request(painting, np.full((64, 64, 3), 0.5, np.float32)))
    time.sleep(0.3)
    run.process.send_signal(signum)
    event, code = run.finish(timeout=60)
    err = run.stderr()
    assert code == EXIT_CODES["cancelled"], err
    assert event["kind"] == "cancelled"
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
def test_nan_settings_in_a_request(painting, field):
    data = request(painting, np.full((64, 64, 3), 0.5, np.float32))
    run = EngineProcess()
    run.send(data.replace(b'"device": "cpu"', f'"device": "cpu", "{field}": NaN'.encode(), 1))
    event, _ = run.finish()
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
def test_weights_import_onto_a_full_disk(tmp_path):
    source = tmp_path / "vgg.pth"
    from nst_contract.layers import FEATURE_SHAPES

    torch.save({k: torch.zeros(s) for k, s in FEATURE_SHAPES.items()}, source)
    with tiny_disk(tmp_path, "1m") as disk:
        done = engine("weights", "import", str(source), env={**os.environ,
                                                              "NST_DATA_DIR": str(disk)})
        assert done.returncode == EXIT_CODES["bad_input"], done.stderr
        assert "disk" in done.stderr and "internal" not in done.stderr
        assert list(disk.iterdir()) == []


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


def test_a_stream_engine_ends_with_its_parent(painting, tmp_path):
    """``stream`` asks for a parent-death signal (stylize does not: docs/protocol.md)."""
    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    parent = subprocess.Popen(
        ["sh", "-c", f'{sys.executable} -m nst_engine stream < "$1" > "$2" 2>/dev/null & '
         'echo $!; wait', "sh", str(fifo), str(tmp_path / "events")],
        stdout=subprocess.PIPE, text=True)
    writer = open(fifo, "wb")  # held open: only its parent's death may end the engine
    writer.write(request(painting, np.full((260, 300, 3), 0.5, np.float32),
                         {"iterations": 5000, "max_size": 256}))
    writer.flush()
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
        writer.close()
    assert b'"kind":"cancelled"' in (tmp_path / "events").read_bytes().splitlines()[-1]
