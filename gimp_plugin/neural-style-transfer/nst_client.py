"""The plug-in's side of the engine protocol (docs/protocol.md), standard library only.

GIMP's bundled Python has neither torch nor numpy. An :class:`EngineRun` starts the
command ``nst_config.engine_command`` gives — ``nst_engine connect``, which joins the
warm engine service, here or over SSH — sends it the layer's float32 pixels and the
style (a file's bytes or a layer's pixels), turns its events (with their payloads)
into callbacks, notices an engine that fell silent, and keeps the engine's log when
it failed. The wire is the engine's own (``nst_contract.wire``, which install.sh puts
beside this file).
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

from nst_arguments import in_dialog_words
from nst_config import engine_environment
from nst_messages import ClientError, log_note

from nst_contract.errors import EngineError, bad_input
from nst_contract.wire import (
    CLIENT_HEARTBEAT_S,
    PREVIEW_SLACK,
    PROTOCOL,
    READ_CHUNK,
    SILENT_ENGINE_S,
    Frames,
    deadline,
    encode,
    parse_message,
)

PAYLOAD_CHUNK = 16 << 20  # bytes of a payload read at once (the session window stays live)

# Longer than this between two looks at the engine, and it was this process that did
# not run (a stopped or hung GIMP): the engine's silence is counted from now.
SELF_STOPPED_S = deadline(5.0)

LOOK_S = 0.5  # how often a run without a window looks for the engine's silence

TEMP_PREFIX = "nst-gimp-"


class Cancelled(Exception):
    """Nothing was added: the session window closed without a result added."""


@dataclass
class Progress:
    step: int
    total: int
    fraction: float
    eta_s: float
    scale: int
    scales: int
    refining: bool = False  # a step of the refinement at full size (the wire's ``detail``)
    tile: int = 1
    tiles: int = 1

@dataclass(frozen=True)
class Style:
    """The painting as the engine receives it: a file's bytes (any format the engine
    reads), or a layer's float32 pixels (``shape``: height, width, channels), sent as
    the content is — a painting open in GIMP needs no file."""

    name: str  # a label for the result's name and messages, never a path
    data: bytes
    shape: tuple[int, int, int] | None = None  # a layer's pixels; None: a file's bytes

    @classmethod
    def from_file(cls, path: str) -> Style:
        try:
            with open(path, "rb") as handle:
                return cls(os.path.basename(path), handle.read())
        except OSError as exc:
            raise ClientError("bad_input", f"Cannot read the style image: {exc}") from None

    @property
    def sha256(self) -> str:
        """Which painting this was, whatever its name (the result's recipe)."""
        return hashlib.sha256(self.data).hexdigest()

    def message(self) -> dict:
        if self.shape is None:
            return {"type": "style", "name": self.name, "bytes": len(self.data)}
        return {"type": "style", "name": self.name, "bytes": len(self.data),
                "pixels": {"shape": list(self.shape), "dtype": "<f4"}}


def little_endian(floats: bytes) -> bytes:
    """Native float32 bytes as the wire's ``<f4`` (a copy only on a big-endian machine)."""
    if sys.byteorder == "little":
        return floats
    swapped = array("f", floats)
    swapped.byteswap()
    return swapped.tobytes()


def make_workdir(base: str | None = None) -> str:
    """A private (0700) temporary folder; stale ones of dead plug-in runs are removed.

    ``base`` defaults to the system's temporary folder; a Flatpak GIMP passes a
    folder the host can see too.
    """
    base = base or tempfile.gettempdir()
    os.makedirs(base, mode=0o700, exist_ok=True)
    for entry in Path(base).glob(TEMP_PREFIX + "*"):
        try:
            pid = int(entry.name[len(TEMP_PREFIX):].split("-")[0])
            os.kill(pid, 0)
        except (ValueError, IndexError):
            continue
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue
    return tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=base)

