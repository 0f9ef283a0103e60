"""The engine side of the plug-in protocol (specified in ``docs/protocol.md``).

The plug-in writes the layer as a float32 ``.npy`` and a JSON request into a
private folder, then runs ``python -m nst_engine run-request REQUEST``. The engine
answers with one JSON object per line on stdout and writes the result array
atomically. Closing its stdin or SIGTERM cancels it.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import EngineError, bad_input
from .files import atomic_path
from .images import Picture, load_picture, picture_from_array, picture_to_array, save_picture
from .transfer import Progress, Settings, StyleTransfer, to_array

PROTOCOL_VERSION = 1
PARENT_GONE_GRACE_S = 10.0

Emit = Callable[[dict], None]


def stdout_emitter(stream=None) -> Emit:
    stream = stream or sys.stdout

    def emit(event: dict) -> None:
        stream.write(json.dumps(event, separators=(",", ":")) + "\n")
        stream.flush()

    return emit


def watch_stdin(cancel: threading.Event, exit_code: int) -> None:
    """Cancels when stdin reaches EOF (the parent closed it or died).

    Only a pipe is watched: a terminal or /dev/null would cancel at once. If the
    run has not ended a grace period later, the process exits on its own.
    """
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        return
    if not stat.S_ISFIFO(mode):
        return

    def wait_for_eof() -> None:
        try:  # raw reads: a buffered reader's lock would block interpreter shutdown
            while os.read(fd, 65536):
                pass
        except OSError:
            pass
        cancel.set()
        threading.Timer(PARENT_GONE_GRACE_S, os._exit, args=(exit_code,)).start()

    threading.Thread(target=wait_for_eof, name="stdin-watch", daemon=True).start()


def _resolve(base: Path, value: object, what: str) -> Path:
    if not isinstance(value, str) or not value:
        raise bad_input(f"request field {what} must be a non-empty path string")
    path = Path(value)
    return path if path.is_absolute() else base / path


def read_request(path: Path) -> dict:
    try:
        request = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise bad_input(f"request file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_input(f"request {path} is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise bad_input("the request must be a JSON object")
    if request.get("protocol") != PROTOCOL_VERSION:
        raise bad_input(
            f"protocol version {request.get('protocol')!r} is not supported "
            f"(this engine speaks {PROTOCOL_VERSION}); reinstall the plug-in and engine together"
        )
    return request


def _load_content(path: Path) -> Picture:
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise bad_input(f"content array not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise bad_input(f"content array {path.name} is unreadable: {exc}") from None
    return picture_from_array(data)


def run_request(request_path: Path, emit: Emit, cancel: threading.Event) -> Path:
    """Runs one request, emitting events; returns the output path. Raises EngineError."""
    request_path = Path(request_path)
    request = read_request(request_path)
    base = request_path.parent
    content = _load_content(_resolve(base, request.get("content"), "content"))
    styles_field = request.get("styles")
    if not isinstance(styles_field, list) or not styles_field:
        raise bad_input("request field styles must be a non-empty list of image paths")
    styles = [
        load_picture(_resolve(base, p, "styles[]"), "style image") for p in styles_field
    ]
    output = _resolve(base, request.get("output"), "output")
    if output.suffix != ".npy" or not output.parent.is_dir():
        raise bad_input(f"output must be a .npy path in an existing folder: {output}")
    preview_every = request.get("preview_every", 0)
    if not isinstance(preview_every, int) or preview_every < 0:
        raise bad_input("preview_every must be a non-negative integer")
    settings_field = request.get("settings", {})
    if not isinstance(settings_field, dict):
        raise bad_input("request field settings must be an object")

    engine = StyleTransfer(Settings.from_dict(settings_field))
    width, height = content.size
    scales = engine.plan(width, height)
    emit({
        "event": "started", "device": engine.device.type, "weights": engine.family,
        "width": width, "height": height, "total": sum(s.ticks for s in scales),
        "scales": [[s.width, s.height, s.steps, len(s.regions())] for s in scales],
    })
    preview_path = output.with_name("preview.png")

    def on_progress(p: Progress) -> None:
        emit(progress_event(p))
        if preview_every and p.step % preview_every == 0 and p.step < p.total:
            save_picture(Picture(to_array(p.image), bits=8), preview_path)
            emit({"event": "preview", "path": str(preview_path), "step": p.step})

    result = engine.stylize(content, styles, on_progress, cancel)
    with atomic_path(output) as tmp, open(tmp, "wb") as handle:
        np.save(handle, picture_to_array(result), allow_pickle=False)
    emit({"event": "result", "path": str(output)})
    return output


def progress_event(p: Progress) -> dict:
    return {
        "event": "progress", "scale": p.scale, "scales": p.scales,
        "width": p.width, "height": p.height, "step": p.step, "total": p.total,
        "fraction": p.step / p.total, "elapsed_s": round(p.elapsed, 3),
        "eta_s": round(p.eta, 3), "loss": p.loss,
        **{f"{name}_loss": value for name, value in p.losses.items()},
    }


def error_event(error: EngineError) -> dict:
    return {"event": "error", "kind": error.kind, "message": error.message}
