"""The warm engine: ``nst-engine serve`` keeps torch, the device and the network loaded
and runs protocol-3 requests (``stream.py``) one at a time from a Unix socket that
clients reach through ``relay.py``.

The socket lives in a private folder (0700) of the user's runtime directory, and
the service serves only connections whose peer is the same user (SO_PEERCRED).
Nothing listens on TCP. No client can hold the others up: each connection is
greeted and read by a thread of its own, within a deadline, and only a whole
request joins the queue; a client that stops reading its events is dropped; the
connections are bounded (``connections.py``; docs/protocol.md, "Deadlines").
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nst_contract.errors import EngineError, bad_input
from nst_contract.wire import Channel, Emitter, error_event

from .connections import (
    MAX_CONNECTIONS,
    REQUEST_S,
    SLOWEST_RATE,
    WRITE_STALL_S,
    ClientWriter,
    Connections,
    greet,
    hang_up,
    peer_uid,
    refuse,
    within_deadline,
)
from .control import Control
from .relay import LOG_LIMIT, Stopped, in_the_way, reach, runtime_dir, socket_path

if TYPE_CHECKING:
    from .jobs import Job

UNLINK_GRACE_S = 0.3  # after unlinking an idle socket: for clients already in the backlog
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_RETRY_S = 0.1
FIRST_WAIT_S = 10.0  # the client that started the service is on its way

log = logging.getLogger("nst_engine.service")


@dataclass
class Ticket:
    """A whole request, read and checked, waiting for its turn."""

    conn: socket.socket
    emit: Emitter
    control: Control
    job: Job
    scratch: tempfile.TemporaryDirectory  # the request's style files

    def close(self) -> None:
        self.emit.close()
        self.control.cancel.set()  # ends the command watcher's heartbeat check
        try:  # wakes this connection's command reader
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()
        self.scratch.cleanup()


def serve(idle_s: float) -> int:
    """Serves requests until ``idle_s`` seconds pass without one. Imports torch."""
    from .cache import EngineCache

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s nst-engine service: %(message)s")
    try:
        folder = runtime_dir()
    except OSError as exc:
        raise bad_input(f"no private runtime folder for the service: {exc}") from None
    path = socket_path(folder)
    if in_the_way(path):
        raise bad_input(f"{path} is in the way of the service's socket (it is not a "
                        "socket); remove it")
    listener = _listen(path)
    if listener is None:
        log.info("a service is already running")
        return 0
    inode = os.stat(path).st_ino
    waiting: queue.Queue[Ticket] = queue.Queue()
    slots = Connections()
    busy = threading.Event()
    threading.Thread(target=_accept, args=(listener, slots, waiting, busy, folder),
                     name="accept", daemon=True).start()
    cache = EngineCache()
    log.info("listening on %s", path)
    wait, ending = max(idle_s, FIRST_WAIT_S), False
    try:
        while True:
            try:
                ticket = waiting.get(timeout=UNLINK_GRACE_S if ending else wait)
                wait = idle_s
            except queue.Empty:
                # Unlink first: new clients then start a new service, and the ones that
                # connected just before (in the listen backlog, or still sending their
                # request) are still served here; then the service ends.
                if not ending:
                    if _owns(path, inode):
                        path.unlink()
                    ending = True
                elif waiting.empty() and not slots.count:
                    log.info("idle, exiting")
                    return 0
                continue
            busy.set()
            _tell_places(waiting)
            try:
                _run(ticket, cache, folder)
            finally:
                ticket.close()
                slots.release()
                busy.clear()
            _trim_log()
    finally:
        listener.close()
        if _owns(path, inode):
            path.unlink()


def _accept(listener: socket.socket, slots: Connections,
            waiting: queue.Queue, busy: threading.Event, folder: Path) -> None:
    """Takes connections, and gives each to a thread of its own: reading one never
    holds up the next."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            if exc.errno in OUT_OF_DESCRIPTORS:  # wait for connections to close
                time.sleep(ACCEPT_RETRY_S)
                continue
            return  # the listener was closed: the service is ending
        if peer_uid(conn) not in (None, os.getuid()):
            conn.close()  # another user: not even an answer
            continue
        if not slots.take():
            greet(conn)
            refuse(conn, f"the engine service has {MAX_CONNECTIONS} connections already; "
                    "try again when some runs have ended")
            continue
        try:
            threading.Thread(target=_intake, args=(conn, slots, waiting, busy, folder),
                             name="intake", daemon=True).start()
        except RuntimeError:  # no thread to be had
            slots.release()
            conn.close()


