"""The run path and its events, shared by ``stylize`` and the plug-in protocol.

``docs/protocol.md`` specifies the protocol: the plug-in writes the layer as a
float32 ``.npy`` and a JSON request into a private folder and runs
``python -m nst_engine run-request REQUEST``; the engine answers with one JSON
event per line on stdout, reads ``finish``/``cancel`` lines on stdin, and writes
the result atomically. ``nst-engine stylize`` runs the same :func:`run_job` with
image files and prints the same events (``--progress json``).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .control import Control
from .errors import bad_input
from .files import atomic_path
from .images import Picture, load_picture, picture_from_array, picture_to_array, save_picture
from .settings import Settings
from .transfer import Iterate, StyleTransfer, Warm, to_array

PROTOCOL_VERSIONS = (1, 2)  # 2 adds stdin commands, timed previews, result.steps

Emit = Callable[[dict], None]
Deliver = Callable[[Picture], dict]  # hands a picture over; returns the event's fields


@dataclass
class Job:
    """One run: what to paint, how, and how the result and previews are handed over
    (files for ``run-request`` and ``stylize``, frames for the stream, ``stream.py``)."""

    content: Picture
    styles: Sequence[Picture]
    settings: Settings
    deliver: Deliver
    preview: Deliver | None = None
    preview_every: int = 0  # steps; 0: off (protocol 1)
    preview_interval_s: float = 0.0  # seconds, plus every scale's end; 0: off


def file_deliverer(output: Path, write: Callable[[Picture, Path], None]) -> Deliver:
    def deliver(picture: Picture) -> dict:
        write(picture, output)
        return {"path": str(output)}

    return deliver


def run_job(job: Job, emit: Emit, control: Control, warm: Warm | None = None) -> dict:
    """Plans, emits ``started``, optimises with ``progress``/``preview`` events, hands
    the result over and emits ``result`` (returned). ``warm`` keeps the network and
    style targets for the next run (the service). Raises EngineError."""
    engine = StyleTransfer(job.settings, warm)
    width, height = job.content.size
    scales = engine.plan(width, height)
    emit({
        "event": "started", "device": engine.device.type,
        "precision": engine.precision.name, "weights": engine.family,
        "width": width, "height": height, "total": sum(s.ticks for s in scales),
        "max_size": engine.max_size,
        "scales": [[s.width, s.height, s.steps, len(s.regions())] for s in scales],
        "detail": scales[-1].detail,
        "engine_pid": os.getpid(), "loaded_network": engine.loaded_network,
    })
    previews = _Previews(job, emit)
    result = engine.stylize(job.content, job.styles,
                            lambda it: (emit(progress_event(it)), previews.offer(it)),
                            control, scales)
    control.check()
    event = {"event": "result", **job.deliver(result.picture), "steps": result.steps,
             "stopped": result.stopped}
    emit(event)
    return event


class _Previews:
    """Writes an 8-bit preview PNG (atomically) when one is due and emits ``preview``."""

    def __init__(self, job: Job, emit: Emit) -> None:
        self.job, self.emit = job, emit
        self.last = time.monotonic()
        self.seconds = 0.0  # spent writing previews, reported for the overhead measure

    def due(self, it: Iterate) -> bool:
        job = self.job
        if job.preview is None:
            return False
        if job.preview_every and it.step % job.preview_every == 0 and it.step < it.total:
            return True
        if job.preview_interval_s > 0:  # the first step at once: a picture as early as can be
            return (it.step == 1 or it.scale_done
                    or time.monotonic() - self.last >= job.preview_interval_s)
        return False

    def offer(self, it: Iterate) -> None:
        if not self.due(it):
            return
        start = time.monotonic()
        fields = self.job.preview(Picture(to_array(it.image), bits=8))
        self.last = time.monotonic()
        self.seconds += self.last - start
        self.emit({"event": "preview", **fields, "step": it.step, "scale": it.scale,
                   "width": it.width, "height": it.height, "detail": it.detail,
                   "write_s": round(self.seconds, 3)})


def progress_event(it: Iterate) -> dict:
    return {
        "event": "progress", "scale": it.scale, "scales": it.scales,
        "width": it.width, "height": it.height, "step": it.step, "total": it.total,
        "fraction": it.step / it.total, "elapsed_s": round(it.elapsed, 3),
        "eta_s": round(it.eta, 3), "loss": it.loss, "detail": it.detail,
        "tile": it.tile, "tiles": it.tiles, "pixels": it.pixels,
        **{f"{name}_loss": value for name, value in it.losses.items()},
    }


def watch_stdin(control: Control, on_eof: Callable[[], None]) -> None:
    """Reads command lines on stdin: ``finish`` keeps the image as it is now,
    ``cancel`` cancels, and EOF (the parent closed the pipe or died) calls ``on_eof``.

    Only a pipe is watched: a terminal or /dev/null would cancel at once.
    """
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        return
    if not stat.S_ISFIFO(mode):
        return

    def read_commands() -> None:
        pending = b""
        try:  # raw reads: a buffered reader's lock would block interpreter shutdown
            while chunk := os.read(fd, 4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    command = line.strip()
                    if command == b"finish":
                        control.finish.set()
                    elif command == b"cancel":
                        control.cancel.set()
        except OSError:
            pass
        on_eof()

    threading.Thread(target=read_commands, name="stdin-commands", daemon=True).start()


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
    if request.get("protocol") not in PROTOCOL_VERSIONS:
        raise bad_input(
            f"protocol version {request.get('protocol')!r} is not supported "
            f"(this engine speaks {', '.join(map(str, PROTOCOL_VERSIONS))}); "
            "reinstall the plug-in and engine together"
        )
    return request


def _load_content(path: Path) -> Picture:
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise bad_input(f"content array not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise bad_input(f"content array {path.name} is unreadable: {exc}") from None
    except MemoryError:
        raise bad_input(f"content array {path.name} claims a size that does not fit in "
                        "memory") from None
    return picture_from_array(data, owned=True)  # np.load made it: ours to clip in place


def _write_array(picture: Picture, output: Path) -> None:
    data = picture_to_array(picture)

    def verify(path: str) -> None:
        written = np.load(path, mmap_mode="r", allow_pickle=False)
        if written.shape != data.shape or os.path.getsize(path) < data.nbytes:
            raise OSError("the result array is incomplete; is the disk full?")

    try:
        with atomic_path(output, verify) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, data, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise bad_input(f"cannot write the result {output}: {exc}") from None


def job_from_request(request_path: Path) -> Job:
    """Reads and checks a plug-in request (docs/protocol.md)."""
    request_path = Path(request_path)
    request = read_request(request_path)
    base = request_path.parent
    settings_field = request.get("settings", {})
    if not isinstance(settings_field, dict):
        raise bad_input("request field settings must be an object")
    settings = Settings.from_dict(settings_field)
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
    if not os.access(output.parent, os.W_OK):
        raise bad_input(f"cannot write into the output folder {output.parent}")
    preview_every = request.get("preview_every", 0)
    if not isinstance(preview_every, int) or isinstance(preview_every, bool) \
            or preview_every < 0:
        raise bad_input("preview_every must be a non-negative integer")
    interval = request.get("preview_interval_s", 0)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) \
            or not 0 <= interval < 1e6:
        raise bad_input("preview_interval_s must be a non-negative number of seconds")
    preview = None
    if preview_every or interval:
        preview = file_deliverer(output.with_name("preview.png"), _write_preview)
    return Job(content, styles, settings, file_deliverer(output, _write_array), preview,
               preview_every, float(interval))


def _write_preview(picture: Picture, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_picture(picture, tmp)
