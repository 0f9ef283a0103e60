"""Stopping on SIGINT/SIGTERM from the first instant, even inside a long torch call.

Python runs signal handlers in the main thread between bytecodes, so a signal that
arrives during one long torch operation (a big VGG pass) or while torch is being
imported would wait for it. :func:`install`, called before anything else is
imported, blocks both signals in the main thread (and so in every thread started
later, torch's own included); they wait, pending, until the command knows how to
stop and calls :func:`listen`, which takes them in a thread of its own. The first
signal asks the run to cancel; if it has not ended ``GRACE_S`` later, the process
ends at once through ``abort`` (the command's last words: an ``error`` event, a
message, no half-written file). A second signal ends it at once.
Standard library only: it is imported before torch.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from nst_contract.errors import EXIT_CODES

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 1.5  # for the current torch operation to end and the run to say "cancelled"

_state: dict = {"cancel": None, "abort": None, "requested": False}
_lock = threading.Lock()


def install() -> None:
    """Holds SIGINT and SIGTERM back (pending) until :func:`listen`."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def listen(cancel: Callable[[], None], abort: Callable[[], None]) -> None:
    """From now on a signal calls ``cancel`` (asks the run to stop), and ``abort``
    (says the last words; the process then ends) if the run goes on past
    ``GRACE_S`` or a second signal comes. A signal that came before is taken now;
    a later call changes what is called."""
    with _lock:
        started = _state["cancel"] is not None
        _state.update(cancel=cancel, abort=abort)
    if started:  # a later stage of the same command (connect running one-shot)
        return
    if not hasattr(signal, "pthread_sigmask"):  # Windows: plain handlers
        for signum in SIGNALS:
            signal.signal(signum, lambda *_: request())
        return

    def wait() -> None:
        while True:
            signal.sigwait(SIGNALS)
            request()

    threading.Thread(target=wait, name="signals", daemon=True).start()


def request() -> None:
    """Cancels the run; aborts ``GRACE_S`` later if it is still going, at once if asked
    twice."""
    with _lock:
        again, _state["requested"] = _state["requested"], True
    if again:
        abort()
        return
    _state["cancel"]()
    timer = threading.Timer(GRACE_S, abort)
    timer.daemon = True
    timer.start()


def abort() -> None:
    """Says the command's last words (its registered ``abort``) and ends the process
    with the exit code of a cancellation."""
    try:
        _state["abort"]()
    except (OSError, ValueError):
        pass  # nobody reads any more: ending is all that is left
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(EXIT_CODES["cancelled"])
