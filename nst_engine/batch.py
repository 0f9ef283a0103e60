"""``nst-engine batch``: one look over a whole series of photos.

What a batch is — the photos found, each one's output, the manifest that lets an
interrupted batch go on — and the loop that paints them one after another in this
process (one network and one set of style targets for all) or through the warm
service. ``ray_batch.py`` paints the same plan on a Ray cluster.

Resume rule: OUT_FOLDER's manifest (``.nst-batch.json``) records the look (every
setting that changes the result, and each painting's sha256) and, for every photo
painted, the sha256 of the photo it was painted from. A batch started again with
the same look skips what the manifest says is done; one started with another look
is refused (``--overwrite`` paints everything again), so results never mix. An
output file that the manifest does not know is kept and its photo skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nst_contract.errors import EXIT_CODES, EngineError, bad_input
from nst_contract.knobs import Settings

from . import __version__, relay
from .control import Control
from .files import atomic_path
from .images import OUTPUT_FORMATS, load_picture, save_picture

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
MANIFEST = ".nst-batch.json"
MANIFEST_FORMAT = 1
# Settings that say where and how fast a run goes, not what it looks like.
NOT_THE_LOOK = ("device", "precision", "memory_budget")

Emit = Callable[[dict], None]


@dataclass
class Photo:
    """One photo of the batch and the file its result goes to."""

    index: int  # 1-based, in the batch's order
    source: Path
    output: Path


@dataclass
class Outcome:
    """What became of one photo: ``done``, ``skipped`` or ``failed`` (with why)."""

    photo: Photo
    status: str
    reason: str = ""
    seconds: float = 0.0
    attempts: int = 1


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_photos(inputs: Iterable[Path], out_folder: Path, fmt: str | None) -> list[Photo]:
    """The photos named and those directly in the folders named (sorted by name),
    each with its output ``OUT_FOLDER/<name>.<format>``: ``fmt`` or the photo's own
    (WebP, which the engine does not write, becomes PNG). Refuses a batch where two
    photos would write the same output."""
    sources: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES
                           and not p.name.startswith("."))
            if path.resolve() == out_folder.resolve():
                continue  # results of an earlier batch are not photos to paint
            sources.extend(found)
        elif path.is_file():
            sources.append(path)
        else:
            raise bad_input(f"photo or folder not found: {path}")
    if not sources:
        raise bad_input("no photos to paint: name photos, or folders that hold PNG, JPEG, "
                        "TIFF or WebP files")
    photos, claimed = [], {}
    for index, source in enumerate(sources, 1):
        suffix = "." + fmt if fmt else source.suffix.lower()
        if suffix not in OUTPUT_FORMATS:
            suffix = ".png"
        output = out_folder / (source.stem + suffix)
        if output.name in claimed:
            raise bad_input(f"{claimed[output.name]} and {source} would both be written to "
                            f"{output}; rename one, or paint them in two batches")
        claimed[output.name] = source
        photos.append(Photo(index, source, output))
    return photos


def the_look(settings: Settings, style_paths: list[Path]) -> dict:
    """What decides a result's look: the manifest's key for resuming."""
    values = {key: value for key, value in asdict(settings).items() if key not in NOT_THE_LOOK}
    values = json.loads(json.dumps(values))  # tuples as lists, as read back from JSON
    return {"settings": values, "styles": [sha256_of(path) for path in style_paths]}


class Manifest:
    """``OUT_FOLDER/.nst-batch.json``: the look and the photos done (see the module's
    resume rule). Rewritten atomically after each photo."""

    def __init__(self, folder: Path, look: dict, done: dict[str, str]) -> None:
        self.path, self.look, self.done = folder / MANIFEST, look, done

    @classmethod
    def open(cls, folder: Path, look: dict, overwrite: bool) -> Manifest:
        path = folder / MANIFEST
        if overwrite or not path.is_file():
            return cls(folder, look, {})
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            saved_look, done = saved["look"], dict(saved["done"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise bad_input(f"cannot read the batch manifest {path} ({exc}); remove it, or "
                            "use --overwrite to paint every photo again") from None
        if saved_look != look:
            raise bad_input(f"{folder} holds a batch painted with other settings or "
                            f"paintings ({_difference(saved_look, look)}); choose another "
                            "output folder, or --overwrite to paint every photo again")
        return cls(folder, look, done)

    def is_done(self, photo: Photo, digest: str) -> bool:
        return self.done.get(photo.output.name) == digest and photo.output.is_file()

    def record(self, photo: Photo, digest: str) -> None:
        self.done[photo.output.name] = digest
        text = json.dumps({"format": MANIFEST_FORMAT, "engine_version": __version__,
                           "look": self.look, "done": self.done}, indent=1, sort_keys=True)
        with atomic_path(self.path) as tmp:
            Path(tmp).write_text(text + "\n", encoding="utf-8")


def _difference(saved: dict, now: dict) -> str:
    if saved.get("styles") != now["styles"]:
        return "other paintings"
    old, new = saved.get("settings", {}), now["settings"]
    changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    return ", ".join(f"{key} was {old.get(key)!r}, now {new.get(key)!r}" for key in changed)


@dataclass
class Plan:
    """A checked batch: every photo, which are left to paint, and the manifest."""

    photos: list[Photo]
    todo: list[tuple[Photo, str]]  # with the sha256 of the photo's file
    skipped: list[Outcome]
    manifest: Manifest


def plan_batch(photos: list[Photo], manifest: Manifest, overwrite: bool) -> Plan:
    todo, skipped = [], []
    for photo in photos:
        try:
            digest = sha256_of(photo.source)
        except OSError as exc:
            skipped.append(Outcome(photo, "failed", f"cannot read it: {exc.strerror or exc}"))
            continue
        if manifest.is_done(photo, digest):
            skipped.append(Outcome(photo, "skipped", "done before"))
        elif photo.output.exists() and not overwrite:
            skipped.append(Outcome(photo, "skipped",
                                   f"{photo.output.name} exists (--overwrite paints it again)"))
        else:
            todo.append((photo, digest))
    return Plan(photos, todo, skipped, manifest)


def failure(exc: BaseException) -> str:
    """A photo's failure in one line."""
    if isinstance(exc, EngineError):
        return exc.message
    if isinstance(exc, MemoryError):
        return "out of memory; try a smaller --max-size"
    return f"internal error ({type(exc).__name__}: {exc})"


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
        except Exception as exc:  # one photo's failure, whatever it is, ends only that photo
            if control.cancel.is_set():
                raise
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


def run_batch(inputs: list[Path], style_paths: list[Path], out_folder: Path,
              settings: Settings, *, fmt: str | None, overwrite: bool, ray_address: str | None,
              use_service: bool, progress: str, emit: Emit, control: Control) -> int:
    """The ``batch`` command: plans, paints (here or on Ray), reports; returns the exit
    code (``photos_failed`` when any photo failed). Raises EngineError for a batch
    that cannot start, and ``cancelled`` (saying what was kept) when stopped."""
    started = time.monotonic()
    for path in style_paths:
        if not path.is_file():
            raise bad_input(f"style image not found: {path}")
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
