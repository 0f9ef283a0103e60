"""Stopping on SIGINT/SIGTERM from the first instant, even inside a long torch call.

Python runs signal handlers in the main thread between bytecodes, so a signal that
arrives during one long torch operation (a big VGG pass) or while torch is being
imported would wait for it. :func:`install`, called before anything heavy is
imported, blocks both signals in the main thread (and so in every thread started
later, torch's own included) and waits for them in a thread of its own. The first
signal asks the run to cancel (:func:`request`); if it has not ended
``GRACE_S`` later, or the signal came before the run could be asked, the process
ends at once through the registered ``abort`` (an ``error`` event, a message, no
half-written file) with exit code 5. A second signal ends it at once.
Standard library only: it is imported before torch.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 1.5
CANCELLED_EXIT = 5

_state: dict = {"cancel": None, "abort": None, "requested": False}
_lock = threading.Lock()


def install() -> None:
    if not hasattr(signal, "pthread_sigmask"):  # Windows: plain handlers, as before
        for signum in SIGNALS:
            signal.signal(signum, lambda *_: request())
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

    def wait() -> None:
        while True:
            signal.sigwait(SIGNALS)
            request()

    threading.Thread(target=wait, name="signals", daemon=True).start()


def register(cancel: Callable[[], None], abort: Callable[[], None]) -> None:
    """``cancel`` asks the run to stop; ``abort`` ends the process (it must not return)."""
    _state.update(cancel=cancel, abort=abort)


def request() -> None:
    """Cancels the run; aborts ``GRACE_S`` later if it is still going, at once if asked
    twice or before a run could be asked."""
    with _lock:
        again, _state["requested"] = _state["requested"], True
    cancel = _state["cancel"]
    if again or cancel is None:
        abort()
        return
    cancel()
    timer = threading.Timer(GRACE_S, abort)
    timer.daemon = True
    timer.start()


def abort() -> None:
    """Reports the cancellation (through the registered ``abort``, or by hand before
    the command line was read) and ends the process."""
    try:
        if _state["abort"] is not None:
            _state["abort"]()
        else:
            sys.stderr.write("nst-engine: error: cancelled; nothing was written\n")
            if sys.argv[1:2] in (["run-request"], ["stream"], ["connect"]):
                sys.stdout.write('{"event":"error","kind":"cancelled",'
                                 '"message":"cancelled; nothing was written"}\n')
    except (OSError, ValueError):
        pass  # nobody reads any more: ending is all that is left
    _flush_and_exit()


def _flush_and_exit() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(CANCELLED_EXIT)
