"""The plug-in's side of the engine protocol (docs/protocol.md), standard library only.

GIMP's bundled Python has neither torch nor numpy. This module finds the engine
(this computer's, or one reached over SSH), runs ``nst_engine connect`` — which
joins the warm engine service — sends it the layer's float32 pixels and the style
file, and turns its events (with their payloads) into callbacks. It also measures
each run for the dialog's time estimates. The knobs, the plan and the wire are the
engine's own (``nst_contract``, which install.sh puts beside this file).
"""

from __future__ import annotations

import json
import math
import os
import select
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

from nst_contract import plan
from nst_contract.errors import EngineError
from nst_contract.knobs import AUTO_SIZE, DEFAULTS, KNOBS, Settings
from nst_contract.wire import (
    CLIENT_HEARTBEAT_S,
    PROTOCOL,
    SILENT_ENGINE_S,
    deadline,
    encode,
    parse_message,
)

PAYLOAD_CHUNK = 16 << 20  # bytes of a payload read at once (the run window stays live)
PREVIEW_SLACK = 1 << 20  # a preview PNG's headers beyond the layer's own bytes
CONFIG_NAME = "nst-engine.json"  # written by install.sh next to the plug-in
REMOTE_PYTHON = ".local/share/nst-engine/venv/bin/python"  # install.sh's, from the home
# Longer than this between two looks at the engine, and it was this process that did
# not run (a stopped or hung GIMP): the engine's silence is counted from now.
SELF_STOPPED_S = deadline(5.0)
LOOK_S = 0.5  # how often a run without a window looks for the engine's silence
TEMP_PREFIX = "nst-gimp-"
# Set by GIMP's bundled Python and harmful to a different interpreter.
DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "GI_TYPELIB_PATH", "LD_LIBRARY_PATH")

HINTS = {
    "not_installed": "See the README's installation section; 'install.sh --check' tells what "
    "is missing.",
    "no_weights": "Install the network weights: run install.sh again, or "
    "'<the engine's Python> -m nst_engine weights download'.",
    "out_of_memory": "Lower 'Max size', select a smaller area, or close other GPU programs.",
    "bad_input": "Check the style image and the options.",
    "bad_config": "Correct that entry in nst-engine.json, in the plug-in's folder, or run "
    "install.sh again: it writes the file anew.",
    "internal": "Run 'install.sh --check'; if it reports no problem, please report this.",
    "connection": "Check that 'ssh HOST' logs in without a password prompt, and that "
    "install.sh ran on that machine; 'install.sh --check' tests the connection.",
    "engine_silent": "The next run starts the engine afresh; if this happens again, "
    "'install.sh --check' tells whether the engine works.",
}