def _die_with_parent() -> None:
    """Linux: the engine gets SIGTERM if the plug-in process dies (belt and braces)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

class EngineRun:
    """One run through ``nst_engine connect`` (protocol 3): the request out on stdin,
    events (with their payloads) in from stdout, ``finish``/``cancel`` out.

    stdin stays open: when this process dies, the pipe closes and the engine cancels
    the run. The engine's stderr goes to a private temporary file, kept in the
    user's cache folder when the engine fails with an internal error.
    """

    def __init__(self, command: list[str], on_event=None, host: str | None = None) -> None:
        self.host = host  # the SSH host the engine runs on; None: this computer
        self.where = host or "this computer"  # as messages name it
        self.on_event = on_event
        self.started: dict = {}  # the ``started`` event: which engine, device, precision
        self.result: dict | None = None
        self.error: ClientError | None = None
        self.garbage = ""  # the last line that was not an event
        self._frames = Frames("event", self._payload_limit, _make_room, self._skip_garbage)
        self._unholdable = False  # an announced payload too large to hold: output ends
        self.most_payload = 0  # the largest payload taken (``_payload_limit``)
        self._writing = threading.RLock()  # a signal handler may send while held
        self._heard = self._looked = time.monotonic()  # the engine's last byte; our last look
        try:
            self.folder = make_workdir()
        except OSError as exc:  # a full or unwritable temporary folder
            raise ClientError("temp_folder", "Could not make a temporary folder for the "
                              f"engine's log: {exc}. Nothing was added to the image.") from None
        self.stderr_path = os.path.join(self.folder, "engine-stderr.txt")
        try:
            with open(self.stderr_path, "wb") as stderr:
                self.process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                    env=engine_environment(), cwd=self.folder,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
        except OSError as exc:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise ClientError("not_installed", f"Could not start the engine: {exc}") from None

    @property
    def stdout_fd(self) -> int:
        return self.process.stdout.fileno()

    def send_request(self, settings: dict, content: bytes, shape: tuple, style: Style,
                     preview_interval_s: float = 0.0, start: bytes | None = None,
                     worked_to: int = 0) -> None:
        """The ``run`` message with the layer (native float32) and the style; ``start``:
        an earlier result of the layer (the same shape) to start from, worked out at
        ``worked_to`` px (a quick look finished)."""
        content = little_endian(content)
        self.most_payload = len(content) + PREVIEW_SLACK
        run = {"type": "run", "protocol": PROTOCOL, "settings": settings,
               "preview_interval_s": preview_interval_s, "styles": 1,
               "heartbeat_s": CLIENT_HEARTBEAT_S,
               "content": {"shape": list(shape), "dtype": "<f4"}, "bytes": len(content)}
        if start is not None:
            run["start"] = {"shape": list(shape), "dtype": "<f4", "worked_to": worked_to}
        painting = style.data if style.shape is None else little_endian(style.data)
        try:
            with self._writing:
                self.process.stdin.write(encode(run))
                self.process.stdin.write(content)  # not joined: no copy of the layer
                self.process.stdin.write(encode(style.message()))
                self.process.stdin.write(painting)
                if start is not None:
                    self.process.stdin.write(encode({"type": "start", "bytes": len(start)}))
                    self.process.stdin.write(little_endian(start))
                self.process.stdin.flush()
        except (OSError, ValueError):
            return  # the engine has gone: its events and exit status will say why
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()

    def _heartbeat(self) -> None:
        """A ``ping`` every CLIENT_HEARTBEAT_S while the engine runs: over SSH, the far
        end cancels a run whose client falls silent (a dead network)."""
        while self.process.poll() is None and self.send("ping"):
            time.sleep(CLIENT_HEARTBEAT_S)

    def read_available(self) -> bool:
        """Reads what the engine has written (one read) and handles every whole
        message; False at the end of its output. A payload is read straight into its
        own buffer (a 384 MB result: 0.48 s instead of 0.65 s through the line buffer)."""
        room = self._frames.room()
        if room is not None:
            count = _read_into(self.stdout_fd, room[:PAYLOAD_CHUNK])
            self._frames.filled(count)
        else:
            chunk = os.read(self.stdout_fd, READ_CHUNK)
            self._frames.feed(chunk)
            count = len(chunk)
        if count:
            self._heard = time.monotonic()
        self._handle_arrived()
        return bool(count) and not self._unholdable

    def given_up(self) -> bool:
        """True when the engine has said nothing for SILENT_ENGINE_S (a stopped, hung
        or lost engine): the run ends with that message, and its process is ended. A
        long gap since the last look means that this process did not run (a stopped
        GIMP): the engine's silence counts from now, and what it said meanwhile is
        read first."""
        now = time.monotonic()
        if now - self._looked > SELF_STOPPED_S:
            self._heard = max(self._heard, now)
        self._looked = now
        if self.result is not None or self.error is not None \
                or now - self._heard <= SILENT_ENGINE_S:
            return False
        self.error = ClientError(
            "engine_silent", f"The engine on {self.where} stopped answering: nothing from "
            f"it for {SILENT_ENGINE_S:.0f} s. Nothing was added to the image.")
        self.process.kill()
        return True

    def read_to_end(self) -> dict:
        """Reads every event, blocking (runs without a window), and returns
        :meth:`outcome`; an engine left running by an error here is stopped, and one
        that falls silent is given up (:meth:`given_up`)."""
        try:
            while True:
                if os.name == "posix":  # pipes can be waited on with a timeout
                    ready, _, _ = select.select([self.stdout_fd], [], [], LOOK_S)
                    if not ready:
                        if self.given_up():
                            break
                        continue
                if not self.read_available():
                    break
        finally:
            if self.process.poll() is None and self.result is None:
                self.stop()
        return self.outcome()

    def _handle_arrived(self) -> None:
        """Handles every whole event that has arrived."""
        while not self._unholdable:
            try:
                found = self._frames.next()
            except EngineError as error:  # a payload we cannot hold, a line without end
                self.garbage, self._unholdable = error.message, True
                return
            if found is None:
                return
            event, payload = found
            if typed_event(event) is None:
                self._skip_garbage(encode(event))
                continue
            # bytes: GIMP 3.0's GEGL binding took a 96 MB bytearray 10× slower (1.56 s)
            event["payload"] = payload if isinstance(payload, bytes) else bytes(payload)
            self._handle(event)

    def _payload_limit(self, event: dict) -> int:
        """The result is the layer sent, a preview smaller: nothing larger is made
        room for."""
        size = event.get("bytes", 0)
        if isinstance(size, int) and size > self.most_payload:
            raise bad_input(f"a message of {size:,} bytes, more than the "
                            f"{self.most_payload:,} of the layer sent")
        return self.most_payload

    def _skip_garbage(self, line: bytes) -> None:
        self.garbage = line.decode("utf-8", "replace").strip()[:200] or self.garbage

    def _handle(self, event: dict) -> None:
        if event["event"] == "started":
            self.started = event
        elif event["event"] == "result":
            self.result = event
        elif event["event"] == "error":
            message, advised = in_dialog_words(str(event.get("message", "")))
            self.error = ClientError(str(event.get("kind", "internal")), message, advised)
        if self.on_event:
            self.on_event(event)

    def send(self, command: str) -> bool:
        """``finish`` (keep the image as it is now), ``cancel`` or ``ping``; False if
        the engine has gone."""
        try:
            with self._writing:
                self.process.stdin.write(encode({"type": command}))
                self.process.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def stop(self, grace_s: float = 5.0) -> None:
        """Cancels and makes sure the process is gone (SIGTERM, then SIGKILL)."""
        self.send("cancel")
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def abandon(self) -> None:
        """Ends a run whose request was never sent: the engine stopped, its folder gone."""
        self.stop()
        try:
            self.outcome()
        except ClientError:
            pass

    def outcome(self) -> dict:
        """Waits for the process and returns the ``result`` event (its ``payload`` the
        float32 array, native byte order), or raises ClientError."""
        try:
            try:
                with self._writing:
                    self.process.stdin.close()
            except OSError:
                pass
            code = self.process.wait()
            self.process.stdout.close()
            if self.error is not None:
                if self.error.kind == "internal":
                    self.error.message += log_note(keep_log(self.stderr_path))
                raise self.error
            result = self.result
            if code != 0 or result is None or not _array_ok(result):
                raise self._unexpected(code)
            if sys.byteorder != "little":
                swapped = array("f", result["payload"])
                swapped.byteswap()
                result["payload"] = swapped.tobytes()
            return result
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _unexpected(self, code: int) -> ClientError:
        text = Path(self.stderr_path).read_text(encoding="utf-8", errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        tail = next((line for line in reversed(lines) if not line[0].isspace()),
                    self.garbage or f"exit status {code}")
        if self.host is not None and code == 255:  # ssh's own failure
            return ClientError("connection", f"The connection to {self.where} failed or "
                               f"was lost: {tail}")
        if self.host is not None and code in (126, 127):  # the shell's: no such
            return ClientError(  # program there, or not one it may run
                "not_installed", f"The engine is not installed on {self.where} (its Python "
                f"could not be run there: {tail}). Run ./install.sh on {self.where}, or set "
                "remote.python in nst-engine.json to the engine's Python there.")
        return ClientError("internal", f"The engine on {self.where} stopped unexpectedly: "
                           f"{tail}" + log_note(keep_log(self.stderr_path)))

def _make_room(size: int) -> bytearray:
    try:
        return bytearray(size)
    except (MemoryError, OverflowError):
        raise bad_input(f"a message of {size:,} bytes, more than fits in memory") from None


def _read_into(fd: int, view: memoryview) -> int:
    """One read from ``fd`` into ``view``; the number of bytes read (0 at the end)."""
    if hasattr(os, "readv"):
        return os.readv(fd, [view])
    data = os.read(fd, len(view))  # Windows
    view[:len(data)] = data
    return len(data)

def _array_ok(result: dict) -> bool:
    shape = result.get("shape")
    payload = result.get("payload", b"")
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) for n in shape)):
        return False
    count = 4
    for n in shape:
        count *= n
    return result.get("dtype") == "<f4" and len(payload) == count

def parse_event(raw: bytes) -> dict | None:
    """A protocol event from one line, or None for anything else (garbage, a
    non-object, a progress event without its numbers)."""
    try:
        return typed_event(parse_message(raw, "event"))
    except EngineError:  # garbage, a non-object, nesting too deep to parse
        return None


def typed_event(event: dict) -> dict | None:
    """``event`` with its ``progress`` (a :class:`Progress`) when it is a progress
    event, or None when that event lacks its numbers."""
    if event["event"] == "progress":
        try:
            event["progress"] = Progress(
                int(event["step"]), int(event["total"]), float(event["fraction"]),
                float(event.get("eta_s", 0.0)), int(event.get("scale", 1)),
                int(event.get("scales", 1)), bool(event.get("detail", False)),
                int(event.get("tile", 1)), int(event.get("tiles", 1)))
        except (KeyError, TypeError, ValueError):
            return None
    return event


def run_engine(command: list[str], settings: dict, content: bytes, shape: tuple,
               style: Style, on_event=None, host: str | None = None) -> dict:
    """Runs one request to its end (no window); returns the ``result`` event or raises
    ClientError."""
    run = EngineRun(command, on_event, host)
    run.send_request(settings, content, shape, style)
    return run.read_to_end()

def log_folder() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "nst-gimp" / "logs"

def keep_log(stderr_path: str, keep: int = 5, limit: int = 64 * 1024) -> str | None:
    """Copies the engine's stderr (its last ``limit`` bytes) into the user's cache
    folder, keeping the newest ``keep`` logs; returns the copy's path, or None. The
    oldest go first (room for the new one on a full disk), and the copy appears
    whole or not at all: a message never points at a half-written log."""
    tmp = None
    try:
        folder = log_folder()
        folder.mkdir(parents=True, exist_ok=True)
        with open(stderr_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            data = handle.read()
        logs = sorted(folder.glob("engine-*.log"))
        for old in logs[:max(0, len(logs) - (keep - 1))]:
            old.unlink()
        stamp = time.strftime("%Y%m%d-%H%M%S") + f".{time.time_ns() % 10**9:09d}"
        target = folder / f"engine-{stamp}-{os.getpid()}.log"
        tmp = folder / f".{target.name}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        return str(target)
    except OSError:
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass
        return None
