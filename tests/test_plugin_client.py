"""The plug-in's pure-Python side (no GIMP): .npy I/O, engine lookup, environment, runs."""

import json
import os
import stat
import sys

import nst_client
import numpy as np
import pytest


def test_npy_written_by_hand_reads_in_numpy_and_back(tmp_path):
    data = np.random.default_rng(0).random((7, 9, 4), dtype=np.float32)
    nst_client.write_npy(tmp_path / "a.npy", data.tobytes(), data.shape)
    assert np.array_equal(np.load(tmp_path / "a.npy"), data)
    np.save(tmp_path / "b.npy", data.astype(">f4"))
    raw, shape = nst_client.read_npy(tmp_path / "b.npy")
    assert shape == (7, 9, 4) and raw == data.tobytes()
    with pytest.raises(ValueError):
        nst_client.write_npy(tmp_path / "c.npy", b"\0" * 12, (2, 2, 1))
    (tmp_path / "d.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        nst_client.read_npy(tmp_path / "d.npy")


def test_environment_is_cleaned_but_keeps_nst_variables():
    env = nst_client.engine_environment({
        "PYTHONPATH": "/gimp/lib", "PYTHONHOME": "/gimp", "GI_TYPELIB_PATH": "x",
        "LD_LIBRARY_PATH": "/gimp/lib", "NST_WEIGHTS": "random", "NST_DATA_DIR": "/d",
        "HOME": "/home/me",
    })
    assert env == {"NST_WEIGHTS": "random", "NST_DATA_DIR": "/d", "HOME": "/home/me",
                   "PYTHONIOENCODING": "utf-8"}


def test_arguments_map_onto_engine_settings():
    settings = nst_client.settings_from_arguments(0.7, 250, 800, True, 42, "cpu")
    assert settings == {"style_strength": 0.7, "iterations": 250, "max_size": 800,
                        "preserve_colors": True, "seed": 42, "device": "cpu"}
    from nst_engine import Settings

    Settings.from_dict(settings)  # the engine accepts exactly these


def test_find_engine_from_config_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv("NST_ENGINE_PYTHON", raising=False)
    with pytest.raises(nst_client.ClientError) as info:
        nst_client.find_engine(tmp_path)
    assert info.value.kind == "not_installed" and "install.sh" in info.value.message
    (tmp_path / "nst-engine.json").write_text(json.dumps({"python": sys.executable}))
    assert nst_client.find_engine(tmp_path) == [sys.executable]
    (tmp_path / "nst-engine.json").write_text(json.dumps(
        {"python": "/host/python", "launcher": ["flatpak-spawn", "--host"]}))
    assert nst_client.find_engine(tmp_path) == ["flatpak-spawn", "--host", "/host/python"]
    monkeypatch.setenv("NST_ENGINE_PYTHON", str(tmp_path / "missing-python"))
    with pytest.raises(nst_client.ClientError, match="does not exist"):
        nst_client.find_engine(tmp_path)


def test_workdir_is_private_and_stale_ones_are_removed(tmp_path):
    stale = tmp_path / f"{nst_client.TEMP_PREFIX}999999999-abc"
    stale.mkdir()
    folder = nst_client.make_workdir(str(tmp_path))
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert not stale.exists() and str(os.getpid()) in os.path.basename(folder)


def test_run_engine_reports_progress_and_result(tmp_path, painting):
    layer = np.random.default_rng(1).random((30, 40, 3), dtype=np.float32)
    nst_client.write_npy(tmp_path / "content.npy", layer.tobytes(), layer.shape)
    settings = nst_client.settings_from_arguments(0.5, 3, 40, False, 0, "cpu")
    request = nst_client.write_request(str(tmp_path), "content.npy", str(painting), settings)
    seen = []
    result = nst_client.run_engine([sys.executable], request, seen.append)
    assert [p.step for p in seen] == [1, 2, 3] and seen[-1].fraction == 1.0
    data, shape = nst_client.read_npy(result)
    assert shape == (30, 40, 3) and len(data) == 30 * 40 * 3 * 4


def test_run_engine_turns_engine_errors_into_messages(tmp_path, painting):
    settings = nst_client.settings_from_arguments(0.5, 3, 40, False, 0, "cpu")
    request = nst_client.write_request(str(tmp_path), "missing.npy", str(painting), settings)
    with pytest.raises(nst_client.ClientError) as info:
        nst_client.run_engine([sys.executable], request)
    assert info.value.kind == "bad_input" and "not found" in info.value.message
    message = nst_client.user_message(info.value)
    assert "style image and the options" in message


def test_engine_crash_without_event(tmp_path):
    request = tmp_path / "request.json"
    request.write_text("{}")
    crash = [sys.executable, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(9)", "--"]
    with pytest.raises(nst_client.ClientError, match="boom"):
        nst_client.run_engine(crash, str(request))


def test_eta_formatting():
    assert nst_client.format_eta(42.4) == "42 s"
    assert nst_client.format_eta(125) == "2 min 05 s"
    assert nst_client.format_eta(3700) == "1 h 01 min"
