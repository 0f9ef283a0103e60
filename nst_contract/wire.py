"""Protocol 3, the one wire between a client (the plug-in, the command line) and the
engine: framing, ceilings, deadlines and heartbeats (``docs/protocol.md``).

Every message is one JSON object on one line; when it has a ``bytes`` field,
exactly that many raw bytes follow the line. :func:`encode` writes a line,
:class:`Emitter` writes events, :class:`Frames` splits what arrives into messages for
every reader and :class:`Channel` reads through it, blocking (the engine's side). Standard
library only: GIMP's Python and a command line without torch import it too.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import EngineError, bad_input

if TYPE_CHECKING:
    import numpy as np

PROTOCOL = 3
MAX_LINE = 1 << 20  # a message line; the pixels travel as payloads
# The largest layer taken: 16384² pixels (the largest working size, squared) of up to
# four float32 channels, 4 GiB. Refused by its announced shape, before any allocation.
MAX_LAYER_PIXELS = 16384 * 16384
MAX_STYLE_BYTES = 512 << 20  # a style image file


def deadline(seconds: float) -> float:
    """A deadline of the wire or the service, times ``$NST_DEADLINE_SCALE`` (1 unless a
    test shortens them all at once)."""
    try:
        scale = float(os.environ.get("NST_DEADLINE_SCALE", "1"))
    except ValueError:
        scale = 1.0
    return seconds * scale if scale > 0 else seconds


# The engine's side writes an event at least this often, ``alive`` when it has
# nothing else to say; a client may take SILENT_ENGINE_S without a byte as an
# engine that stopped (a stopped, hung or swapped-out process: docs/protocol.md).
ENGINE_HEARTBEAT_S = deadline(2.0)
SILENT_ENGINE_S = deadline(20.0)
# The client pings at least this often during a run, and says so in its run message
# (``heartbeat_s``); the engine ends a run whose client misses HEARTBEAT_MISSES pings
# in a row (a dead network: docs/protocol.md).
CLIENT_HEARTBEAT_S = deadline(2.0)
HEARTBEAT_MISSES = 3

Limit = Callable[[dict], int]  # the most payload bytes a message may announce
Payload = bytes | bytearray | memoryview  # or a numpy array (``engine_room``)

READ_CHUNK = 1 << 20  # bytes asked of a pipe or a socket at once
# From this size a payload is received straight into a buffer of its own (a numpy one
# on the engine's side, never zero-filled first): no growing buffer, no second copy
# of a 384 MB layer.
LARGE_PAYLOAD = 1 << 20
PREVIEW_SLACK = 1 << 20  # a preview PNG's headers beyond the layer's own bytes


class Frames:
    """The framing, for every reader (the engine, the command line's client, the
    plug-in): bytes go in — :meth:`feed`, or a payload's straight into :meth:`room`
    and then :meth:`filled` — and whole messages come out of :meth:`next`. It never
    reads itself, so a blocking reader (:class:`Channel`) and the plug-in's
    non-blocking one share it.

    ``key`` is the field that names a message (``type`` for commands, ``event`` for
    events); ``limit(message)`` says how many payload bytes that message may announce
    (it may also refuse the message with ``bad_input``); ``make_room(size)`` makes the
    buffer a payload is received into. A line that is not a message is ``bad_input``,
    or, when ``on_garbage`` is given, handed to it and skipped (a stray line on an
    engine's stdout).
    """

    def __init__(self, key: str = "type", limit: Limit = lambda message: 0,
                 make_room: Callable[[int], bytearray | np.ndarray] = bytearray,
                 on_garbage: Callable[[bytes], None] | None = None) -> None:
        self.key = key
        self.limit = limit
        self.make_room = make_room
        self.on_garbage = on_garbage
        self.buffer = bytearray()
        self._waiting: dict | None = None  # a message whose payload is still arriving
        self._payload: bytearray | np.ndarray = bytearray()
        self._have = 0  # bytes of that payload received

    def feed(self, chunk: bytes | bytearray) -> None:
        """Bytes as they arrived; those of a payload go into its room."""
        if self._waiting is not None:
            take = min(len(chunk), len(self._payload) - self._have)
            memoryview(self._payload)[self._have:self._have + take] = chunk[:take]
            self._have += take
            chunk = chunk[take:]
        self.buffer += chunk

    def room(self) -> memoryview | None:
        """Where the payload now arriving goes on, to be received straight into (then
        :meth:`filled`); None while a line is awaited."""
        if self._waiting is None:
            return None
        return memoryview(self._payload)[self._have:]

    def filled(self, count: int) -> None:
        """``count`` bytes were received into :meth:`room`."""
        self._have += count

    def next(self, limit: Limit | None = None) -> tuple[dict, Payload] | None:
        """The next whole message and its payload (``b""`` when it has none), or None
        until more bytes arrive. ``limit`` overrides the reader's for this message.
        A payload larger than the limit is refused before room is made for it."""
        while self._waiting is None:
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > MAX_LINE:
                    raise bad_input("a message line is too long")
                return None
            line = bytes(self.buffer[:end])
            del self.buffer[:end + 1]
            try:
                message = parse_message(line, self.key)
                size = announced_bytes(message)
            except EngineError:
                if self.on_garbage is None:
                    raise
                self.on_garbage(line)
                continue
            most = (limit or self.limit)(message)
            if size > most:
                raise bad_input(f"a {message[self.key]} message announces {size:,} bytes; "
                                f"at most {most:,} are taken")
            if size <= len(self.buffer):  # none, or small and here already
                payload = self.buffer[:size] if size else b""
                del self.buffer[:size]
                return message, payload
            self._payload = self.make_room(size)
            self._have = 0
            self._waiting = message
            arrived, self.buffer = self.buffer, bytearray()
            self.feed(arrived)  # what has arrived of it moves in
        if self._have < len(self._payload):
            return None
        message, payload = self._waiting, self._payload
        self._waiting, self._payload, self._have = None, bytearray(), 0
        return message, payload


def engine_room(size: int) -> bytearray | np.ndarray:
    """A payload's buffer on the engine's side: a large one is a numpy array, not
    zero-filled first (unlike a bytearray) and owned by the picture made of it."""
    if size < LARGE_PAYLOAD:
        return bytearray(size)
    import numpy as np  # only where a payload is large: the wire itself needs none

    return np.empty(size, np.uint8)


class Channel:
    """A blocking reader of messages through ``read_raw(n)`` (``os.read`` on a pipe,
    ``socket.recv``): unbuffered reads, so that a thread waiting for the next command
    never holds a lock the interpreter needs at exit. A payload goes straight into
    its own buffer through ``read_into(view)`` (``socket.recv_into``, ``os.readv``)
    when given."""

    def __init__(self, read_raw: Callable[[int], bytes],
                 read_into: Callable[[memoryview], int] | None = None,
                 key: str = "type") -> None:
        self.read_raw = read_raw
        self.read_into = read_into
        self.frames = Frames(key, make_room=engine_room)
        self.heartbeat_s = 0.0  # the client's promise, from its run message

    def read(self, limit: Limit = lambda message: 0) -> tuple[dict, Payload]:
        """The next message and its payload; EOFError when the other side has gone.
        ``limit`` as for :class:`Frames`."""
        while (found := self.frames.next(limit)) is None:
            room = self.frames.room()
            if room is not None and self.read_into is not None:
                count = self.read_into(room)
                self.frames.filled(count)
            else:
                chunk = self.read_raw(READ_CHUNK)
                count = len(chunk)
                self.frames.feed(chunk)
            if not count:
                raise EOFError
        return found


def parse_message(line: bytes | bytearray, key: str = "type") -> dict:
    """One message line as a JSON object with a string ``key``; anything else, nesting
    too deep for the parser among it, is ``bad_input``."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        raise bad_input("a message is not JSON (or nests too deeply)") from None
    if not isinstance(message, dict) or not isinstance(message.get(key), str):
        raise bad_input(f"a message must be a JSON object with a {key}")
    return message


def announced_bytes(message: dict) -> int:
    """The payload bytes a message says follow its line (0 without ``bytes``)."""
    size = message.get("bytes", 0)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad_input("bytes must be a non-negative integer")
    return size


def layer_bytes(header) -> int:
    """The bytes of a layer described as ``{"shape": [h, w, c], "dtype": "<f4"}``,
    checked against ``MAX_LAYER_PIXELS`` (``bad_input`` otherwise)."""
    if not isinstance(header, dict) or header.get("dtype") != "<f4":
        raise bad_input("content must describe a little-endian float32 array (<f4)")
    shape = header.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
            and shape[2] <= 4):
        raise bad_input("content shape must be [height, width, channels], 1 to 4 channels")
    if shape[0] * shape[1] > MAX_LAYER_PIXELS:
        raise bad_input(f"a {shape[1]}×{shape[0]} layer is larger than the "
                        f"{MAX_LAYER_PIXELS:,} pixels the engine takes")
    return 4 * shape[0] * shape[1] * shape[2]


