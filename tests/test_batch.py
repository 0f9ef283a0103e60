"""``nst-engine batch`` on one machine, run as a real subprocess: outputs, failures,
resume after an interruption, the settings rule, exit codes, the warm service."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst_contract.errors import EXIT_CODES
from nst_engine import relay

FAST = ["--max-size", "48", "--iterations", "3", "--device", "cpu"]


def make_photos(folder: Path, count: int, size=(96, 80), suffix=".png") -> list[Path]:
    """Distinct small photos: gradients with a disc in a different place each."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    paths = []
    for i in range(count):
        rgb = np.stack([x / size[0], y / size[1], 0.5 + 0.4 * np.sin(x / (3 + i))], axis=2)
        rgb[(x - 10 - 9 * i) ** 2 + (y - 40) ** 2 < 150] = (0.9, 0.2, 0.1)
        path = folder / f"photo{i:02d}{suffix}"
        Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def batch(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "nst_engine", "batch", *map(str, args)],
                          capture_output=True, text=True, timeout=600, **kwargs)


def events_of(done) -> list[dict]:
    return [json.loads(line) for line in done.stdout.splitlines()]


def photo_events(events) -> dict[str, dict]:
    return {Path(e["source"]).name: e for e in events if e["event"] == "photo"}


def results(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_a_batch_paints_every_photo_and_a_bad_one_in_the_middle_costs_only_itself(
        painting, tmp_path):
    photos = make_photos(tmp_path / "shoot", 4)
    (tmp_path / "shoot" / "photo01b.jpg").write_bytes(b"not a JPEG at all")  # the 3rd
    out = tmp_path / "out"
    done = batch(tmp_path / "shoot", "--style", painting, "-o", out, *FAST,
                 "--progress", "json")
    assert done.returncode == EXIT_CODES["photos_failed"], done.stderr
    assert "Traceback" not in done.stderr
    events = events_of(done)
    assert events[0] == {"event": "batch", "photos": 5, "to_paint": 5,
                         "where": "on this machine"}
    outcomes = photo_events(events)
    assert outcomes["photo01b.jpg"]["status"] == "failed"
    assert "photo01b.jpg" in outcomes["photo01b.jpg"]["reason"]
    assert {name: e["status"] for name, e in outcomes.items() if name != "photo01b.jpg"} == \
        {p.name: "done" for p in photos}
    assert events[-1]["event"] == "summary"
    assert (events[-1]["done"], events[-1]["skipped"], events[-1]["failed"]) == (4, 0, 1)
    # named after their photos, the photo's format, full size; nothing else
    assert results(out) == [".nst-batch.json"] + [p.name for p in photos]
    for path in photos:
        with Image.open(out / path.name) as image:
            assert image.size == (96, 80)
    # one engine for the whole batch: the network loaded once, in this process
    started = [e for e in events if e["event"] == "started"]
    assert len(started) == 4 and len({e["engine_pid"] for e in started}) == 1
    assert [e["loaded_network"] for e in started] == [True, False, False, False]
    assert all("photo" in e for e in events if e["event"] in ("started", "progress"))


def test_the_summary_names_each_failure_and_the_exit_code_says_all_went_well(
        painting, tmp_path):
    make_photos(tmp_path / "shoot", 2)
    thin = tmp_path / "shoot" / "thin.png"
    Image.new("RGB", (1, 60)).save(thin)
    done = batch(tmp_path / "shoot", "--style", painting, "-o", tmp_path / "out", *FAST)
    assert done.returncode == EXIT_CODES["photos_failed"]
    assert f"failed: {thin}: " in done.stderr
    assert "batch: 2 painted, 0 skipped, 1 failed" in done.stderr
    thin.unlink()
    again = batch(tmp_path / "shoot", "--style", painting, "-o", tmp_path / "out", *FAST)
    assert again.returncode == 0, again.stderr
    assert "batch: 0 painted, 2 skipped, 0 failed" in again.stderr


def test_an_interrupted_batch_goes_on_where_it_stopped(painting, tmp_path):
    photos = make_photos(tmp_path / "shoot", 6)
    out = tmp_path / "out"
    args = [*photos, "--style", painting, "-o", out, "--max-size", "64", "--iterations",
            "40", "--no-converge", "--device", "cpu", "--progress", "json"]
    process = subprocess.Popen([sys.executable, "-m", "nst_engine", "batch", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done_before = []
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == "photo":
            done_before.append(Path(event["source"]).name)
        if len(done_before) == 2 and event["event"] == "progress":
            process.send_signal(signal.SIGINT)  # mid-way through the third photo
            break
    rest, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_CODES["cancelled"], stderr
    assert "2 photos painted are kept" in stderr and "Traceback" not in stderr
    assert results(out) == [".nst-batch.json", *done_before]  # no partial file
    again = batch(*args)
    assert again.returncode == 0, again.stderr
    events = events_of(again)
    assert events[0]["to_paint"] == 4
    statuses = {name: e["status"] for name, e in photo_events(events).items()}
    assert statuses == {p.name: "skipped" if p.name in done_before else "done"
                        for p in photos}
    assert results(out) == [".nst-batch.json"] + [p.name for p in photos]


def test_other_settings_never_reuse_a_folders_results(painting, tmp_path):
    make_photos(tmp_path / "shoot", 2)
    out = tmp_path / "out"
    assert batch(tmp_path / "shoot", "--style", painting, "-o", out, *FAST).returncode == 0
    first = (out / "photo00.png").read_bytes()
    other = batch(tmp_path / "shoot", "--style", painting, "-o", out, *FAST,
                  "--style-strength", "0.9")
    assert other.returncode == EXIT_CODES["bad_input"]
    assert "style_strength was 0.5, now 0.9" in other.stderr
    assert "--overwrite" in other.stderr
    assert (out / "photo00.png").read_bytes() == first  # untouched
    redo = batch(tmp_path / "shoot", "--style", painting, "-o", out, *FAST,
                 "--style-strength", "0.9", "--overwrite", "--progress", "json")
    assert redo.returncode == 0, redo.stderr
    assert [e["status"] for e in photo_events(events_of(redo)).values()] == ["done"] * 2
    assert (out / "photo00.png").read_bytes() != first
    # and back: the manifest now records 0.9, so 0.5 is the other look
    back = batch(tmp_path / "shoot", "--style", painting, "-o", out, *FAST)
    assert back.returncode == EXIT_CODES["bad_input"]


def test_another_painting_is_another_look(painting, tmp_path):
    make_photos(tmp_path / "shoot", 1)
    out = tmp_path / "out"
    assert batch(tmp_path / "shoot", "--style", painting, "-o", out, *FAST).returncode == 0
    other = tmp_path / "other.png"
    with Image.open(painting) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    refused = batch(tmp_path / "shoot", "--style", other, "-o", out, *FAST)
    assert refused.returncode == EXIT_CODES["bad_input"]
    assert "other paintings" in refused.stderr


def test_an_existing_file_is_kept_and_its_photo_skipped(painting, tmp_path):
    photos = make_photos(tmp_path / "shoot", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo00.png").write_bytes(b"the photographer's own file")
    done = batch(*photos, "--style", painting, "-o", out, *FAST, "--progress", "json")
    assert done.returncode == 0, done.stderr
    outcomes = photo_events(events_of(done))
    assert outcomes["photo00.png"]["status"] == "skipped"
    assert "exists" in outcomes["photo00.png"]["reason"]
    assert (out / "photo00.png").read_bytes() == b"the photographer's own file"
    assert outcomes["photo01.png"]["status"] == "done"


def test_format_and_names(painting, tmp_path):
    photos = make_photos(tmp_path / "shoot", 2, suffix=".webp")
    done = batch(*photos, "--style", painting, "-o", tmp_path / "webp", *FAST)
    assert done.returncode == 0, done.stderr
    assert results(tmp_path / "webp") == [".nst-batch.json", "photo00.png", "photo01.png"]
    done = batch(*photos, "--style", painting, "-o", tmp_path / "tif", *FAST,
                 "--format", "tif")
    assert done.returncode == 0, done.stderr
    assert results(tmp_path / "tif") == [".nst-batch.json", "photo00.tif", "photo01.tif"]


@pytest.mark.parametrize("case", ["collision", "no photos", "missing", "no style",
                                  "photos after --style", "blend", "no weights"])
def test_a_batch_that_cannot_start_says_why_and_writes_nothing(painting, tmp_path, case):
    photos = make_photos(tmp_path / "shoot", 1)
    style = painting
    if case == "collision":
        Image.open(photos[0]).save(tmp_path / "shoot" / "photo00.webp")  # → photo00.png
        inputs, why = [tmp_path / "shoot"], "would both be written to"
    elif case == "no photos":
        (tmp_path / "empty").mkdir()
        inputs, why = [tmp_path / "empty"], "no photos to paint"
    elif case == "missing":
        inputs, why = [tmp_path / "nope.jpg"], "not found: "
    elif case == "no style":
        inputs, style, why = photos, tmp_path / "nope.png", "style image not found"
    elif case in ("blend", "no weights"):
        extra = ["--style-blend", "1,2"] if case == "blend" else ["--weights", "original"]
        done = batch(*photos, "--style", painting, "-o", tmp_path / "out", *FAST, *extra)
        kind = "bad_input" if case == "blend" else "no_weights"
        assert done.returncode == EXIT_CODES[kind], done.stderr  # the batch's, not a photo's
        assert "Traceback" not in done.stderr and "failed:" not in done.stderr
        assert list((tmp_path / "out").glob("photo*")) == []
        return
    else:  # --style takes every name after it: say so, not "not an image"
        for inputs in ([], [photos[0]]):
            done = batch(*inputs, "--style", style, tmp_path / "shoot", "-o",
                         tmp_path / "out", *FAST)
            assert done.returncode == EXIT_CODES["bad_input"]
            assert "before --style" in done.stderr, done.stderr
        assert not (tmp_path / "out").exists()
        return
    done = batch(*inputs, "--style", style, "-o", tmp_path / "out", *FAST)
    assert done.returncode == EXIT_CODES["bad_input"]
    assert why in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_exit_codes_are_in_the_help():
    done = batch("--help")
    assert done.returncode == 0
    assert f"{EXIT_CODES['photos_failed']} some photos failed" in " ".join(done.stdout.split())


def test_a_batch_goes_through_the_warm_engine_when_it_runs(painting, tmp_path, monkeypatch):
    monkeypatch.setenv("NST_SERVICE_IDLE_S", "30")
    service = subprocess.Popen([sys.executable, "-m", "nst_engine", "serve"],
                               stderr=subprocess.PIPE, text=True)
    try:
        socket = relay.socket_path(Path(os.environ["XDG_RUNTIME_DIR"]) / "nst-engine")
        deadline = time.monotonic() + 120
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        photos = make_photos(tmp_path / "shoot", 2)
        warm = batch(*photos, "--style", painting, "-o", tmp_path / "warm", *FAST,
                     "--progress", "json")
        assert warm.returncode == 0, warm.stderr
        pids = {e["engine_pid"] for e in events_of(warm) if e["event"] == "started"}
        assert pids == {service.pid}
        here = batch(*photos, "--style", painting, "-o", tmp_path / "here", *FAST,
                     "--no-service")
        assert here.returncode == 0, here.stderr
        for path in photos:  # the same pictures either way
            assert (tmp_path / "warm" / path.name).read_bytes() == \
                (tmp_path / "here" / path.name).read_bytes()
    finally:
        service.terminate()
        service.wait(timeout=30)
