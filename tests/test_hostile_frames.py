"""Hostile frames and files are ``bad_input`` before any allocation: announced sizes
checked against the shape and the documented ceilings, JSON nesting bounded, a
style's name taken as a label (never a path), one pixel ceiling for every decoder;
a full temporary folder is a message, and no copy of a style image outlives its
engine. Driven through ``nst_engine stream`` (the protocol as the service and SSH
run it) and the command line."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
from PIL import Image
from streaming import EngineProcess, layer, line, run_message

from nst_contract.errors import EXIT_CODES
from nst_contract.wire import MAX_LAYER_PIXELS, MAX_STYLE_BYTES
from nst_engine.stream import style_label


def stream(data: bytes, timeout=120, env=None) -> tuple[list[dict], float, int]:
    """Sends ``data`` to a one-shot ``nst_engine stream`` and keeps its stdin open (a
    closed one cancels) until the last event; the events, the seconds it took and the
    exit code. The last event must be ``error`` or ``result``."""
    began = time.monotonic()
    engine = EngineProcess(env=env)
    engine.send(data)
    _, code = engine.finish(timeout)
    return engine.events, time.monotonic() - began, code


def refused(data: bytes, words: str) -> None:
    events, seconds, code = stream(data)
    assert events[-1]["kind"] == "bad_input", events[-1]
    assert words in events[-1]["message"]
    assert code == EXIT_CODES["bad_input"] and seconds < 60


def test_an_absurd_announced_size_is_refused_before_it_is_read():
    refused(run_message(nbytes=10**15), "at most 20,736 are taken")  # none of it was sent


def test_a_layer_over_the_ceiling_is_refused_by_its_shape():
    shape = (100_000, 100_000, 3)
    assert shape[0] * shape[1] > MAX_LAYER_PIXELS
    refused(run_message(shape), "larger than the")


def test_a_message_nested_ten_thousand_deep_is_bad_input():
    nested = b'{"type": "run", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}\n"
    refused(nested, "nests too deeply")


def test_a_style_over_its_ceiling_is_refused_by_its_announced_size(painting):
    message = run_message() + layer() + line(
        {"type": "style", "name": "big.tif", "bytes": MAX_STYLE_BYTES + (8 << 20)})
    refused(message, "larger than the 512 MB")  # at once: its bytes were never sent


@pytest.mark.parametrize("name, label", [
    ("a\x00b.png", "a_b.png"), ("\udcff.png", "_.png"), ("..", "style"),
    ("../../x.png", "_.._x.png"), ("/etc/passwd", "_etc_passwd"), (".hidden", "hidden"),
    ("x" * 254 + ".png", "x" * 60 + ".png"), ("", "style"), (None, "style"), (7, "7"),
    ("Mosaic (1910).jpg", "Mosaic _1910_.jpg")])
def test_style_label(name, label):
    assert style_label(name) == label


@pytest.mark.parametrize("name", ["a\x00b.png", "\udcff.png", "../../x.png", None])
def test_a_style_name_is_a_label_never_a_path(painting, tmp_path, name):
    style = painting.read_bytes()
    header = {"type": "style", "bytes": len(style)}
    if name is not None:
        header["name"] = name
    data = run_message() + layer() + json.dumps(header).encode() + b"\n" + style
    events, _, code = stream(data)
    assert events[-1]["event"] == "result" and code == 0, events[-1]
    assert not (tmp_path.parent / "x.png").exists()


def bomb_tiff(path) -> None:
    """A 16-bit TIFF of 9500×9500 (90 MP, over Pillow's 89.5 MP limit), deflated."""
    tifffile.imwrite(path, np.zeros((9500, 9500), np.uint16), compression="zlib")


def test_one_pixel_ceiling_for_every_decoder(tmp_path, photo):
    big = tmp_path / "big.tif"
    bomb_tiff(big)
    assert big.stat().st_size < 2 << 20
    done = subprocess.run(
        [sys.executable, "-m", "nst_engine", "stylize", str(photo), str(big), "-o",
         str(tmp_path / "out.png"), "--max-size", "32", "--iterations", "2"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_CODES["bad_input"], done.stderr
    assert "safety limit" in done.stderr and "big.tif" in done.stderr
    png = tmp_path / "big.png"  # the same ceiling through Pillow (8-bit PNG)
    Image.new("L", (9500, 9500)).save(png)
    body = png.read_bytes()
    data = run_message() + layer() + line({"type": "style", "name": "big.png",
                                           "bytes": len(body)}) + body
    events, _, _ = stream(data)
    assert events[-1]["kind"] == "bad_input" and "safety limit" in events[-1]["message"]
    tiff = big.read_bytes()
    data = run_message() + layer() + line({"type": "style", "name": "big.tif",
                                           "bytes": len(tiff)}) + tiff
    events, _, _ = stream(data)
    assert events[-1]["kind"] == "bad_input" and "safety limit" in events[-1]["message"]


def style_run(painting) -> bytes:
    body = painting.read_bytes()
    return run_message() + layer() + line({"type": "style", "name": "p.png",
                                           "bytes": len(body)}) + body


def test_a_nearly_full_temporary_folder_is_a_clear_message(tmp_path):
    """Room for Python's own probe of TMPDIR (a full one it would pass over for /tmp),
    none for the style image."""
    from test_failures import fill, tiny_disk

    style = tmp_path / "noise.png"
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(style)
    with tiny_disk(tmp_path, "1m") as disk:
        fill(disk, 16 * 1024)
        events, _, code = stream(style_run(style), env={**os.environ, "TMPDIR": str(disk)})
    assert events[-1]["kind"] == "bad_input" and code == EXIT_CODES["bad_input"]
    assert "no room for the style image" in events[-1]["message"]
    assert "TMPDIR" in events[-1]["message"]


def test_scratch_folders_of_dead_engines_are_removed(painting, tmp_path):
    """A killed service or one-shot engine leaves a copy of a style image behind; the
    next engine removes it (a live engine's folder stays)."""
    dead = tmp_path / "nst-stream-999999999-abcd"  # no such process
    live = tmp_path / f"nst-stream-{os.getpid()}-abcd"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "0-painting.png").write_bytes(painting.read_bytes())
    events, _, _ = stream(style_run(painting), env={**os.environ, "TMPDIR": str(tmp_path)})
    assert events[-1]["event"] == "result"
    assert not dead.exists() and live.exists()
    assert sorted(tmp_path.glob("nst-stream-*")) == [live]  # its own went with its run
