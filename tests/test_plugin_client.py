"""The plug-in's pure-Python side (no GIMP): engine lookup, environment, runs over the
stream protocol, error paths, estimates."""

import json
import os
import re
import stat
import sys
from pathlib import Path

import nst_arguments
import nst_client
import nst_config
import nst_estimates
import nst_messages
import numpy as np
import pytest


def test_environment_is_cleaned_but_keeps_nst_variables():
    env = nst_config.engine_environment({
        "PYTHONPATH": "/gimp/lib", "PYTHONHOME": "/gimp", "GI_TYPELIB_PATH": "x",
        "LD_LIBRARY_PATH": "/gimp/lib", "NST_WEIGHTS": "random", "NST_DATA_DIR": "/d",
        "HOME": "/home/me",
    })
    assert env == {"NST_WEIGHTS": "random", "NST_DATA_DIR": "/d", "HOME": "/home/me",
                   "PYTHONIOENCODING": "utf-8"}


ARGUMENTS = {"style-strength": 0.7, "iterations": 250, "max-size": 800,
             "preserve-colors": True, "seed": 42, "detail": "full", "device": "cpu"}


def settings(**changes):
    return nst_arguments.settings_from_config({**ARGUMENTS, **changes}.__getitem__)


def test_arguments_map_onto_engine_settings_by_name():
    assert settings() == {"style_strength": 0.7, "iterations": 250, "max_size": 800,
                          "preserve_colors": True, "seed": 42, "detail": "full",
                          "device": "cpu"}
    from nst_engine import Settings

    Settings.from_dict(settings())  # the engine accepts exactly these
    assert Settings.from_dict(settings(**{"max-size": 0})).auto_size  # 0: automatic
    # The argument defaults are the engine's, max size's "automatic" as 0.
    defaults = nst_arguments.settings_from_config(
        lambda name: nst_arguments.argument_default(name.replace("-", "_")))
    assert Settings.from_dict(defaults) == Settings(max_size=0)


def test_engine_command_from_config_override_and_remote(tmp_path, monkeypatch):
    monkeypatch.delenv("NST_ENGINE_PYTHON", raising=False)
    monkeypatch.delenv("NST_SSH_OPTIONS", raising=False)
    with pytest.raises(nst_messages.ClientError) as info:
        nst_config.engine_command(tmp_path)
    assert info.value.kind == "not_installed" and "install.sh" in info.value.message
    config = tmp_path / "nst-engine.json"
    config.write_text(json.dumps({"python": sys.executable}))
    assert nst_config.engine_command(tmp_path) == (
        [sys.executable, "-m", "nst_engine", "connect"], None)
    config.write_text(json.dumps(
        {"python": "/host/python", "launcher": ["flatpak-spawn", "--host"]}))
    assert nst_config.engine_command(tmp_path)[0][:3] == ["flatpak-spawn", "--host",
                                                          "/host/python"]
    config.write_text(json.dumps({"python": sys.executable, "remote": {
        "host": "me@gpu-box", "python": "/opt/nst env/bin/python"}}))
    command, host = nst_config.engine_command(tmp_path)
    assert host == "me@gpu-box" and command[0] == "ssh" and "BatchMode=yes" in command
    # the remote command line is quoted word by word for the remote shell
    assert command[-2:] == ["me@gpu-box", "'/opt/nst env/bin/python' -m nst_engine connect"]
    monkeypatch.setenv("NST_ENGINE_PYTHON", str(tmp_path / "missing-python"))
    config.write_text(json.dumps({"python": sys.executable}))
    with pytest.raises(nst_messages.ClientError, match="does not exist"):
        nst_config.engine_command(tmp_path)


def test_workdir_is_private_and_stale_ones_are_removed(tmp_path):
    stale = tmp_path / f"{nst_client.TEMP_PREFIX}999999999-abc"
    stale.mkdir()
    folder = nst_client.make_workdir(str(tmp_path))
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert not stale.exists() and str(os.getpid()) in os.path.basename(folder)


LOCAL = [sys.executable, "-m", "nst_engine", "connect"]


def layer(height=30, width=40, channels=3, seed=1):
    data = np.random.default_rng(seed).random((height, width, channels), dtype=np.float32)
    return data, data.tobytes(), data.shape


def test_run_engine_reports_progress_and_result(painting):
    data, raw, shape = layer(channels=4)
    seen = []
    result = nst_client.run_engine(
        LOCAL, settings(**{"style-strength": 0.5, "iterations": 3, "max-size": 64}), raw,
        shape, nst_client.Style.from_file(painting), seen.append)
    steps = [e["progress"].step for e in seen if e["event"] == "progress"]
    told = [e["event"] for e in seen if e["event"] != "alive"]  # alive: any time
    assert steps == [1, 2, 3] and told[0] in ("started", "queued")
    assert tuple(result["shape"]) == shape and result["steps"] == 3
    back = np.frombuffer(result["payload"], np.float32).reshape(shape)
    assert np.array_equal(back[..., 3], data[..., 3])  # alpha bit for bit