class ClientError(Exception):
    """A failure to show the user: ``kind`` as in the protocol, plus a human message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class Progress:
    step: int
    total: int
    fraction: float
    eta_s: float
    scale: int
    scales: int
    detail: bool = False  # the refinement at full size
    tile: int = 1
    tiles: int = 1


def engine_command(plugin_dir: str | os.PathLike) -> tuple[list[str], str]:
    """The command that reaches the engine, and where it runs ("this computer" or the
    SSH host), from ``NST_ENGINE_PYTHON`` or the config install.sh wrote beside the
    plug-in (``read_config``): ``{"python": PATH}``, ``"launcher": ["flatpak-spawn",
    "--host"]`` for a Flatpak GIMP, and ``"remote": {"host": "user@host", "python":
    PATH, "ssh_options": [...]}`` for an engine on another machine. Either way it runs
    ``nst_engine connect``, which joins the warm engine service (docs/protocol.md)."""
    override = os.environ.get("NST_ENGINE_PYTHON")
    config = read_config(Path(plugin_dir) / CONFIG_NAME, need_python=not override)
    python = override or config["python"]
    remote = config.get("remote")
    if remote is not None:
        return ssh_command(remote["host"], [remote.get("python", REMOTE_PYTHON), "-m",
                                            "nst_engine", "connect"],
                           remote.get("ssh_options", [])), remote["host"]
    launcher = config.get("launcher", [])
    if not launcher and not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ClientError(
            "not_installed",
            f"The engine's Python ({python}) does not exist or cannot run. "
            "Run install.sh again to repair the installation.",
        )
    return [*launcher, python, "-m", "nst_engine", "connect"], "this computer"


def read_config(path: Path, need_python: bool = True) -> dict:
    """``nst-engine.json``, checked entry by entry. A malformed entry is a message that
    names it, never a guess: a string where a list belongs is not split into
    characters (``ssh_options: "-p 22"`` would otherwise reach ssh as words), and a
    ``remote`` that is not an object is not quietly ignored (the photographer asked
    for another machine). Only a regular file is read (a FIFO would hang GIMP)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ClientError("bad_config", f"{path} is not a regular file.")
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not need_python:
            return {}
        raise ClientError(
            "not_installed", f"The style transfer engine is not set up ({path} is "
            "missing). Run install.sh from the plug-in's download folder.") from None
    except (OSError, ValueError) as exc:
        raise ClientError("bad_config", f"{path} cannot be read ({exc}).") from None
    name = path.name
    if not isinstance(config, dict):
        raise ClientError("bad_config", f"{name} must hold a JSON object.")
    if need_python or "python" in config:
        _require(_is_text(config.get("python")), f"{name}: python must be the path of the "
                 "engine's Python, as a string")
    if "launcher" in config:
        _require(_is_words(config["launcher"]), f"{name}: launcher must be a list of strings")
    remote = config.get("remote")
    if remote is not None:
        _require(isinstance(remote, dict), f'{name}: remote must be an object such as '
                 '{"host": "user@gpu-box"}')
        _require(_is_text(remote.get("host")), f"{name}: remote.host must name the machine "
                 "(user@host)")
        if "python" in remote:
            _require(_is_text(remote["python"]), f"{name}: remote.python must be a path")
        if "ssh_options" in remote:
            _require(_is_words(remote["ssh_options"]),
                     f"{name}: ssh_options must be a list of strings")
    return config


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_words(value) -> bool:
    return isinstance(value, list) and all(_is_text(word) for word in value)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ClientError("bad_config", message + ".")


def ssh_command(host: str, remote: list[str], extra: list[str] = ()) -> list[str]:
    """``ssh`` running ``remote`` on ``host``: SSH's own authentication only (no
    password prompts), keep-alives so a dropped connection is noticed within ~10 s,
    and each word quoted for the remote shell (ssh hands it one command line)."""
    options = ["-T", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=3",
               "-o", "ServerAliveCountMax=3", "-o", "ConnectTimeout=15"]
    tests = os.environ.get("NST_SSH_OPTIONS", "")  # tests: a port, a key, known hosts
    return ["ssh", *options, *extra, *shlex.split(tests), "--", host,
            " ".join(shlex.quote(word) for word in remote)]


def engine_environment(environ: dict | None = None) -> dict:
    """The parent's environment without what GIMP's Python sets; NST_* is kept."""
    environ = dict(os.environ if environ is None else environ)
    for name in DROPPED_ENV:
        environ.pop(name, None)
    environ["PYTHONIOENCODING"] = "utf-8"
    return environ


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


# The knobs the procedure has as arguments, in their order; each argument is named
# for its knob (``style-strength`` for ``style_strength``) and takes its default,
# range, choices and help from ``nst_contract.knobs``.
ARGUMENT_KNOBS = ("style_strength", "iterations", "max_size", "preserve_colors", "seed",
                  "detail", "device")


def argument_name(knob: str) -> str:
    return knob.replace("_", "-")


def argument_default(knob: str):
    """The knob's default as an argument: GIMP has no empty int, so an automatic
    working size is its own value, 0."""
    default = DEFAULTS[knob]
    return AUTO_SIZE if default is None and knob == "max_size" else default