def _intake(conn: socket.socket, slots: Connections, waiting: queue.Queue,
            busy: threading.Event, folder: Path) -> None:
    """Greets the connection and reads its whole request within its deadline; then
    the request joins the queue, its commands watched from now on."""
    from .stream import open_scratch, read_job, watch_commands

    greet(conn)
    control = Control()
    emit = Emitter(ClientWriter(conn), on_gone=lambda: control.abandon(
        f"stopped: the client read nothing for {WRITE_STALL_S:.0f} s"))
    emit.keep_alive()
    try:
        scratch = open_scratch()
        try:
            channel = Channel(*within_deadline(conn))
            job = read_job(channel, Path(scratch.name))
        except BaseException:
            scratch.cleanup()
            raise
    except EOFError:
        return hang_up(conn, slots, emit, bad_input(
            "the client went away before its request was complete"))
    except TimeoutError:
        return hang_up(conn, slots, emit, bad_input(
            f"the request did not arrive in time (at least {SLOWEST_RATE >> 10} KiB/s "
            f"after the first {REQUEST_S:.0f} s); the connection is closed"))
    except EngineError as error:
        return hang_up(conn, slots, emit, error)
    except OSError as exc:  # the connection broke
        log.info("a connection broke while its request was read (%s)", exc)
        return hang_up(conn, slots, emit, None)
    except Exception as exc:  # one bad request must not end the service
        log.exception("internal error reading a request")
        return hang_up(conn, slots, emit, _internal(exc, folder))
    conn.settimeout(None)  # commands come when they come; writes have their own bound
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("ll", int(WRITE_STALL_S), int(WRITE_STALL_S % 1 * 1e6)))
    channel.read_raw, channel.read_into = conn.recv, conn.recv_into
    ahead = waiting.qsize() + busy.is_set()
    if ahead:
        emit({"event": "queued", "ahead": ahead})
    watch_commands(channel, control, channel.heartbeat_s)
    waiting.put(Ticket(conn, emit, control, job, scratch))


def _tell_places(waiting: queue.Queue) -> None:
    """Each waiting client hears its new place when a run starts (``queued``: how many
    runs are before it, the running one included), so that its window counts down."""
    with waiting.mutex:
        tickets = list(waiting.queue)
    for place, ticket in enumerate(tickets, start=1):
        ticket.emit({"event": "queued", "ahead": place})


def _run(ticket: Ticket, cache, folder: Path) -> None:
    """Runs one ticket's job, answering on its connection; never raises for it."""
    from .jobs import run_job

    try:
        ticket.control.check()  # cancelled while it waited
        run_job(ticket.job, ticket.emit, ticket.control, cache)
    except EngineError as error:
        ticket.emit(error_event(error))
    except Exception as exc:  # one bad request must not end the service
        log.exception("internal error in a run")
        ticket.emit(error_event(_internal(exc, folder)))
    finally:
        cache.release_memory()


def _internal(exc: Exception, folder: Path) -> EngineError:
    return EngineError("internal", f"internal error in the engine service "
                       f"({type(exc).__name__}: {exc}); its log: {folder / 'service.log'}")


def _listen(path: Path) -> socket.socket | None:
    """Binds the socket (0600), replacing a stale one or that of a service that no
    longer answers (stopped, hung); None if a live service has it."""
    if path.exists():
        try:
            live = reach(path)
        except Stopped:
            log.info("the service at %s does not answer; taking its place", path)
            live = None
        if live is not None:
            live.sock.close()
            return None
        path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(8)
    return listener


def _owns(path: Path, inode: int | None) -> bool:
    """The socket file is still the one this service made (not a newer service's)."""
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _trim_log() -> None:
    """Starts the log (this process's stderr, ``service.log``) anew when it has grown
    past LOG_LIMIT: a long-lived service must not fill the disk with it."""
    try:
        if os.fstat(2).st_size > LOG_LIMIT:
            os.ftruncate(2, 0)  # opened for appending: the next line goes at the start
    except OSError:
        pass