def test_a_painting_sent_as_a_layers_pixels_paints_as_its_file_does(painting):
    """A painting open in GIMP goes as float32 pixels (nothing written to disk): the
    same result as its file, and the engine names a bad one a style layer."""
    from PIL import Image

    _, raw, shape = layer()
    pixels = np.asarray(Image.open(painting).convert("RGB"), np.float32) / 255
    chosen = settings(iterations=3, **{"max-size": 48})
    from_file = nst_client.run_engine(LOCAL, chosen, raw, shape,
                                      nst_client.Style.from_file(painting))
    from_layer = nst_client.run_engine(
        LOCAL, chosen, raw, shape, nst_client.Style("painting", pixels.tobytes(), pixels.shape))
    assert from_layer["payload"] == from_file["payload"]
    thin = pixels[:8]
    with pytest.raises(nst_messages.ClientError) as info:
        nst_client.run_engine(LOCAL, chosen, raw, shape,
                              nst_client.Style("painting", thin.tobytes(), thin.shape))
    assert info.value.kind == "bad_input" and "style layer is 64×8" in info.value.message


def test_run_engine_turns_engine_errors_into_messages(tmp_path):
    _, raw, shape = layer()
    (tmp_path / "broken.jpg").write_bytes(b"not really a jpeg")
    with pytest.raises(nst_messages.ClientError) as info:
        nst_client.run_engine(LOCAL, settings(iterations=3), raw, shape,
                              nst_client.Style.from_file(tmp_path / "broken.jpg"))
    assert info.value.kind == "bad_input" and "broken.jpg" in info.value.message
    assert "style image and the options" in nst_messages.user_message(info.value)


def test_an_engine_started_for_a_request_never_sent_is_ended(painting):
    """The plug-in starts the engine while GIMP reads the layer; when the read fails,
    the engine goes, its folder goes, and the warm service serves the next run."""
    run = nst_client.EngineRun(LOCAL)
    run.abandon()
    assert run.process.poll() is not None and not os.path.exists(run.folder)
    _, raw, shape = layer()
    result = nst_client.run_engine(LOCAL, settings(iterations=2, **{"max-size": 48}), raw,
                                   shape, nst_client.Style.from_file(painting))
    assert result["steps"] == 2


