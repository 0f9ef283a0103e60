"""How another thread stops a run: *cancel* drops everything, *finish* keeps the image
as it is after the current step. Standard library only: the command line holds one
before it knows whether torch is needed at all (a warm service may run the job)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from nst_contract.errors import cancelled


@dataclass
class Control:
    """Set from another thread: ``cancel`` ends with nothing, ``finish`` keeps the
    image as it is after the current step. ``why`` says what ended a run that
    nobody cancelled (its client fell silent, stopped reading): the message then
    says that, not "cancelled"."""

    cancel: threading.Event = field(default_factory=threading.Event)
    finish: threading.Event = field(default_factory=threading.Event)
    why: str = ""

    def abandon(self, why: str) -> None:
        """Ends the run for a reason other than a request to cancel it."""
        if not self.cancel.is_set():
            self.why = why
            self.cancel.set()

    def check(self) -> None:
        if self.cancel.is_set():
            raise cancelled(self.why)
