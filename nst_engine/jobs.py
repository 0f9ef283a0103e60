"""A job — what to paint, how, and where the result and previews go — and the one
path every job takes, with its events: ``stylize`` hands results to files, the
stream (``stream.py``, protocol 3) to frames; both print the same events.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nst_contract.knobs import Settings

from . import __version__
from .cache import EngineCache
from .control import Control
from .loop import Iterate
from .pictures import Picture, as_the_layer_will_be
from .tensors import to_array
from .transfer import StyleTransfer

Emit = Callable[[dict], None]
Deliver = Callable[[Picture], dict]  # hands a picture over; returns the event's fields


@dataclass
class Job:
    """One run: what to paint, how, and how the result and previews are handed over
    (a file for ``stylize``, frames for the stream, ``stream.py``)."""

    content: Picture
    styles: Sequence[Picture]
    settings: Settings
    deliver: Deliver
    preview: Deliver | None = None
    preview_interval_s: float = 0.0  # seconds, plus every scale's end; 0: off
    start: Picture | None = None  # an earlier result of this photo to start from …
    worked_to: int = 0  # … and the working size it was worked out at (its scales skipped)


def file_deliverer(output: Path, write: Callable[[Picture, Path], None]) -> Deliver:
    def deliver(picture: Picture) -> dict:
        write(picture, output)
        return {"path": str(output)}

    return deliver


def run_job(job: Job, emit: Emit, control: Control, cache: EngineCache | None = None) -> dict:
    """Plans, emits ``started``, optimises with ``progress``/``preview`` events, hands
    the result over and emits ``result`` (returned). ``cache`` keeps the network and
    style targets for the next run (the service). Raises EngineError."""
    engine = StyleTransfer(job.settings, cache)
    width, height = job.content.size
    scales = engine.plan(width, height, job.worked_to if job.start is not None else 0)
    emit({
        "event": "started", "engine_version": __version__, "device": engine.device.type,
        "precision": engine.network.precision.name, "weights": engine.network.family,
        "width": width, "height": height, "total": sum(s.ticks for s in scales),
        "max_size": engine.max_size,
        "scales": [[s.width, s.height, s.steps, len(s.regions())] for s in scales],
        "detail": scales[-1].refining,
        "engine_pid": os.getpid(), "loaded_network": engine.network.loaded,
    })
    previews = _Previews(job, emit)
    result = engine.stylize(job.content, job.styles,
                            lambda it: (emit(progress_event(it)), previews.offer(it)),
                            control, scales, job.start)
    control.check()
    event = {"event": "result", **job.deliver(result.picture), "steps": result.steps,
             "stopped": result.stopped.value}
    emit(event)
    return event


class _Previews:
    """Hands an 8-bit preview over when one is due and emits ``preview``."""

    def __init__(self, job: Job, emit: Emit) -> None:
        self.job, self.emit = job, emit
        self.last = time.monotonic()
        self.seconds = 0.0  # spent writing previews, reported for the overhead measure

    def due(self, it: Iterate) -> bool:
        job = self.job
        if job.preview is None or job.preview_interval_s <= 0:
            return False
        # The first step at once: a picture as early as can be.
        return (it.step == 1 or it.scale_done
                or time.monotonic() - self.last >= job.preview_interval_s)

    def offer(self, it: Iterate) -> None:
        if not self.due(it):
            return
        start = time.monotonic()
        # The photo's pixels are copied off the device only when its colours are kept.
        keep = self.job.settings.preserve_colors and it.photo is not None
        rgb = as_the_layer_will_be(to_array(it.image), to_array(it.photo) if keep else None,
                                   keep, self.job.content.gray)
        fields = self.job.preview(Picture(rgb, bits=8))
        self.last = time.monotonic()
        self.seconds += self.last - start
        self.emit({"event": "preview", **fields, "step": it.step, "scale": it.scale,
                   "width": it.width, "height": it.height, "detail": it.refining,
                   "write_s": round(self.seconds, 3)})


def progress_event(it: Iterate) -> dict:
    return {
        "event": "progress", "scale": it.scale, "scales": it.scales,
        "width": it.width, "height": it.height, "step": it.step, "total": it.total,
        "fraction": it.step / it.total, "elapsed_s": round(it.elapsed, 3),
        "eta_s": round(it.eta, 3), "loss": it.loss, "detail": it.refining,
        "tile": it.tile, "tiles": it.tiles, "pixels": it.pixels,
        **{f"{name}_loss": value for name, value in it.losses.items()},
    }