def settings_from_config(value_of) -> dict:
    """Engine settings from the procedure's arguments, read by name (``value_of(name)``)."""
    return {knob: KNOBS[knob]["kind"](value_of(argument_name(knob)))
            for knob in ARGUMENT_KNOBS}


def _die_with_parent() -> None:
    """Linux: the engine gets SIGTERM if the plug-in process dies (belt and braces)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


class EngineRun:
    """One run through ``nst_engine connect`` (protocol 3): the request out on stdin,
    events (with their payloads) in from stdout, ``finish``/``cancel`` out.

    stdin stays open: when this process dies, the pipe closes and the engine cancels
    the run. The engine's stderr goes to a private temporary file, kept in the
    user's cache folder when the engine fails with an internal error.
    """

    def __init__(self, command: list[str], on_event=None, where: str = "this computer") -> None:
        self.where = where
        self.on_event = on_event
        self.result: dict | None = None
        self.error: ClientError | None = None
        self.garbage = ""  # the last line that was not an event
        self._buffer = bytearray()
        self._header: dict | None = None  # an event whose payload is still arriving
        self._payload = bytearray()  # that payload, filled up to ``_have`` bytes
        self._have = 0
        self._unholdable = False  # an announced payload too large to hold: output ends
        # The result is the layer sent, a preview smaller: nothing larger is made room for.
        self.most_payload = 0
        self._writing = threading.RLock()  # a signal handler may send while held
        self._heard = self._looked = time.monotonic()  # the engine's last byte; our last look
        self.folder = make_workdir()
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

    def send_request(self, settings: dict, content: bytes, shape: tuple, style_path: str,
                     preview_interval_s: float = 0.0) -> None:
        """The ``run`` message with the layer (native float32) and the style file."""
        try:
            with open(style_path, "rb") as handle:
                style = handle.read()
        except OSError as exc:
            raise ClientError("bad_input", f"Cannot read the style image: {exc}") from None
        if sys.byteorder != "little":
            swapped = array("f", content)
            swapped.byteswap()
            content = swapped.tobytes()
        self.most_payload = len(content) + PREVIEW_SLACK
        run = {"type": "run", "protocol": PROTOCOL, "settings": settings,
               "preview_interval_s": preview_interval_s, "styles": 1,
               "heartbeat_s": CLIENT_HEARTBEAT_S,
               "content": {"shape": list(shape), "dtype": "<f4"}, "bytes": len(content)}
        name = os.path.basename(style_path)
        try:
            with self._writing:
                self.process.stdin.write(encode(run))
                self.process.stdin.write(content)  # not joined: no copy of the layer
                self.process.stdin.write(encode({"type": "style", "name": name,
                                                "bytes": len(style)}) + style)
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
        if self._header is not None:
            view = memoryview(self._payload)[self._have:self._have + PAYLOAD_CHUNK]
            count = _read_into(self.stdout_fd, view)
            self._have += count
        else:
            chunk = os.read(self.stdout_fd, 1 << 20)
            self._buffer += chunk
            count = len(chunk)
        if count:
            self._heard = time.monotonic()
        while self._next():
            pass
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

    def _next(self) -> bool:
        if self._header is not None:
            if self._have < len(self._payload):
                return False
            event, self._header = self._header, None
            # bytes: GIMP 3.0's GEGL binding took a 96 MB bytearray 10× slower (1.56 s)
            event["payload"], self._payload = bytes(self._payload), bytearray()
            self._handle(event)
            return True
        end = self._buffer.find(b"\n")
        if end < 0:
            return False
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        event = parse_event(line)
        if event is None:
            self.garbage = line.decode("utf-8", "replace").strip()[:200] or self.garbage
        elif isinstance(event.get("bytes"), int) and event["bytes"] > 0:
            self._start_payload(event)
        else:
            event["payload"] = b""
            self._handle(event)
        return True

    def _start_payload(self, event: dict) -> None:
        """Makes room for the payload that follows ``event``'s line; what has already
        arrived of it moves in."""
        if event["bytes"] > self.most_payload:
            self.garbage = (f"a message of {event['bytes']:,} bytes, more than the "
                            f"{self.most_payload:,} of the layer sent")
            self._unholdable = True
            return
        try:
            self._payload = bytearray(event["bytes"])
        except (MemoryError, OverflowError):
            self.garbage = f"a message of {event['bytes']} bytes, more than fits in memory"
            self._unholdable = True
            return
        self._have = min(len(self._buffer), len(self._payload))
        self._payload[:self._have] = self._buffer[:self._have]
        del self._buffer[:self._have]
        self._header = event

    def _handle(self, event: dict) -> None:
        if event["event"] == "result":
            self.result = event
        elif event["event"] == "error":
            self.error = ClientError(str(event.get("kind", "internal")),
                                     str(event.get("message", "")))
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
        if self.where != "this computer" and code == 255:  # ssh's own failure
            return ClientError("connection", f"The connection to {self.where} failed or "
                               f"was lost: {tail}")
        if self.where != "this computer" and code in (126, 127):  # the shell's: no such
            return ClientError(  # program there, or not one it may run
                "not_installed", f"The engine is not installed on {self.where} (its Python "
                f"could not be run there: {tail}). Run ./install.sh on {self.where}, or set "
                "remote.python in nst-engine.json to the engine's Python there.")
        return ClientError("internal", f"The engine on {self.where} stopped unexpectedly: "
                           f"{tail}" + log_note(keep_log(self.stderr_path)))


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
    """A protocol event, or None for anything else (garbage, a non-object, a progress
    event without its numbers)."""
    try:
        event = parse_message(raw, "event")
    except EngineError:  # garbage, a non-object, nesting too deep to parse
        return None
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
               style_path: str, on_event=None, where: str = "this computer") -> dict:
    """Runs one request to its end (no window); returns the ``result`` event or raises
    ClientError."""
    run = EngineRun(command, on_event, where)
    run.send_request(settings, content, shape, style_path)
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


def log_note(path: str | None) -> str:
    return f"\n\nThe engine's log is saved in {path}; please attach it to a report." if path \
        else ""


class SpeedLog:
    """Measures a run from its events, for the next runs' time estimates: start-up,
    seconds per step as ``a + b × pixels``, and the share of the top scale's steps
    that runs with the convergence rule."""

    def __init__(self) -> None:
        self.launched = time.monotonic()
        self.device = None
        self.precision = None
        self.planned: list = []
        self.planned_detail = False
        self.first_step_at = None
        self.marks: dict[int, list] = {}  # scale → [pixels, first elapsed, last elapsed, steps]
        self.working_end = 0.0  # elapsed at the working size's last step
        self.detail = None  # the refinement: [last elapsed, steps, tiles, photo pixels]
        self.result = None
        self.first_seen: dict[str, float] = {}  # event kind → seconds after launch

    def on_event(self, event: dict) -> None:
        kind = event["event"]
        self.first_seen.setdefault(kind, round(time.monotonic() - self.launched, 3))
        if kind == "started":
            self.device = event.get("device")
            self.precision = event.get("precision", "fp32")
            self.planned = event.get("scales", [])
            self.planned_detail = bool(event.get("detail"))
        elif kind == "progress":
            p = event["progress"]
            if self.first_step_at is None:
                self.first_step_at = time.monotonic()
            elapsed = float(event.get("elapsed_s", 0))
            pixels = event.get("pixels") or event.get("width", 0) * event.get("height", 0)
            mark = self.marks.setdefault(p.scale, [pixels, elapsed, 0.0, 0])
            mark[2] = elapsed
            mark[3] += 1
            if not p.detail:
                self.working_end = elapsed
            else:
                self.detail = self.detail or [0.0, 0, p.tiles,
                                              event.get("width", 0) * event.get("height", 0)]
                self.detail[0], self.detail[1] = elapsed, self.detail[1] + 1
        elif kind == "result":
            self.result = event

    def report(self) -> None:
        """Prints when each kind of event first came, with NST_PLUGIN_TIMINGS set."""
        if os.environ.get("NST_PLUGIN_TIMINGS"):
            text = ", ".join(f"{kind} {at:.2f} s" for kind, at in self.first_seen.items())
            print(f"nst-timings: {text}", file=sys.stderr, flush=True)

    def calibration(self) -> dict | None:
        points = [(pixels, (last - first) / (steps - 1))
                  for pixels, first, last, steps in self.marks.values() if steps > 2]
        if not points or self.first_step_at is None or not self.device:
            return None
        a, b = _fit_line(points)
        first_pixels = self.marks[min(self.marks)][0]
        startup = self.first_step_at - self.launched - (a + b * first_pixels)
        fractions = {}
        working = len(self.planned) - (1 if self.planned_detail else 0)
        if self.result and self.result.get("stopped") in ("completed", "converged") \
                and working in self.marks:
            top = self.planned[working - 1]
            fractions[str(max(top[0], top[1]))] = round(
                self.marks[working][3] / max(1, top[2]), 3)
        calibration = {"device": self.device, "precision": self.precision,
                       "startup_s": round(max(0.0, startup), 3),
                       "step_s": round(a, 6), "step_s_per_megapixel": round(b * 1e6, 6),
                       "top_fractions": fractions}
        if self.detail:
            last, ticks, tiles, pixels = self.detail
            calibration["detail_s_per_megapixel_step"] = round(
                (last - self.working_end) / (ticks / tiles * pixels / 1e6), 6)
        return calibration


def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``t = a + b·x`` through the points (through 0 for a single one)."""
    if len(points) == 1:
        x, t = points[0]
        return 0.0, t / x
    n = len(points)
    mx = sum(x for x, _ in points) / n
    mt = sum(t for _, t in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (t - mt) for x, t in points) / sxx if sxx else mt / mx
    a = mt - b * mx
    if a < 0:  # not physical: a step cannot take negative time
        return 0.0, sum(t for _, t in points) / sum(x for x, _ in points)
    return a, max(b, 0.0)


