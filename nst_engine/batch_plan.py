"""What a batch is (``nst-engine batch``): the photos found, each one's output, the
manifest that lets an interrupted batch go on, and what became of each photo. Painting
them is ``batch.py``'s (on this machine) or ``ray_batch.py``'s (on a Ray cluster).

Resume rule: OUT_FOLDER's manifest (``.nst-batch.json``) records the look (every
setting that changes the result, and each painting's sha256) and, for every photo
painted, the sha256 of the photo it was painted from. A batch started again with
the same look skips what the manifest says is done; one started with another look
is refused (``--overwrite`` paints everything again), so results never mix. An
output file that the manifest does not know is kept and its photo skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nst_contract.errors import EngineError, bad_input
from nst_contract.knobs import Settings

from . import __version__
from .files import atomic_path, sha256_of
from .images import OUTPUT_FORMATS

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
MANIFEST = ".nst-batch.json"
MANIFEST_FORMAT = 1
# Settings that say where and how fast a run goes, not what it looks like.
NOT_THE_LOOK = ("device", "precision", "memory_budget")


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
        try:
            with atomic_path(self.path) as tmp:
                Path(tmp).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:  # a full disk: the batch cannot go on
            raise bad_input(f"cannot write the batch manifest {self.path}: "
                            f"{exc.strerror or exc}") from None


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


