"""Errors the engine reports to people and programs.

Each error has a machine-readable ``kind`` (used in the protocol's ``error``
event) and a distinct process exit code, so scripts can tell them apart.
"""

from __future__ import annotations

EXIT_CODES = {
    "internal": 1,
    "bad_input": 2,
    "no_weights": 3,
    "out_of_memory": 4,
    "cancelled": 5,
    "photos_failed": 6,  # batch: every other photo was painted; the failures are listed
}


class EngineError(Exception):
    """A failure with a one-line, human-readable message."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in EXIT_CODES:
            raise ValueError(f"unknown error kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.kind]


def bad_input(message: str) -> EngineError:
    return EngineError("bad_input", message)


def cancelled(why: str = "") -> EngineError:
    """A run that was cancelled, or ended for ``why`` (its client fell silent…)."""
    return EngineError("cancelled", f"{why}; nothing was written" if why
                       else "cancelled; nothing was written")
