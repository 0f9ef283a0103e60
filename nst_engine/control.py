"""How another thread stops a run: *cancel* drops everything, *finish* keeps the image
as it is after the current step. Standard library only: the command line holds one
before it knows whether torch is needed at all (a warm service may run the job)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .errors import cancelled


@dataclass
class Control:
    """Set from another thread: ``cancel`` ends with nothing, ``finish`` keeps the
    image as it is after the current step."""

    cancel: threading.Event = field(default_factory=threading.Event)
    finish: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.cancel.is_set():
            raise cancelled()
