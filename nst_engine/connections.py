"""One client's connection to the warm engine service: whose it may be, how many
are held, and the deadlines it is read and written within — so that no client can
hold the others up (docs/protocol.md, "Deadlines").
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

from nst_contract.errors import EngineError
from nst_contract.wire import Emitter, deadline, error_event

MAX_CONNECTIONS = 32  # greeted, being read, queued or running
# A request's lines must arrive within REQUEST_S, and its payloads at SLOWEST_RATE
# on average at least (a slow SSH link sends a 384 MB layer in time; a byte a second
# does not); then the connection is dropped.
REQUEST_S = deadline(30.0)
SLOWEST_RATE = 64 << 10  # bytes per second
WRITE_STALL_S = deadline(30.0)  # a client that reads nothing of its events for this long is gone


class Connections:
    """The connections held (greeted, being read, queued or running), at most
    MAX_CONNECTIONS; the service is idle only with none."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def take(self) -> bool:
        with self.lock:
            if self.count >= MAX_CONNECTIONS:
                return False
            self.count += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.count -= 1


def peer_uid(conn: socket.socket) -> int | None:
    """The connecting process's user (Linux SO_PEERCRED); None where unknown."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    data = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    return struct.unpack("3i", data)[1]


class ClientWriter:
    """The Emitter's stream over a client's socket. A client that reads nothing for
    WRITE_STALL_S makes ``sendall`` fail (SO_SNDTIMEO: BlockingIOError), and the
    Emitter takes any OSError as a reader that has gone."""

    def __init__(self, conn: socket.socket) -> None:
        self.write = conn.sendall

    def flush(self) -> None:
        pass


def within_deadline(conn: socket.socket):
    """``recv`` and ``recv_into`` for reading a request: each waits only as long as
    the request's deadline leaves (REQUEST_S, plus the time its bytes so far may take
    at SLOWEST_RATE); past it, TimeoutError."""
    began = time.monotonic()
    received = [0]

    def wait() -> None:
        left = began + REQUEST_S + received[0] / SLOWEST_RATE - time.monotonic()
        if left <= 0:
            raise TimeoutError
        conn.settimeout(left)

    def recv(size: int) -> bytes:
        wait()
        data = conn.recv(size)
        received[0] += len(data)
        return data

    def recv_into(view: memoryview) -> int:
        wait()
        count = conn.recv_into(view)
        received[0] += count
        return count

    return recv, recv_into


def greet(conn: socket.socket) -> None:
    """The first line on every connection, read by the relay (not an event): it tells
    a live service from one that accepts nothing (relay.reach)."""
    conn.settimeout(REQUEST_S)
    try:
        conn.sendall(b'{"service":"nst-engine","pid":%d}\n' % os.getpid())
    except OSError:
        pass


def refuse(conn: socket.socket, message: str) -> None:
    hang_up(conn, None, Emitter(ClientWriter(conn)), EngineError("internal", message))


def hang_up(conn: socket.socket, slots: Connections | None, emit: Emitter,
         error: EngineError | None) -> None:
    """Tells a client that never got a turn why (its last event), and closes its
    connection."""
    if error is not None:
        emit(error_event(error))
    emit.close()
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()
    if slots is not None:
        slots.release()