def test_engine_crash_without_event(tmp_path):
    crash = [sys.executable, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(9)"]
    _, raw, shape = layer()
    with pytest.raises(nst_messages.ClientError, match="boom"):
        nst_client.run_engine(crash, settings(), raw, shape, nst_client.Style.from_file(__file__))


def test_eta_formatting():
    assert nst_messages.format_eta(42.4) == "42 s"
    assert nst_messages.format_eta(125) == "2 min 05 s"
    assert nst_messages.format_eta(3700) == "1 h 01 min"


def fake_engine(script):
    """An 'engine' that prints what ``script`` prints, for the plug-in's error paths."""
    return [sys.executable, "-c", "import sys; " + script]


@pytest.mark.parametrize("output", [
    "[1, 2, 3]\nnot json at all\n",  # garbage and a non-object line, then nothing
    '{"event": "progress", "step": "x"}\n',  # a progress event without its numbers
    '{"event": "result"}\n',  # a result without a path
    '"result"\n{"event": 7}\n',
    '{"event": "result", "shape": [30, 40, 3], "dtype": "<f4", "bytes": 12}\nshort',
    '{"event": "result", "shape": [2, 2, 1], "dtype": "<f4", "bytes": 8}\n12345678',
])
def test_malformed_engine_output_is_a_clear_message(tmp_path, monkeypatch, output):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    command = fake_engine(f"sys.stdout.write({output!r})")
    _, raw, shape = layer()
    with pytest.raises(nst_messages.ClientError) as info:
        nst_client.run_engine(command, settings(), raw, shape, nst_client.Style.from_file(__file__))
    assert info.value.kind == "internal"
    assert "stopped unexpectedly" in info.value.message


@pytest.mark.parametrize("announced", [1 << 62, 2 << 30])
def test_a_payload_larger_than_the_layer_ends_the_run_before_room_is_made(
        tmp_path, monkeypatch, announced):
    """The plug-in makes room for a payload before it arrives: one larger than the
    layer it sent (an absurd size, or 2 GB for a small layer) is a clear message
    before any allocation, and the engine (still running here) is stopped."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    line = json.dumps({"event": "result", "shape": [1, 1, 3], "dtype": "<f4",
                       "bytes": announced}) + "\n"
    command = fake_engine(f"import time; sys.stdout.write({line!r}); sys.stdout.flush(); "
                          "time.sleep(60)")
    _, raw, shape = layer()
    allocations = []
    monkeypatch.setattr(nst_client, "bytearray", lambda *size: allocations.append(size)
                        or bytearray(*size), raising=False)
    with pytest.raises(nst_messages.ClientError, match="more than the .* of the layer sent") \
            as info:
        nst_client.run_engine(command, settings(), raw, shape, nst_client.Style.from_file(__file__))
    assert info.value.kind == "internal" and (announced,) not in allocations


def test_an_event_nested_too_deeply_is_garbage_not_a_traceback():
    assert nst_client.parse_event(b"[" * 100_000 + b"]" * 100_000) is None
    assert nst_client.parse_event(b'{"event": "x", "a": ' + b"[" * 100_000 + b"]" * 100_000
                                  + b"}") is None


def test_internal_error_keeps_the_engine_log_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    script = ("import sys; sys.stderr.write('Traceback: deep trouble\\n' * 5000); "
              "print('{\"event\": \"error\", \"kind\": \"internal\", \"message\": \"boom\"}')")
    _, raw, shape = layer()
    for _ in range(7):
        with pytest.raises(nst_messages.ClientError) as info:
            nst_client.run_engine(fake_engine(script), settings(), raw, shape,
                                  nst_client.Style.from_file(__file__))
    logs = sorted((tmp_path / "cache" / "nst-gimp" / "logs").glob("engine-*.log"))
    assert len(logs) == 5  # rotated: the newest five
    assert str(logs[-1]) in info.value.message and "boom" in info.value.message
    assert 0 < logs[-1].stat().st_size <= 64 * 1024  # small: the log's end
    assert logs[-1].read_text().endswith("deep trouble\n")


def test_a_full_logs_disk_leaves_no_empty_or_half_log_and_rotates(tmp_path, monkeypatch):
    """On a full disk the message has no log note and nothing is left behind; the
    oldest log goes first, so the newest fits where an old one was."""
    from test_failures import fill, tiny_disk

    stderr = tmp_path / "stderr.txt"
    stderr.write_bytes(b"Traceback: deep trouble\n" * 3000)  # 72 KB: the last 64 KiB kept
    with tiny_disk(tmp_path, "400k") as disk:
        monkeypatch.setenv("XDG_CACHE_HOME", str(disk))
        logs = disk / "nst-gimp" / "logs"
        for _ in range(5):
            assert nst_client.keep_log(str(stderr))
        fill(disk, 0)
        kept = nst_client.keep_log(str(stderr))  # the oldest made room
        assert kept and Path(kept).stat().st_size == 64 * 1024
        assert len(list(logs.glob("engine-*.log"))) == 5
        for old in sorted(logs.glob("engine-*.log")):
            old.unlink()
        (disk / "more").mkdir()
        fill(disk / "more", 0)  # a second filler: the first stays
        assert nst_client.keep_log(str(stderr)) is None
        assert not list(logs.iterdir())  # no empty log, no temporary left
        assert nst_messages.log_note(None) == ""


@pytest.mark.parametrize("size, changes, words", [
    ((4000, 30), {"max-size": 512}, "too thin for a max size of 512"),
    ((4000, 30), {"max-size": 0}, "too thin for a max size of 512"),  # automatic, CPU
    ((1000, 1000), {"max-size": 20}, "at least 32 pixels"),
])
def test_the_dialog_says_which_runs_the_engine_would_refuse(size, changes, words):
    """The estimate plans with the engine's own rules, so a run the engine would
    refuse is its message in the dialog, with or without a calibration — never an
    estimate for a run that cannot start."""
    for calibration in (None, VALID_CALIBRATION):
        with pytest.raises(nst_messages.ClientError) as info:
            nst_estimates.estimate_seconds(calibration, *size, settings(**changes))
        assert info.value.kind == "bad_input" and words in info.value.message
    assert nst_estimates.estimate_seconds(VALID_CALIBRATION, 4000, 30,
                                       settings(**{"max-size": 8000})) > 0


def test_speed_log_calibrates_and_estimates(tmp_path):
    log = nst_estimates.SpeedLog()
    log.launched -= 4.0  # the engine took 4 s to start
    log.on_event({"event": "started", "device": "cpu",
                  "scales": [[128, 128, 10, 1], [256, 256, 20, 1]]})
    per_step = {1: 0.1, 2: 0.4}  # seconds per step: 0.1 at 128², 0.4 at 256²
    elapsed = 0.0
    for scale, steps, side in ((1, 10, 128), (2, 15, 256)):
        for _ in range(steps):
            elapsed += per_step[scale]
            event = {"event": "progress", "step": 1, "total": 30, "fraction": 0.1,
                     "scale": scale, "scales": 2, "width": side, "height": side,
                     "elapsed_s": elapsed}
            log.on_event(nst_client.parse_event(json.dumps(event).encode()))
    log.on_event({"event": "result", "path": "x", "steps": 25, "stopped": "converged"})
    calibration = log.calibration()
    assert calibration["device"] == "cpu" and calibration["top_fractions"] == {"256": 0.75}
    assert 3.5 < calibration["startup_s"] < 4.5
    path = tmp_path / "calibration.json"
    nst_estimates.save_calibration(path, calibration)
    loaded = nst_estimates.load_calibration(path)
    seconds = nst_estimates.estimate_seconds(loaded, 256, 256, {"max_size": 256, "iterations": 30})
    # start-up + 10 steps at 128² + 0.75 × 20 steps at 256²
    assert seconds == pytest.approx(calibration["startup_s"] + 1.0 + 6.0, rel=0.05)
    auto = nst_estimates.estimate_seconds(loaded, 2000, 1000, {"max_size": 0, "iterations": 30})
    assert auto > seconds  # automatic on the CPU: 512 px
    assert nst_estimates.estimate_seconds(None, 256, 256, {"max_size": 0, "iterations": 9}) is None
    assert "about" in nst_messages.format_estimate(seconds, "cpu")
    assert "first run" in nst_messages.format_estimate(None, None)


def test_the_estimate_learns_from_every_run_not_the_last(tmp_path):
    """A photographer saw the estimate jump 12 → 4 → 11 → 6 min as settings changed:
    each run replaced the speed with its own, fitted only through the sizes it worked
    at. Now the speed is fitted through the latest runs' steps together, the start-up
    is their median, and a size's share of top-scale steps is averaged."""
    def step_s(pixels):  # this computer's true speed
        return 0.004 + 1e-6 * pixels

    base = {"device": "cpu", "precision": "fp32", "step_s": 0.0}
    small = {**base, "startup_s": 4.0, "step_s_per_megapixel": 1.0,
             "top_fractions": {"256": 0.8}, "startups": [4.0],
             "points": [[p, step_s(p)] for p in (128 * 128, 256 * 256)]}
    large = {**base, "startup_s": 8.0, "step_s_per_megapixel": 1.015,  # through 0
             "top_fractions": {"256": 0.6}, "startups": [8.0],
             "points": [[512 * 512, step_s(512 * 512)]]}
    path = tmp_path / "calibration.json"
    nst_estimates.save_calibration(path, small)
    nst_estimates.save_calibration(path, large)
    learnt = nst_estimates.load_calibration(path)
    assert learnt["step_s"] == pytest.approx(0.004, abs=1e-6)
    assert learnt["step_s_per_megapixel"] == pytest.approx(1.0, rel=1e-3)
    assert learnt["startup_s"] == 6.0 and learnt["top_fractions"] == {"256": 0.7}
    for _ in range(40):  # many runs later, only the latest are kept
        nst_estimates.save_calibration(path, dict(large))
    assert len(nst_estimates.load_calibration(path)["points"]) == nst_estimates.KEPT_POINTS
    other = {**large, "precision": "bf16"}  # another arithmetic starts afresh
    nst_estimates.save_calibration(path, dict(other))
    assert nst_estimates.load_calibration(path)["points"] == other["points"]


def test_a_temporary_folder_that_cannot_be_made_is_a_message_and_starts_nothing(
        tmp_path, monkeypatch):
    """A full or unwritable /tmp: the photographer reads what to free, not 'the
    plug-in failed unexpectedly', and no engine is left running."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(nst_client.tempfile, "tempdir", str(tmp_path / "a-file" / "below"))
    started = []
    monkeypatch.setattr(nst_client.subprocess, "Popen", lambda *a, **k: started.append(a))
    with pytest.raises(nst_messages.ClientError) as info:
        nst_client.EngineRun(LOCAL)
    assert info.value.kind == "temp_folder" and "temporary folder" in info.value.message
    assert "Nothing was added" in info.value.message
    assert "TMPDIR" in nst_messages.user_message(info.value) and not started


def test_estimate_counts_the_refinement_at_full_size(tmp_path):
    """The refinement's speed is measured per photo megapixel and step (its tiles'
    overlap included), kept across runs without one, and added where it will run."""
    log = nst_estimates.SpeedLog()
    log.on_event({"event": "started", "device": "cpu", "detail": True,
                  "scales": [[128, 128, 10, 1], [1000, 1000, 2, 4]]})
    elapsed = 0.0
    for step in range(10):
        elapsed += 0.1
        log.on_event(nst_client.parse_event(json.dumps({
            "event": "progress", "step": step + 1, "total": 18, "fraction": 0.1, "scale": 1,
            "scales": 2, "width": 128, "height": 128, "elapsed_s": elapsed}).encode()))
    for tile in range(4):
        for _ in range(2):
            elapsed += 1.5  # 12 s for 2 steps over a 1 MP photo: 6 s per megapixel-step
            log.on_event(nst_client.parse_event(json.dumps({
                "event": "progress", "step": 11, "total": 18, "fraction": 0.6, "scale": 2,
                "scales": 2, "width": 1000, "height": 1000, "elapsed_s": elapsed,
                "detail": True, "tile": tile + 1, "tiles": 4, "pixels": 300_000}).encode()))
    log.on_event({"event": "result", "path": "x", "steps": 18, "stopped": "completed"})
    calibration = log.calibration()
    assert calibration["detail_s_per_megapixel_step"] == pytest.approx(6.0)
    assert calibration["top_fractions"] == {"128": 1.0}
    path = tmp_path / "calibration.json"
    nst_estimates.save_calibration(path, calibration)
    without = {k: v for k, v in calibration.items() if k != "detail_s_per_megapixel_step"}
    nst_estimates.save_calibration(path, without)  # a later run without the refinement
    loaded = nst_estimates.load_calibration(path)
    assert loaded["detail_s_per_megapixel_step"] == pytest.approx(6.0)  # kept
    settings = {"max_size": 128, "iterations": 10}
    working = nst_estimates.estimate_seconds(loaded, 1000, 1000, {**settings, "detail": "working"})
    full = nst_estimates.estimate_seconds(loaded, 1000, 1000, {**settings, "detail": "full"})
    from nst_contract.knobs import DETAIL_STEPS

    steps = DETAIL_STEPS["cpu"]
    assert full - working == pytest.approx(steps * 6.0)
    assert nst_estimates.estimate_seconds(loaded, 1000, 1000, {**settings, "detail": "auto"}) \
        == working  # automatic: no refinement on the processor
    # What the dialog says Refine at full size would cost here, for a run without it
    cost = nst_estimates.refinement_cost_s(loaded, 1000, 1000, {**settings, "detail": "auto"})
    assert cost == pytest.approx(steps * 6.0)
    assert nst_messages.format_refinement(cost) == (
        f"Detail: “Refine at full size” would make it sharp at 100 %, for about "
        f"{nst_messages.format_eta(steps * 6.0)} more here.")
    for refined, width in (("full", 1000), ("working", 128)):  # refines, or is full size
        assert nst_estimates.refinement_cost_s(
            loaded, width, width, {**settings, "detail": refined}) == 0.0
    assert nst_messages.format_refinement(0.0) == ""
    unmeasured = nst_estimates.refinement_cost_s(None, 1000, 1000, settings)
    assert unmeasured is None and "several times" in nst_messages.format_refinement(None)


def test_a_run_in_another_precision_starts_the_calibration_afresh(tmp_path):
    """What was measured in fp32 (the refinement's speed, shares of top-scale steps)
    is not carried into a bf16 calibration: bf16 halves a step on such a processor."""
    path = tmp_path / "calibration.json"
    old = {"device": "cpu", "precision": "fp32", "startup_s": 3.0, "step_s": 0.0,
           "step_s_per_megapixel": 8.0, "top_fractions": {"512": 0.9},
           "detail_s_per_megapixel_step": 12.0}
    nst_estimates.save_calibration(path, dict(old))
    log = nst_estimates.SpeedLog()
    log.on_event({"event": "started", "device": "cpu", "precision": "bf16",
                  "scales": [[128, 128, 10, 1]]})
    for step in range(10):
        log.on_event(nst_client.parse_event(json.dumps({
            "event": "progress", "step": step + 1, "total": 10, "fraction": 0.1, "scale": 1,
            "scales": 1, "width": 128, "height": 128, "elapsed_s": 0.05 * (step + 1)}).encode()))
    log.on_event({"event": "result", "path": "x", "steps": 10, "stopped": "completed"})
    new = log.calibration()
    assert new["precision"] == "bf16"
    nst_estimates.save_calibration(path, new)
    loaded = nst_estimates.load_calibration(path)
    assert loaded["precision"] == "bf16" and "detail_s_per_megapixel_step" not in loaded
    assert loaded["top_fractions"] == {"128": 1.0}
    nst_estimates.save_calibration(path, {**new, "top_fractions": {"256": 0.7}})
    assert nst_estimates.load_calibration(path)["top_fractions"] == {"128": 1.0, "256": 0.7}


@pytest.mark.parametrize("config, message", [
    ({"python": None}, "python must be the path"),
    ({"python": ["/usr/bin/python3"]}, "python must be the path"),
    ({"python": sys.executable, "launcher": 5}, "launcher must be a list of strings"),
    ({"python": sys.executable, "launcher": "flatpak-spawn --host"},
     "launcher must be a list of strings"),
    ({"python": sys.executable, "remote": "x"}, "remote must be an object"),
    ({"python": sys.executable, "remote": {"python": "/p"}}, "remote.host must name"),
    ({"python": sys.executable, "remote": {"host": "me@gpu", "ssh_options": 5}},
     "ssh_options must be a list of strings"),
    ({"python": sys.executable, "remote": {"host": "me@gpu", "ssh_options": None}},
     "ssh_options must be a list of strings"),
    ({"python": sys.executable, "remote": {"host": "me@gpu", "ssh_options": "notalist"}},
     "ssh_options must be a list of strings"),
    ({"python": sys.executable, "devices": "cpu"}, "devices must list some of"),
    ({"python": sys.executable, "devices": ["cpu", "tpu"]}, "devices must list some of"),
    ([sys.executable], "must hold a JSON object"),
])
def test_a_malformed_config_entry_is_named_never_guessed(tmp_path, monkeypatch, config,
                                                        message):
    """A string is never split into characters (``"notalist"`` once reached ssh as
    ``-n -o -t …`` and a host ``n``), a remote that is not an object is not quietly
    ignored, and the message says which entry to correct."""
    monkeypatch.delenv("NST_ENGINE_PYTHON", raising=False)
    (tmp_path / "nst-engine.json").write_text(json.dumps(config))
    with pytest.raises(nst_messages.ClientError) as info:
        nst_config.engine_command(tmp_path)
    assert info.value.kind == "bad_config" and message in info.value.message
    assert "nst-engine.json" in nst_messages.user_message(info.value)


def test_a_config_that_is_not_a_regular_file_is_not_read(tmp_path, monkeypatch):
    monkeypatch.delenv("NST_ENGINE_PYTHON", raising=False)
    os.mkfifo(tmp_path / "nst-engine.json")  # reading it would wait for a writer forever
    with pytest.raises(nst_messages.ClientError, match="not a regular file"):
        nst_config.engine_command(tmp_path)


def test_ssh_options_reach_ssh_as_given(tmp_path, monkeypatch):
    monkeypatch.delenv("NST_ENGINE_PYTHON", raising=False)
    monkeypatch.delenv("NST_SSH_OPTIONS", raising=False)
    (tmp_path / "nst-engine.json").write_text(json.dumps({"python": sys.executable, "remote": {
        "host": "me@gpu", "ssh_options": ["-C", "-p", "2222"]}}))
    command, host = nst_config.engine_command(tmp_path)
    assert host == "me@gpu"
    assert command[command.index("--") - 3:command.index("--") + 2] == [
        "-C", "-p", "2222", "--", "me@gpu"]


VALID_CALIBRATION = {"device": "cpu", "precision": "bf16", "startup_s": 3.0, "step_s": 0.01,
                     "step_s_per_megapixel": 4.0, "top_fractions": {"512": 0.9}}


@pytest.mark.parametrize("damage", [
    {"startup_s": None}, {"step_s": "0.1"}, {"step_s_per_megapixel": float("nan")},
    {"step_s_per_megapixel": float("inf")}, {"startup_s": -1}, {"device": 3},
    {"top_fractions": [0.9]}, {"top_fractions": {"512": float("nan")}},
    {"detail_s_per_megapixel_step": 0}, {"precision": 16}, "missing step_s",
])
def test_a_damaged_calibration_is_set_aside_and_the_dialog_opens(tmp_path, damage):
    path = tmp_path / "nst-calibration.json"
    data = dict(VALID_CALIBRATION)
    if damage == "missing step_s":
        del data["step_s"]
    else:
        data.update(damage)
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
    assert nst_estimates.load_calibration(path) is None
    assert not path.exists() and (tmp_path / "nst-calibration.json.bad").exists()
    # no estimate rather than "about nan h", and the next run's measurement is kept
    assert nst_estimates.estimate_seconds(None, 1000, 1000, {"max_size": 0, "iterations": 9}) \
        is None
    nst_estimates.save_calibration(path, dict(VALID_CALIBRATION))
    assert nst_estimates.load_calibration(path) == VALID_CALIBRATION


def test_a_calibration_that_is_not_a_regular_file_is_not_read(tmp_path):
    path = tmp_path / "nst-calibration.json"
    os.mkfifo(path)
    assert nst_estimates.load_calibration(path) is None  # at once, not waiting for a writer
    nst_estimates.save_calibration(path, dict(VALID_CALIBRATION))
    assert nst_estimates.load_calibration(path) == VALID_CALIBRATION


def test_a_silent_engine_is_given_up_but_a_stopped_plugin_is_not(tmp_path, monkeypatch):
    """Nothing from the engine for SILENT_ENGINE_S: the run ends with 'stopped
    answering' and the engine process is ended. A long gap between two looks is the
    plug-in's own stop (GIMP paused): the silence counts from then."""
    silent = tmp_path / "silent.py"
    silent.write_text("import time\ntime.sleep(60)\n")
    clock = [1000.0]
    monkeypatch.setattr(nst_client.time, "monotonic", lambda: clock[0])
    run = nst_client.EngineRun([sys.executable, str(silent)])
    try:
        for _ in range(8):  # looked at every 2 s: nothing for 16 s is not yet silence
            clock[0] += 2.0
            assert not run.given_up()
        clock[0] += 60.0  # this process was stopped for a minute: not the engine's fault
        assert not run.given_up()
        clock[0] += 2.0
        assert not run.given_up()
        for _ in range(10):
            clock[0] += 2.0
            if run.given_up():
                break
        assert run.error is not None and run.error.kind == "engine_silent"
        assert clock[0] - 1076.0 > nst_client.SILENT_ENGINE_S  # counted from the stop
        assert "stopped answering" in nst_messages.user_message(run.error)
        assert run.process.wait(timeout=10) != 0  # ended, not left running
        with pytest.raises(nst_messages.ClientError) as info:
            run.outcome()
        assert info.value.kind == "engine_silent"
    finally:
        if run.process.poll() is None:
            run.process.kill()


@pytest.mark.parametrize("engine_said, photographer_reads", [
    ("CUDA was asked for but this torch sees no CUDA GPU; use --device cpu",
     "use “Device: Processor (CPU)”"),
    ("out of memory at 1024×768 on cuda; try --max-size 724 or a smaller --memory-budget",
     "try “Working size” 724 or a smaller --memory-budget (a command-line option)"),
    ("out of memory refining at full size (6000×4000) on cuda; try --detail working or a "
     "smaller --memory-budget", "try “Detail: Working size, enlarged (fast)”"),
    ("out of memory; try a smaller --max-size or smaller images",
     "try a smaller “Working size” or smaller images"),
])
def test_engine_advice_is_in_the_dialogs_words(engine_said, photographer_reads):
    words, advised = nst_arguments.in_dialog_words(engine_said)
    assert photographer_reads in words and advised
    assert "--device" not in words and "--max-size" not in words and "--detail" not in words
    assert nst_arguments.in_dialog_words("the style image is unreadable") == (
        "the style image is unreadable", False)


def test_an_engine_error_that_says_what_to_do_gets_no_generic_hint(tmp_path, monkeypatch):
    """What a photographer saw with Device: NVIDIA GPU on a computer without one: a
    command-line flag and "Check the style image and the options"."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    error = {"event": "error", "kind": "bad_input",
             "message": "CUDA was asked for but this torch sees no CUDA GPU; use --device cpu"}
    command = fake_engine(f"print({json.dumps(json.dumps(error))}); sys.exit(2)")
    _, raw, shape = layer()
    with pytest.raises(nst_messages.ClientError) as info:
        nst_client.run_engine(command, settings(), raw, shape, nst_client.Style.from_file(__file__))
    shown = nst_messages.user_message(info.value)
    assert "“Device: Processor (CPU)”" in shown and "--device" not in shown
    assert nst_messages._(nst_messages.HINTS["bad_input"]) not in shown
    unadvised = nst_messages.ClientError("bad_input", "the style image is unreadable")
    assert nst_messages.user_message(unadvised).endswith(
        nst_messages._(nst_messages.HINTS["bad_input"]))


def test_the_dialog_says_when_the_selection_limits_the_area():
    assert nst_messages.format_area(800, 600, 800, 600) == ""
    assert nst_messages.format_area(300, 200, 800, 600) == (
        "Only the selection is painted: 300×200 px of the layer's 800×600.")


def test_the_device_list_offers_the_devices_this_computer_has(tmp_path):
    """A photographer was offered NVIDIA and Apple GPUs the computer did not have:
    install.sh records the devices the engine's torch found, and the dialog greys out
    the others; unknown (an older config, an engine elsewhere, a bad file) shows all."""
    config = tmp_path / "nst-engine.json"
    config.write_text(json.dumps({"python": sys.executable, "devices": ["cpu"]}))
    assert nst_config.available_devices(tmp_path) == ["cpu"]
    config.write_text(json.dumps({"python": sys.executable, "devices": ["cpu"],
                                  "remote": {"host": "me@gpu-box"}}))
    assert nst_config.available_devices(tmp_path) is None  # the far machine's are unknown
    config.write_text(json.dumps({"python": sys.executable}))
    assert nst_config.available_devices(tmp_path) is None
    config.write_text("{broken")
    assert nst_config.available_devices(tmp_path) is None


PLUGIN_DIR = Path(nst_arguments.__file__).resolve().parent


def test_the_style_chooser_offers_the_files_the_engine_reads(tmp_path):
    from PIL import Image

    from nst_engine.images import load_picture

    painting = Image.effect_mandelbrot((40, 30), (-2, -1.2, 1, 1.2), 30).convert("RGB")
    for suffix in nst_arguments.STYLE_IMAGE_SUFFIXES:
        path = tmp_path / f"painting{suffix}"
        painting.save(path)
        assert load_picture(path).size == (40, 30), suffix


def test_help_opens_the_plugins_own_page_which_explains_every_field():
    """GIMP's help system reads help/en/gimp-help.xml of the plug-in's help domain
    (registered in do_query_procedures; the GIMP tests check the registration)."""
    import xml.etree.ElementTree as ET
    from html.parser import HTMLParser

    source = (PLUGIN_DIR / "neural-style-transfer.py").read_text()
    procedure = re.search(r'^PROC_NAME = "([^"]+)"', source, re.MULTILINE).group(1)
    mapping = ET.parse(PLUGIN_DIR / "help" / "en" / "gimp-help.xml").getroot()
    pages = {item.get("id"): item.get("ref") for item in mapping.iter("help-item")}
    page = PLUGIN_DIR / "help" / "en" / pages[procedure]

    class Text(HTMLParser):
        words = ""

        def handle_data(self, data):
            self.words += data

    reader = Text()
    reader.feed(page.read_text())
    text = " ".join(reader.words.split())
    labels = ["Style image", *(argument.label.replace("_", "")
                               for argument in nst_arguments.arguments())]
    for argument in nst_arguments.arguments():
        labels += [label.split(" (")[0] for _nick, label in argument.choices]
    missing = [label for label in labels if label not in text]
    assert not missing, f"the help page does not explain {missing}"


def test_a_recipe_reads_back_what_was_written_and_refuses_what_is_not_one():
    import nst_recipe

    painting = nst_recipe.Painting("mosaïque – bleu.jpg", "ab" * 32,
                                   "/photos/mosaïque – bleu.jpg",
                                   thumbnail_png=b"\x89PNG fake")
    data = nst_recipe.encode(12, "photo", painting, settings(), {
        "event": "started", "engine_version": "0.3.0", "device": "cpu",
        "precision": "bf16", "weights": "original", "width": 40})
    assert data.isascii()  # GIMP takes a parasite's bytes as signed chars
    recipe = nst_recipe.decode(data)
    assert recipe.source == 12 and recipe.source_name == "photo"
    assert recipe.painting == painting and recipe.settings == settings()
    assert recipe.arguments() == ARGUMENTS  # the dialog opens with exactly these
    written = json.loads(data)
    assert written["engine"] == {"version": "0.3.0", "device": "cpu", "precision": "bf16",
                                 "weights": "original"}
    # Format 1 (before 0.3) still reads; a later format's extra fields are ignored.
    old = nst_recipe.decode(json.dumps({"format": 1, "source": 3, "style": "a.png",
                                        "settings": settings()}).encode())
    assert old.painting.name == "a.png" and old.painting.file is None and old.source == 3
    newer = json.loads(data)
    newer.update(format=3, layout={"anything": True})
    assert nst_recipe.decode(json.dumps(newer).encode()).settings == settings()
    for damaged in (b"", b"\xff", b"[]", b'{"format": 2}', json.dumps(
            {**written, "settings": {**settings(), "style_strength": 7}}).encode()):
        assert nst_recipe.decode(damaged) is None, damaged


def test_recent_paintings_are_the_last_eight_used_newest_first(tmp_path):
    import nst_recent

    kept = tmp_path / "nst-recent.json"
    assert nst_recent.recent_paintings(kept) == []
    paintings = []
    for index in range(10):
        paintings.append(tmp_path / f"painting-{index}.jpg")
        paintings[-1].write_bytes(b"jpeg")
        nst_recent.remember_painting(kept, paintings[-1])
    nst_recent.remember_painting(kept, paintings[5])  # used again: first, once
    expected = [str(p) for p in [paintings[5], paintings[9], paintings[8], paintings[7],
                                 paintings[6], paintings[4], paintings[3], paintings[2]]]
    assert nst_recent.recent_paintings(kept) == expected
    paintings[9].unlink()  # moved away: no longer offered
    assert str(paintings[9]) not in nst_recent.recent_paintings(kept)
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
    kept.write_text("{damaged")
    assert nst_recent.recent_paintings(kept) == []
    nst_recent.remember_painting(kept, paintings[1])
    assert nst_recent.recent_paintings(kept) == [str(paintings[1])]


def test_a_run_can_start_from_an_earlier_result_and_skip_its_scales(painting):
    """*Finish this one*: the quick look's result is sent back as the start; the
    scales it was worked out at are not done again."""
    _, raw, shape = layer(192, 256)
    style = nst_client.Style.from_file(painting)
    quick, full = settings(iterations=4, **{"max-size": 128}), settings(
        iterations=6, **{"max-size": 256})
    looked = nst_client.run_engine(LOCAL, quick, raw, shape, style)
    runs = {}
    for start in (None, looked["payload"]):
        events = []
        run = nst_client.EngineRun(LOCAL, events.append)
        run.send_request(full, raw, shape, style, 0.0, start, 128 if start else 0)
        runs[start is not None] = (run.read_to_end(), events[0] if events[0]["event"] ==
                                   "started" else events[1])
    fresh, finished = runs[False], runs[True]
    assert [s[0] for s in fresh[1]["scales"]] == [128, 256]
    assert [s[0] for s in finished[1]["scales"]] == [256]  # 128 px: the quick look's
    assert finished[0]["payload"] != fresh[0]["payload"]
    wrong = nst_client.EngineRun(LOCAL)
    wrong.send_request(full, raw, shape, style, 0.0, looked["payload"][:-4 * 3 * 256], 128)
    with pytest.raises(nst_messages.ClientError) as info:
        wrong.read_to_end()
    assert info.value.kind == "bad_input"
