"""The paintings used last, newest first, kept across GIMP restarts (``nst-recent.json``
beside the plug-in, which install.sh keeps on a reinstall): the dialog offers them as
thumbnails. Standard library only."""

from __future__ import annotations

import json
import os
from pathlib import Path

KEPT = 8


def recent_paintings(path: str | os.PathLike) -> list[str]:
    """The paintings' paths, newest first: those that still exist. A missing or
    damaged list is an empty one (it is written anew after the next run)."""
    try:
        paths = json.loads(Path(path).read_text(encoding="utf-8"))["paintings"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not isinstance(paths, list):
        return []
    return [p for p in paths if isinstance(p, str) and os.path.isfile(p)][:KEPT]


def remember_painting(path: str | os.PathLike, painting: str) -> None:
    """Puts ``painting`` first (once), keeping the newest ``KEPT``; the file is replaced
    whole, never half-written; quiet on failure (a read-only plug-in folder)."""
    painting = os.path.abspath(painting)
    paths = [painting] + [p for p in recent_paintings(path) if p != painting]
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"paintings": paths[:KEPT]}, handle, indent=1)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