def load_calibration(path: str | os.PathLike) -> dict | None:
    """The speed measured by earlier runs, or None. A damaged one (a missing or
    mistyped field, a number that is not finite, not a regular file) is set aside
    as ``*.bad``: the dialog opens without an estimate and the next run measures
    anew, instead of every run failing until the file is deleted by hand."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError("not a regular file")
        data = json.loads(path.read_text(encoding="utf-8"))
        _check_calibration(data)
        return data
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        try:
            os.replace(path, f"{path}.bad")
        except OSError:
            pass
        return None


def _check_calibration(data) -> None:
    """Raises ValueError unless ``data`` is a calibration the estimate can use."""
    def number(value, positive: bool = False) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueError(f"not a usable number: {value!r}")

    if not isinstance(data, dict) or data.get("device") not in ("cpu", "cuda", "mps"):
        raise ValueError("no device")
    if not isinstance(data.get("precision", "fp32"), (str, type(None))):
        raise ValueError("precision is not a name")
    for key in ("startup_s", "step_s", "step_s_per_megapixel"):
        number(data[key])
    fractions = data.get("top_fractions", {})
    if not isinstance(fractions, dict) or not all(isinstance(key, str) for key in fractions):
        raise ValueError("top_fractions is not a table")
    for value in fractions.values():
        number(value, positive=True)
    if "detail_s_per_megapixel_step" in data:
        number(data["detail_s_per_megapixel_step"], positive=True)


def save_calibration(path: str | os.PathLike, new: dict) -> None:
    """Stores ``new`` (from :meth:`SpeedLog.calibration`), keeping what was measured
    before and not this time (shares of top-scale steps at other sizes, the
    refinement's speed) when it was on the same device in the same precision
    (bf16 halves the time of a step); quiet on failure."""
    old = load_calibration(path) or {}
    if (old.get("device"), old.get("precision")) == (new["device"], new.get("precision")):
        if isinstance(old.get("top_fractions"), dict):
            new["top_fractions"] = {**old["top_fractions"], **new.get("top_fractions", {})}
        if "detail_s_per_megapixel_step" in old:
            new.setdefault("detail_s_per_megapixel_step", old["detail_s_per_megapixel_step"])
    try:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(new, handle)
        os.replace(tmp, path)
    except OSError:
        pass


# Share of the top scale's steps a run takes before the convergence rule stops it,
# where none was measured at that size yet: 0.67 at 256 px, 0.90 at 512 px and 1.0 at
# 1024 px here (benchmarks/RESULTS.md); erring long is kinder than erring short.
DEFAULT_TOP_FRACTION = 1.0
# The refinement at full size works in overlapping tiles: pixel-steps per photo pixel
# and step, about, until a refinement has been measured here.
DETAIL_OVERLAP = 1.3


def planned_run(width: int, height: int, settings: dict, device: str):
    """The engine's own plan of a run of ``settings`` on ``device``: its settings and
    working scales (the refinement at full size comes after them). A run the engine
    would refuse (a setting out of range, an image too thin for its max size) is the
    engine's message, as ClientError ``bad_input``."""
    try:
        knobs = Settings.from_dict(settings)
        max_size = knobs.max_size or plan.auto_max_size(device)
        return knobs, plan.plan_scales(width, height, max_size, knobs.iterations)
    except EngineError as error:
        raise ClientError(error.kind, error.message[:1].upper() + error.message[1:] + ".") \
            from None


def estimate_seconds(calibration: dict | None, width: int, height: int,
                     settings: dict) -> float | None:
    """Seconds a run of these settings should take here, or None before the first run;
    ClientError for a run the engine would refuse (:func:`planned_run`)."""
    device = (calibration or {}).get("device") or \
        ("cpu" if settings.get("device", "auto") in ("auto", "cpu") else settings["device"])
    knobs, scales = planned_run(width, height, settings, device)
    if not calibration:
        return None
    top = scales[-1]
    fractions = calibration.get("top_fractions") or {}
    fraction = fractions.get(str(max(top.width, top.height)), DEFAULT_TOP_FRACTION)
    seconds = float(calibration["startup_s"])
    for scale in scales:
        steps = max(1, scale.steps * min(1.0, fraction)) if scale is top else scale.steps
        per_step = calibration["step_s"] + \
            calibration["step_s_per_megapixel"] * scale.width * scale.height / 1e6
        seconds += steps * per_step
    if knobs.refines(device) and (top.width, top.height) != (width, height):
        rate = calibration.get("detail_s_per_megapixel_step") or \
            DETAIL_OVERLAP * calibration["step_s_per_megapixel"]
        seconds += knobs.refinement_steps(device) * width * height / 1e6 * rate
    return seconds


def format_estimate(seconds: float | None, device: str | None) -> str:
    if seconds is None:
        return "Time: measured on the first run, then estimated here before each run."
    where = {"cpu": "the processor", "cuda": "the GPU", "mps": "the GPU"}.get(device, device)
    if seconds < 60:
        text = f"about {max(5, int(round(seconds / 5.0)) * 5)} s"
    elif seconds < 3600:
        text = f"about {int(round(seconds / 60.0))} min"
    else:
        text = f"about {seconds / 3600:.1f} h"
    return f"Estimated time: {text} on {where}"


def user_message(error: ClientError) -> str:
    return f"{error.message}\n\n{HINTS.get(error.kind, '')}".strip()
