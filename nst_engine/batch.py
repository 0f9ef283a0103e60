"""``nst-engine batch``: one look over a whole series of photos — the plan
(``batch_plan.py``), painted here, one photo after another with one network and one
set of style targets for all (or through the warm service), or on a Ray cluster
(``ray_batch.py``); what the batch shows while it runs; the summary and exit code.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from nst_contract.errors import EXIT_CODES, EngineError, bad_input
from nst_contract.knobs import Settings

from . import relay
from .batch_plan import Manifest, Outcome, Plan, Summary, failure, find_photos, plan_batch, the_look
from .control import Control
from .images import load_picture, save_picture

Emit = Callable[[dict], None]


def run_batch(inputs: list[Path], style_paths: list[Path], out_folder: Path,
              settings: Settings, *, fmt: str | None, overwrite: bool, ray_address: str | None,
              use_service: bool, progress: str, emit: Emit, control: Control) -> int:
    """The ``batch`` command: plans, paints (here or on Ray), reports; returns the exit
    code (``photos_failed`` when any photo failed). Raises EngineError for a batch
    that cannot start, and ``cancelled`` (saying what was kept) when stopped."""
    started = time.monotonic()
    for path in style_paths:
        if path.is_dir():  # --style takes every name after it, up to the next option
            raise bad_input(f"--style {path} is a folder: name the photos before --style, "
                            "or after an option that follows it")
        if not path.is_file():
            raise bad_input(f"style image not found: {path}")
    if settings.style_blend is not None and len(settings.style_blend) != len(style_paths):
        raise bad_input(f"{len(settings.style_blend)} blend weights given for "
                        f"{len(style_paths)} style images")
    if out_folder.exists() and not out_folder.is_dir():
        raise bad_input(f"output folder is a file: {out_folder}")
    photos = find_photos(inputs, out_folder, fmt)
    try:
        out_folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise bad_input(f"cannot create the output folder {out_folder}: {exc.strerror}") from None
    if not os.access(out_folder, os.W_OK):
        raise bad_input(f"output folder is not writable: {out_folder}")
    manifest = Manifest.open(out_folder, the_look(settings, style_paths), overwrite)
    plan = plan_batch(photos, manifest, overwrite)
    report = Report(progress, emit, plan)
    summary = Summary(list(plan.skipped))
    if ray_address is not None:
        from .ray_batch import paint_on_ray

        outcomes = paint_on_ray(plan, settings, style_paths, ray_address, report.event,
                                control)
    else:
        outcomes = paint_here(plan, settings, style_paths, report.event, control, use_service)
    report.begin(f"on the Ray cluster at {ray_address}" if ray_address is not None
                 else "on this machine")
    try:
        for outcome in outcomes:
            summary.outcomes.append(outcome)
            report.outcome(outcome)
    except EngineError as error:
        if error.kind != "cancelled":
            raise
        summary.seconds = time.monotonic() - started
        report.end(summary)
        raise EngineError("cancelled", f"cancelled; {summary.count('done')} photos painted "
                          "are kept: the same command goes on where this batch stopped") \
            from None
    summary.seconds = time.monotonic() - started
    report.end(summary)
    return EXIT_CODES["photos_failed"] if summary.count("failed") else 0


def paint_here(plan: Plan, settings: Settings, style_paths: list[Path], emit: Emit,
               control: Control, use_service: bool) -> Iterator[Outcome]:
    """Paints the plan's photos one after another: through the warm service when one
    runs, else in this process with one network and one set of style targets."""
    styles = [load_picture(path, "style image") for path in style_paths]
    cache = None
    for photo, digest in plan.todo:
        control.check()
        start = time.monotonic()

        def tagged(event: dict, photo=photo) -> None:
            emit({**event, "photo": photo.index})

        try:
            content = load_picture(photo.source, "photo")
            service = relay.running() if use_service else None
            if service is None:
                from .cache import EngineCache
                from .jobs import Job, file_deliverer, run_job  # torch from here on

                cache = cache or EngineCache()
                job = Job(content, styles, settings, file_deliverer(photo.output, save_picture))
                run_job(job, tagged, control, cache)
            else:
                from .client import request_over

                values = {key: value for key, value in asdict(settings).items()
                          if value is not None}
                with service.sock:
                    _, picture = request_over(service, values, content, style_paths, tagged,
                                              control)
                save_picture(picture, photo.output)
        except Exception as exc:  # one photo's failure ends only that photo …
            if control.cancel.is_set() or getattr(exc, "kind", "") == "no_weights":
                raise  # … but not the batch's own (no network: no photo can be painted)
            if os.environ.get("NST_DEBUG") and not isinstance(exc, EngineError):
                raise
            yield Outcome(photo, "failed", failure(exc), time.monotonic() - start)
            continue
        plan.manifest.record(photo, digest)
        yield Outcome(photo, "done", seconds=time.monotonic() - start)


class Report:
    """What a batch shows: a tqdm bar (photo i of n, the overall ETA, the current
    photo's step) and one line per failure; or, for programs, JSON events: ``batch``,
    the engine's ``started`` and ``progress`` tagged with ``photo`` (its index),
    ``retry`` (Ray), ``photo`` (each photo's outcome), ``summary``."""

    def __init__(self, mode: str, emit: Emit, plan: Plan) -> None:
        self.mode, self.emit, self.plan = mode, emit, plan
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=len(plan.todo), unit="photo", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} photos "
                            "[{elapsed}<{remaining}{postfix}]")

    def begin(self, where: str) -> None:
        plan = self.plan
        if self.mode == "json":
            self.emit({"event": "batch", "photos": len(plan.photos), "to_paint": len(plan.todo),
                       "where": where})
        else:
            self._say(f"{len(plan.photos)} photos, {len(plan.todo)} to paint ({where})")
        skipped = [o for o in plan.skipped if o.status == "skipped"]
        if skipped and self.mode != "json":
            self._say(f"skipping {len(skipped)}: "
                      + "; ".join(f"{o.photo.source.name} ({o.reason})" for o in skipped[:3])
                      + (" …" if len(skipped) > 3 else ""))
        for outcome in plan.skipped:  # the bar counts the photos to paint
            self.outcome(outcome, quiet=True)

    def event(self, event: dict) -> None:
        """The current photo's engine events. Its ``result`` is not passed on: the
        ``photo`` event says how each photo ended (and an emitter's ``result`` is its
        last word)."""
        if self.mode == "json":
            if event["event"] != "result":
                self.emit(event)
        elif self.bar is not None and event["event"] == "progress":
            name = self.plan.photos[event["photo"] - 1].source.name
            self.bar.set_postfix_str(f"{name}: step {event['step']}/{event['total']}",
                                     refresh=True)

    def outcome(self, outcome: Outcome, quiet: bool = False) -> None:
        photo = outcome.photo
        if self.mode == "json":
            self.emit({"event": "photo", "photo": photo.index, "source": str(photo.source),
                       "output": str(photo.output), "status": outcome.status,
                       "reason": outcome.reason, "seconds": round(outcome.seconds, 3),
                       "attempts": outcome.attempts})
            return
        if outcome.status == "failed":
            self._say(f"failed: {photo.source}: {outcome.reason}")
        if self.bar is not None and not quiet:
            self.bar.update(1)

    def end(self, summary: Summary) -> None:
        if self.bar is not None:
            self.bar.close()
        done, skipped, failed = (summary.count(s) for s in ("done", "skipped", "failed"))
        if self.mode == "json":
            self.emit({"event": "summary", "done": done, "skipped": skipped, "failed": failed,
                       "seconds": round(summary.seconds, 3)})
            return
        minutes, seconds = divmod(int(round(summary.seconds)), 60)
        self._say(f"batch: {done} painted, {skipped} skipped, {failed} failed, "
                  f"{minutes} min {seconds:02d} s")

    def _say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)