def encode(message: dict) -> bytes:
    """One message's line: compact JSON and a newline (its payload, if any, follows)."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def error_event(error: EngineError) -> dict:
    return {"event": "error", "kind": error.kind, "message": error.message}


class Emitter:
    """Writes events as JSON lines, from any thread, and nothing after the last one
    (``result`` or ``error``). A reader that went away (a closed pipe) is a quiet
    cancellation: ``on_gone`` is called and nothing more is written."""

    def __init__(self, stream=None, on_gone: Callable[[], None] | None = None) -> None:
        self.stream = stream or sys.stdout.buffer  # binary: payloads follow lines raw
        self.on_gone = on_gone
        self.closed = False
        self.lock = threading.Lock()
        self.written = time.monotonic()  # when the last event went out

    def keep_alive(self, interval_s: float = ENGINE_HEARTBEAT_S) -> None:
        """From now until the last event, an ``alive`` event whenever ``interval_s``
        passes without one: the client can tell a long step from a stopped engine."""

        def beat() -> None:
            while not self.closed:
                time.sleep(max(0.01, self.written + interval_s - time.monotonic()))
                if time.monotonic() - self.written >= interval_s:
                    self({"event": "alive"})

        threading.Thread(target=beat, name="alive", daemon=True).start()

    def close(self) -> None:
        """Writes nothing more (the ``alive`` events end too)."""
        with self.lock:
            self.closed = True

    def __call__(self, event: dict) -> None:
        """Writes the event; a ``_payload`` (bytes-like) follows its line raw, and the
        line says how long it is (``bytes``): the framing that :class:`Frames` reads."""
        with self.lock:
            if self.closed:
                return
            self.closed = event["event"] in ("result", "error")
            payload = event.pop("_payload", b"")
            try:
                self.stream.write(encode(event))
                if len(payload):  # written as it is: no copy of a 384 MB result
                    self.stream.write(payload)
                self.stream.flush()
                self.written = time.monotonic()
            except (OSError, ValueError):  # a closed pipe or socket: the reader has gone
                self.closed = True
                if self.stream is sys.stdout.buffer:
                    _silence(self.stream)
                if self.on_gone:
                    self.on_gone()


def _silence(stream) -> None:
    """Points the stream's file descriptor at /dev/null, so that nothing (not even the
    interpreter's final flush) fails on a pipe nobody reads."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
