"""The command line and the plug-in protocol, run as real subprocesses."""

import io
import json
import signal
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image
from streaming import EngineProcess, request

from nst_contract.errors import EXIT_CODES

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


def test_the_w2_style_loss_paints_and_its_targets_have_means(photo, painting, tmp_path):
    from nst_engine import Settings, StyleTransfer

    out = tmp_path / "w2.png"
    done = engine("stylize", str(photo), str(painting), "-o", str(out), *FAST,
                  "--style-loss", "w2", "--progress", "json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["steps"] == 3
    assert all(np.isfinite(e["style_loss"]) for e in events if e["event"] == "progress")
    targets = StyleTransfer(Settings(style_loss="w2", device="cpu")).targets
    moments = targets.grams(torch.rand(1, 3, 48, 40), 1e9)
    assert moments["relu1_1"].shape == (65, 64)  # the Gram, and the mean as a last row


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


def test_protocol_events_in_order_and_result_array(painting):
    layer = np.random.default_rng(0).random((40, 52, 4), dtype=np.float32)
    run = EngineProcess()
    run.send(request(painting, layer, {"iterations": 4}, preview_interval_s=0.01))
    result, code = run.finish()
    assert code == 0, run.stderr()
    kinds = [e["event"] for e in run.events]
    assert kinds[0] == "started" and kinds[-1] == "result"
    assert [e["step"] for e in run.events if e["event"] == "progress"] == [1, 2, 3, 4]
    preview = run.payloads[kinds.index("preview")]
    with Image.open(io.BytesIO(preview)) as shown:  # a whole PNG of the working image
        shown.load()
        assert shown.size == (run.events[kinds.index("preview")]["width"],
                              run.events[kinds.index("preview")]["height"])
    array = np.frombuffer(run.payloads[-1], "<f4").reshape(result["shape"])
    assert array.shape == layer.shape
    assert np.array_equal(array[..., 3], layer[..., 3])


def test_a_preview_with_the_photos_colours_kept_shows_them(painting):
    """What forms in the run window is what the layer will be: with Keep the photo's
    colours each preview has the photo's chroma (R' − G', B' − G'), not the painting's."""
    from nst_engine.enlarging import resize
    from nst_engine.tensors import to_array, to_tensor

    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:40, 0:52] / 52
    layer = np.stack([0.2 + 0.6 * x, 0.7 - 0.5 * y, 0.3 + 0.3 * np.sin(9 * x)], axis=2)
    layer = (layer + 0.02 * rng.random(layer.shape)).astype(np.float32)

    def chroma(rgb):
        return np.stack([rgb[..., 0] - rgb[..., 1], rgb[..., 2] - rgb[..., 1]])

    errors = {}
    for keep in (True, False):
        run = EngineProcess()
        run.send(request(painting, layer, {"iterations": 12, "style_strength": 1.0,
                                           "preserve_colors": keep},
                         preview_interval_s=0.01))
        _, code = run.finish()
        assert code == 0, run.stderr()
        kinds = [e["event"] for e in run.events]
        index = len(kinds) - 1 - kinds[::-1].index("preview")  # the last: painted most
        event = run.events[index]
        with Image.open(io.BytesIO(run.payloads[index])) as shown:
            preview = np.asarray(shown.convert("RGB"), np.float32) / 255
        photo = to_array(resize(to_tensor(layer, torch.device("cpu")), event["width"],
                                event["height"]))
        errors[keep] = np.median(np.abs(chroma(preview) - chroma(photo)))
    assert errors[True] < 2.5 / 255, errors  # the photo's, to 8-bit rounding
    assert errors[False] > 3 * errors[True], errors  # the painting's: the test can tell


def test_protocol_error_event(painting):
    run = EngineProcess()
    run.send(request(painting, np.zeros((4, 4, 3), np.float32)))
    event, code = run.finish()
    assert event["event"] == "error" and event["kind"] == "bad_input"
    assert "16×16" in event["message"]
    assert code == EXIT_CODES["bad_input"]


def long_run(painting) -> EngineProcess:
    run = EngineProcess()
    layer = np.random.default_rng(0).random((64, 64, 3), np.float32)
    run.send(request(painting, layer, {"iterations": 2000, "max_size": 64},
                        preview_interval_s=0.2))
    assert run.until("progress")["event"] == "progress"
    return run


def test_closing_stdin_cancels_the_engine(painting):
    run = long_run(painting)
    started = time.monotonic()
    run.close_stdin()  # as when the plug-in dies
    event, code = run.finish(timeout=60)
    assert code == EXIT_CODES["cancelled"] and event["kind"] == "cancelled"
    assert time.monotonic() - started < 30


def test_finish_ends_early_with_a_valid_result(painting):
    run = EngineProcess()
    layer = np.random.default_rng(2).random((60, 64, 4), dtype=np.float32)
    run.send(request(painting, layer, {"iterations": 2000, "max_size": 64},
                        preview_interval_s=0.2))
    while (event := run.until("progress"))["event"] == "progress" and event["step"] < 5:
        pass
    run.command("finish")
    result, code = run.finish(timeout=60)
    assert code == 0, run.stderr()
    assert result["event"] == "result" and result["stopped"] == "finished"
    steps = [e["step"] for e in run.events if e["event"] == "progress"]
    assert result["steps"] == len(steps) < 2000 and steps == list(range(1, len(steps) + 1))
    array = np.frombuffer(run.payloads[-1], "<f4").reshape(result["shape"])
    assert array.shape == layer.shape and np.array_equal(array[..., 3], layer[..., 3])
    previews = [e["step"] for e in run.events if e["event"] == "preview"]
    assert previews and previews == sorted(set(previews))


def test_cancel_ends_with_the_cancelled_event(painting):
    run = long_run(painting)
    run.command("cancel")
    event, code = run.finish(timeout=60)
    assert code == EXIT_CODES["cancelled"]
    assert event == {"event": "error", "kind": "cancelled",
                     "message": "cancelled; nothing was written"}
