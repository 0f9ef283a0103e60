"""The command line and the plug-in protocol, run as real subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from nst_engine.errors import EXIT_CODES

FAST = ["--max-size", "48", "--iterations", "3", "--device", "cpu"]


def engine(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "nst_engine", *args], capture_output=True,
                          text=True, timeout=300, **kwargs)


def test_stylize_writes_full_size_png(photo, painting, tmp_path):
    out = tmp_path / "out.png"
    done = engine("stylize", str(photo), str(painting), "-o", str(out), *FAST)
    assert done.returncode == 0, done.stderr
    assert "RANDOM" in done.stderr  # random weights always warn
    with Image.open(out) as image:
        assert image.size == (96, 80)


def test_json_progress_lines(photo, painting, tmp_path):
    done = engine("stylize", str(photo), str(painting), "-o", str(tmp_path / "o.tif"),
                  "--progress", "json", *FAST)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    # the protocol's own events: started, a progress per step, result
    assert [e["event"] for e in events] == ["started"] + ["progress"] * 3 + ["result"]
    assert events[0]["total"] == 3 and events[0]["device"] == "cpu"
    assert [e["step"] for e in events[1:4]] == [1, 2, 3]
    assert {"loss", "content_loss", "style_loss", "eta_s", "fraction"} <= set(events[1])
    assert events[-1]["steps"] == 3 and events[-1]["stopped"] == "completed"


def test_errors_are_one_line_with_distinct_codes(photo, painting, tmp_path):
    cases = [
        (["stylize", "nope.jpg", str(painting), "-o", str(tmp_path / "a.png")], "bad_input"),
        (["stylize", str(photo), str(painting), "-o", str(tmp_path / "no/a.png")], "bad_input"),
        (["stylize", str(photo), str(painting), "-o", str(tmp_path / "a.png"),
          "--weights", "original"], "no_weights"),
    ]
    for args, kind in cases:
        done = engine(*args, *FAST)
        assert done.returncode == EXIT_CODES[kind], done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) <= 2  # the warning and one error line
    assert not (tmp_path / "a.png").exists()


def test_help_explains_options():
    done = engine("stylize", "--help")
    assert done.returncode == 0
    for option in ("--style-strength", "--preserve-colors", "--max-size", "--style-blend"):
        assert option in done.stdout


def test_sigterm_cancels_and_leaves_no_file(photo, painting, tmp_path):
    out = tmp_path / "out.png"
    process = subprocess.Popen(
        [sys.executable, "-m", "nst_engine", "stylize", str(photo), str(painting), "-o",
         str(out), "--max-size", "64", "--iterations", "500", "--progress", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert json.loads(process.stdout.readline())["event"] == "started"
    assert json.loads(process.stdout.readline())["event"] == "progress"  # the first step
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == EXIT_CODES["cancelled"]
    assert not out.exists() and list(tmp_path.glob(".out*")) == []


def write_request(folder, photo_array, painting, **settings):
    np.save(folder / "content.npy", photo_array)
    request = {"protocol": 1, "content": "content.npy", "styles": [str(painting)],
               "output": "result.npy", "preview_every": 2,
               "settings": {"max_size": 48, "iterations": 4, "device": "cpu", **settings}}
    (folder / "request.json").write_text(json.dumps(request))
    return folder / "request.json"


def test_protocol_events_in_order_and_result_array(painting, tmp_path):
    rng = np.random.default_rng(0)
    layer = rng.random((40, 52, 4), dtype=np.float32)
    request = write_request(tmp_path, layer, painting)
    done = engine("run-request", str(request), stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "result"
    steps = [e["step"] for e in events if e["event"] == "progress"]
    assert steps == [1, 2, 3, 4]
    assert "preview" in kinds and (tmp_path / "preview.png").exists()
    result = np.load(tmp_path / "result.npy")
    assert result.shape == layer.shape and result.dtype == np.float32
    assert np.array_equal(result[..., 3], layer[..., 3])


def test_protocol_error_event(tmp_path, painting):
    request = write_request(tmp_path, np.zeros((4, 4, 3), np.float32), painting)
    done = engine("run-request", str(request), stdin=subprocess.DEVNULL)
    event = json.loads(done.stdout.splitlines()[-1])
    assert event["event"] == "error" and event["kind"] == "bad_input"
    assert "16×16" in event["message"]
    assert done.returncode == EXIT_CODES["bad_input"]
    assert not (tmp_path / "result.npy").exists()


def test_closing_stdin_cancels_the_engine(painting, tmp_path):
    request = write_request(tmp_path, np.random.default_rng(0).random((64, 64, 3), np.float32),
                            painting, iterations=2000, max_size=64)
    process = subprocess.Popen(
        [sys.executable, "-m", "nst_engine", "run-request", str(request)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ})
    while json.loads(process.stdout.readline())["event"] != "progress":
        pass
    started = time.monotonic()
    process.stdin.close()  # as when the plug-in dies
    lines = process.stdout.read().splitlines()
    assert process.wait(timeout=60) == EXIT_CODES["cancelled"]
    assert time.monotonic() - started < 30
    assert json.loads(lines[-1])["kind"] == "cancelled"
    assert not (tmp_path / "result.npy").exists()


def test_protocol_1_request_still_works(painting, tmp_path):
    """An older plug-in: protocol 1, previews every N steps, stdin never written."""
    layer = np.random.default_rng(1).random((40, 52, 3), dtype=np.float32)
    request = write_request(tmp_path, layer, painting)
    assert json.loads(request.read_text())["protocol"] == 1
    done = engine("run-request", str(request), stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["step"] for e in events if e["event"] == "preview"] == [2]
    assert events[-1]["event"] == "result" and np.load(tmp_path / "result.npy").shape == (40, 52, 3)


def test_finish_on_stdin_ends_early_with_a_valid_result(painting, tmp_path):
    layer = np.random.default_rng(2).random((60, 64, 4), dtype=np.float32)
    request = write_request(tmp_path, layer, painting, iterations=2000, max_size=64)
    data = json.loads(request.read_text())
    data.update(protocol=2, preview_every=0, preview_interval_s=0.2)
    request.write_text(json.dumps(data))
    process = subprocess.Popen(
        [sys.executable, "-m", "nst_engine", "run-request", str(request)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = []
    while True:
        events.append(json.loads(process.stdout.readline()))
        if events[-1]["event"] == "progress" and events[-1]["step"] == 5:
            process.stdin.write("finish\n")
            process.stdin.flush()
            break
    events += [json.loads(line) for line in process.stdout.read().splitlines()]
    process.stdin.close()
    assert process.wait(timeout=60) == 0, process.stderr.read()
    result = events[-1]
    assert result["event"] == "result" and result["stopped"] == "finished"
    steps = [e["step"] for e in events if e["event"] == "progress"]
    assert result["steps"] == len(steps) < 2000 and steps == list(range(1, len(steps) + 1))
    array = np.load(tmp_path / "result.npy")
    assert array.shape == layer.shape and np.array_equal(array[..., 3], layer[..., 3])
    previews = [e for e in events if e["event"] == "preview"]
    assert previews and [p["step"] for p in previews] == sorted({p["step"] for p in previews})
    with Image.open(previews[-1]["path"]) as shown:  # a complete PNG, whenever it is read
        shown.load()
        assert shown.size == (previews[-1]["width"], previews[-1]["height"])


def test_cancel_on_stdin_ends_with_the_cancelled_event(painting, tmp_path):
    request = write_request(tmp_path, np.zeros((64, 64, 3), np.float32) + 0.5, painting,
                            iterations=2000, max_size=64)
    process = subprocess.Popen(
        [sys.executable, "-m", "nst_engine", "run-request", str(request)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while json.loads(process.stdout.readline())["event"] != "progress":
        pass
    process.stdin.write("cancel\n")
    process.stdin.flush()
    lines = process.stdout.read().splitlines()
    assert process.wait(timeout=60) == EXIT_CODES["cancelled"]
    assert json.loads(lines[-1]) == {"event": "error", "kind": "cancelled",
                                     "message": "cancelled; nothing was written"}
    assert not (tmp_path / "result.npy").exists()
