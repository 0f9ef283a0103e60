"""Protocol 3, the engine's side: one run over a byte stream — stdio, the service's Unix
socket, or SSH.

Framed as ``wire.py`` says (``docs/protocol.md``). The client
sends a ``run`` message with the layer as float32 (``content``), one ``style``
message per style image (the file's bytes, or a layer's float32 ``pixels``), then
at any time ``finish`` or ``cancel``; closing its side cancels. The engine answers
with the events of ``jobs.py``: ``preview`` carries a PNG, ``result`` the float32 array.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nst_contract.errors import EngineError, bad_input
from nst_contract.knobs import Settings
from nst_contract.wire import (
    HEARTBEAT_MISSES,
    MAX_STYLE_BYTES,
    PROTOCOL,
    Channel,
    Emitter,
    layer_bytes,
)

from .control import Control
from .images import load_picture
from .jobs import Job, run_job
from .pictures import Picture, picture_from_array, picture_to_array


def read_job(channel: Channel, folder: Path) -> Job:
    """The ``run`` message and its style images; previews and the result go back as
    frames (the caller's emitter writes them). Every payload is checked by its
    announced size before it is read; a style's name is a label, never a path."""

    def run_limit(message: dict) -> int:
        if message["type"] != "run" or message.get("protocol") != PROTOCOL:
            raise bad_input(f"expected a protocol {PROTOCOL} run message, got "
                            f"{message['type']!r} (protocol {message.get('protocol')!r})")
        return layer_bytes(message.get("content"))

    message, payload = channel.read(limit=run_limit)
    settings_field = message.get("settings", {})
    if not isinstance(settings_field, dict):
        raise bad_input("settings must be an object")
    settings = Settings.from_dict(settings_field)
    heartbeat = message.get("heartbeat_s", 0)
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, (int, float)) \
            or not 0 <= heartbeat <= 60:
        raise bad_input("heartbeat_s must be a number of seconds from 0 to 60")
    channel.heartbeat_s = float(heartbeat)
    content = _array(message.get("content"), payload)
    styles = []
    for index in range(_count(message.get("styles"))):
        style, data = channel.read(limit=_style_limit)
        if "pixels" in style:  # a layer of an image open in GIMP, sent as the content is
            styles.append(_array(style["pixels"], data, "style layer"))
            continue
        if not len(data):  # bytes, or an array when large
            raise bad_input("expected a style message with the image file's bytes")
        path = folder / f"{index}-{style_label(style.get('name'))}"
        try:
            path.write_bytes(data)
        except OSError as exc:  # a full disk, a quota
            raise _no_room(folder.parent, exc) from None
        styles.append(load_picture(path, "style image"))
    start, worked_to = _start(channel, message.get("start"), content)
    interval = message.get("preview_interval_s", 0)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
            or not 0 <= interval < 1e6:
        raise bad_input("preview_interval_s must be a non-negative number of seconds")
    return Job(content, styles, settings, _deliver_array, _deliver_png if interval else None,
               preview_interval_s=float(interval), start=start, worked_to=worked_to)


def _start(channel: Channel, header, content: Picture) -> tuple[Picture | None, int]:
    """The picture a run starts from when the run message announces one (``start``:
    its shape, and ``worked_to``, the working size it was worked out at), sent after
    the styles as a ``start`` message: an earlier result of the same photo."""
    if header is None:
        return None, 0
    worked_to = header.get("worked_to") if isinstance(header, dict) else None
    if isinstance(worked_to, bool) or not isinstance(worked_to, int) or worked_to < 0:
        raise bad_input("start.worked_to must be the working size (px) it was worked at")
    expected = layer_bytes(header)

    def limit(message: dict) -> int:
        if message["type"] != "start":
            raise bad_input(f"expected the start picture, got {message['type']!r}")
        return expected

    _, data = channel.read(limit=limit)
    picture = _array(header, data, "start picture")
    if picture.size != content.size:
        raise bad_input(f"the start picture is {picture.size[0]}×{picture.size[1]}, the "
                        f"layer {content.size[0]}×{content.size[1]}: it must be a result "
                        "of the same layer")
    return picture, worked_to


SCRATCH_PREFIX = "nst-stream-"  # + the engine's pid: the style images of one run


def remove_stale_folders() -> None:
    """Removes the scratch folders of engines that died without removing them (a
    killed service, a one-shot engine ended with the plug-in): each holds a copy of
    a style image."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = folder.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or folder.lstat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)  # alive (or not ours to signal): its folder stays
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


def open_scratch() -> tempfile.TemporaryDirectory:
    """A run's own scratch folder for its style files (named for this engine's pid:
    ``remove_stale_folders``); scratch folders of dead engines are removed first."""
    remove_stale_folders()
    try:
        return tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
    except OSError as exc:
        raise _no_room(Path(tempfile.gettempdir()), exc) from None


def _no_room(folder: Path, exc: OSError) -> EngineError:
    return bad_input(f"no room for the style image in {folder} ({exc.strerror or exc}); "
                     "free some space there or set TMPDIR to a folder with room")


def _style_limit(message: dict) -> int:
    if message["type"] != "style":
        raise bad_input(f"expected a style message, got {message['type']!r}")
    if "pixels" in message:
        return layer_bytes(message["pixels"])
    if message.get("bytes", 0) > MAX_STYLE_BYTES:
        raise bad_input(f"the style image is larger than the {MAX_STYLE_BYTES >> 20} MB "
                        "taken; use a smaller file")
    return MAX_STYLE_BYTES


LABEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                             "0123456789._- ")


def style_label(name) -> str:
    """A style's name as a label for messages and the file it is kept in: letters,
    digits and ``._- `` only, at most 64 of them, never starting with a dot (no
    path, no NUL, no lone surrogate can come of it); "style" when nothing is left."""
    text = "".join(c if c in LABEL_CHARACTERS else "_" for c in str(name or ""))[-64:]
    return text.lstrip(".").strip() or "style"


def _count(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 16:
        raise bad_input("styles must be the number of style messages that follow (1–16)")
    return value


def _array(header, payload: bytes, what: str = "layer") -> Picture:
    if len(payload) != layer_bytes(header):
        raise bad_input(f"the {what}'s bytes do not match its shape")
    shape = header["shape"]
    # A view of the received bytes (a copy only on a big-endian machine).
    data = np.frombuffer(payload, "<f4").reshape(shape).astype(np.float32, copy=False)
    return picture_from_array(data, owned=True, what=what)


def _deliver_array(picture: Picture) -> dict:
    data = np.ascontiguousarray(picture_to_array(picture), dtype="<f4")
    return {"shape": list(data.shape), "dtype": "<f4", "bytes": data.nbytes,
            "_payload": memoryview(data).cast("B")}


def _deliver_png(picture: Picture) -> dict:
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    rgb = np.round(np.clip(picture.rgb, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    return {"format": "png", "bytes": len(data), "_payload": data}


def watch_commands(channel: Channel, control: Control, heartbeat_s: float = 0.0,
                   on_gone: Callable[[], None] | None = None) -> None:
    """``finish``/``cancel`` messages set the control; the client going away cancels
    (or calls ``on_gone``: a one-shot engine also ends itself if one long torch call
    outlasts the grace), and so does its silence for ``HEARTBEAT_MISSES`` heartbeats
    when it promised them (a network that died without closing the connection)."""
    heard = [time.monotonic()]

    def read() -> None:
        try:
            while True:
                message, _ = channel.read()
                heard[0] = time.monotonic()
                if message["type"] == "finish":
                    control.finish.set()
                elif message["type"] == "cancel":
                    control.cancel.set()
                    return
        except Exception:  # EOF, a broken connection, garbage: the client is gone
            pass
        (on_gone or control.cancel.set)()

    def watchdog() -> None:
        checked = time.monotonic()
        while not control.cancel.wait(heartbeat_s):
            now = time.monotonic()
            if now - checked > 2 * heartbeat_s:
                # This process was stopped (a paused or swapped-out engine), not the
                # client: its pings wait unread in the buffer. Silence counts from now.
                heard[0] = max(heard[0], now)
            checked = now
            if now - heard[0] > HEARTBEAT_MISSES * heartbeat_s:
                control.abandon(f"stopped: the engine heard nothing from its client for "
                                f"{HEARTBEAT_MISSES * heartbeat_s:.0f} s (was it paused, "
                                "or the network lost?)")

    threading.Thread(target=read, name="stream-commands", daemon=True).start()
    if heartbeat_s > 0:
        threading.Thread(target=watchdog, name="heartbeat", daemon=True).start()


def serve_one(channel: Channel, emit: Emitter, control: Control,
              on_gone: Callable[[], None] | None = None) -> dict:
    """Reads one run from ``channel`` and runs it, answering through ``emit``;
    returns the ``result`` event. Raises EngineError. (The one-shot engine's way;
    the service reads and runs requests apart, ``service.py``.)"""
    with open_scratch() as folder:
        try:
            job = read_job(channel, Path(folder))
        except EOFError:
            raise bad_input("the client went away before its request was complete") from None
        watch_commands(channel, control, channel.heartbeat_s, on_gone)
        try:
            return run_job(job, emit, control)
        finally:
            control.cancel.set()  # ends the watchdog
