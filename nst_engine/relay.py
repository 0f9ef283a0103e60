"""How a client reaches the warm engine (``service.py``): the private runtime folder,
the socket, and ``nst-engine connect`` — what the plug-in runs, locally or through
``ssh`` — which joins stdin/stdout to the service, starting a service when none
answers (or when the one there has stopped answering), and runs the request itself,
one-shot, when no service can be had. Standard library only: ``connect`` must start
in milliseconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from nst_contract.wire import ENGINE_HEARTBEAT_S, SILENT_ENGINE_S, deadline

from . import stopping

# What decides the network and the data a run uses: a client whose values differ
# reaches a service of its own (``socket_path``), never one started with other weights.
RUN_ENVIRONMENT = ("NST_WEIGHTS", "NST_DATA_DIR", "XDG_DATA_HOME", "XDG_CACHE_HOME", "HOME")
MAX_SOCKET_PATH = 107  # bytes of a Unix socket's path (sun_path, less its NUL)
SOCKET_NAME_BYTES = len("/engine-12345678.sock")
DEFAULT_IDLE_S = 600.0
START_WAIT_S = 60.0  # for a new service to import torch, load the network and listen
# The service greets every connection at once from a thread that does nothing else:
# no greeting in this time is a stopped (or hung) service, and a fresh one is started.
GREETING_S = deadline(5.0)
# The relay gives up on a silent service a little after the plug-in would: the
# plug-in's message is the better one; this bound is for a client already gone.
RELAY_SILENCE_S = SILENT_ENGINE_S + deadline(5.0)
LOG_LIMIT = 1 << 20  # bytes of service.log before it is started anew
F_SETPIPE_SZ = 1031  # Linux's fcntl command (fcntl.F_SETPIPE_SZ from Python 3.10)
CHUNK = 1 << 20  # bytes relayed at once


def runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR/nst-engine``, else ``/tmp/nst-engine-<uid>`` (also where the
    first would make a socket path longer than a Unix socket takes): made 0700, and
    refused unless it is ours and private."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path("/tmp") / f"nst-engine-{os.getuid()}"
    if base and os.path.isdir(base) and os.stat(base).st_uid == os.getuid() \
            and len(os.fsencode(Path(base) / "nst-engine")) + SOCKET_NAME_BYTES <= MAX_SOCKET_PATH:
        folder = Path(base) / "nst-engine"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not os.path.isdir(folder) \
            or os.path.islink(folder):
        raise PermissionError(
            f"{folder} is not a private folder of this user: it must be this user's own "
            "folder and closed to others (remove it, and the engine makes it anew)")
    return folder


def socket_path(folder: Path) -> Path:
    """The socket of the service for this process's ``RUN_ENVIRONMENT``, in ``folder``:
    ``engine-<digest>.sock``, short enough for a Unix socket's 107 bytes."""
    values = json.dumps({name: os.environ.get(name) for name in RUN_ENVIRONMENT},
                        sort_keys=True)
    return folder / f"engine-{hashlib.sha256(values.encode()).hexdigest()[:8]}.sock"


def in_the_way(path: Path) -> bool:
    """Something other than a socket (a folder, a file) holds the socket's path."""
    try:
        return not stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


class Reached:
    """A connection to a service that greeted it: ``sock``, the service's ``pid``, and
    the bytes that came after the greeting (events, to be read first)."""

    def __init__(self, sock: socket.socket, pid: int, after: bytes) -> None:
        self.sock, self.pid, self.after = sock, pid, after


class Stopped(Exception):
    """A service holds the socket but does not greet: stopped, hung or swapped out."""


def reach(path: Path) -> Reached | None:
    """The service at ``path``: None when nothing listens there; Stopped when
    something accepts but no greeting comes within GREETING_S."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(GREETING_S)
    try:
        sock.connect(str(path))
    except (BlockingIOError, TimeoutError):  # a full backlog: nobody accepts
        sock.close()
        raise Stopped(path) from None
    except OSError:
        sock.close()
        return None
    data = b""
    try:
        while b"\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:  # the timeout among them
        pass
    line, _, after = data.partition(b"\n")
    try:
        greeting = json.loads(line)
        pid = int(greeting["pid"]) if greeting.get("service") == "nst-engine" else 0
    except (ValueError, TypeError, KeyError, AttributeError):
        pid = 0
    if not pid:
        sock.close()
        raise Stopped(path)
    sock.settimeout(None)
    return Reached(sock, pid, after)


def running() -> Reached | None:
    """This user's service when one is running and answers (none is started)."""
    if not hasattr(socket, "AF_UNIX") or not hasattr(os, "getuid"):
        return None
    try:
        return reach(socket_path(runtime_dir()))
    except (OSError, Stopped):
        return None


# --- connect: the plug-in's (or ssh's) way in ---------------------------------------

def add_idle_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--idle-timeout", type=float, default=idle_default(), metavar="S",
                        help="seconds without a request before the service exits "
                        "(default %(default)s; $NST_SERVICE_IDLE_S)")


def connect_main(argv: list[str]) -> int:
    """``nst-engine connect [--idle-timeout S]``, without the command line's imports."""
    parser = argparse.ArgumentParser(prog="nst-engine connect")
    add_idle_argument(parser)
    return connect(parser.parse_args(argv).idle_timeout)


def connect(idle_s: float = DEFAULT_IDLE_S) -> int:
    """Joins stdin/stdout to the service, starting it when none answers; runs the
    request here, one-shot, when no service can be had."""
    stopping.listen(lambda: None, lambda: None)  # until relaying: ending is enough
    if not hasattr(socket, "AF_UNIX") or not hasattr(os, "getuid"):  # Windows
        return _one_shot()
    try:
        folder = runtime_dir()
    except OSError as exc:
        print(f"nst-engine: no private runtime folder ({exc}); running one-shot",
              file=sys.stderr)
        return _one_shot()
    path = socket_path(folder)
    if in_the_way(path):  # a service could not bind there: no start to wait for
        print(f"nst-engine: {path} is in the way of the engine service's socket (it is "
              "not a socket; remove it); running one-shot", file=sys.stderr)
        return _one_shot()
    try:
        service = reach(path)
    except Stopped:  # the fresh service takes its socket's place (service.py)
        print(f"nst-engine: the engine service at {path} does not answer (stopped or "
              "hung); starting a fresh one", file=sys.stderr, flush=True)
        service = None
    service = service or _start(folder, path, idle_s)
    if service is None:
        print("nst-engine: the engine service could not be started; running one-shot "
              f"(see {folder / 'service.log'})", file=sys.stderr)
        return _one_shot()
    if not _relay(service):
        print(f"nst-engine: the engine service (pid {service.pid}) stopped answering: "
              f"nothing for {RELAY_SILENCE_S:.0f} s; its log: {folder / 'service.log'}",
              file=sys.stderr)
        return 1
    # Only read when the stream ended without its last event: the service crashed.
    print(f"nst-engine: the engine service (pid {service.pid}) closed the connection; "
          f"its log: {folder / 'service.log'}", file=sys.stderr)
    return 0


def _start(folder: Path, path: Path, idle_s: float) -> Reached | None:
    """Starts a service and waits for it, telling the client that the engine is alive
    meanwhile (the service loads torch and the network: seconds)."""
    log = folder / "service.log"
    if log.exists() and log.stat().st_size > LOG_LIMIT:
        log.unlink()
    with open(log, "ab") as stderr:
        # In the private runtime folder, not the client's (a plug-in's temporary
        # folder, removed after its run), which the service would outlive.
        process = subprocess.Popen(
            [sys.executable, "-m", "nst_engine", "serve", "--idle-timeout", str(idle_s)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            cwd=folder, start_new_session=True, close_fds=True)
    deadline_at = time.monotonic() + START_WAIT_S
    told = 0.0  # at once: the client may have waited for a stopped service already
    while time.monotonic() < deadline_at:
        try:
            service = reach(path)
        except Stopped:
            service = None
        if service is not None:
            return service
        if process.poll() is not None:  # lost a race with another starting service: fine
            try:
                return reach(path)
            except Stopped:
                return None
        if time.monotonic() - told >= ENGINE_HEARTBEAT_S:
            _write_all(sys.stdout.buffer.fileno(), b'{"event":"alive"}\n')
            told = time.monotonic()
        time.sleep(0.05)
    return None


def _relay(service: Reached) -> bool:
    """Copies stdin to the service and the service to stdout until the service is
    done; False if it fell silent for RELAY_SILENCE_S (or the connection broke).
    stdin's end (the client has gone) is passed on: the service cancels the run. So
    is a signal to this process."""
    sock = service.sock
    stdin, stdout = sys.stdin.buffer.fileno(), sys.stdout.buffer.fileno()
    for fd in (stdin, stdout):
        widen_pipe(fd)

    def end_upstream() -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def upstream() -> None:
        try:
            while data := os.read(stdin, CHUNK):
                sock.sendall(data)
        except OSError:
            pass
        end_upstream()

    stopping.listen(end_upstream, lambda: None)
    threading.Thread(target=upstream, name="upstream", daemon=True).start()
    sock.settimeout(RELAY_SILENCE_S)
    try:
        _write_all(stdout, service.after)
        while data := sock.recv(CHUNK):
            _write_all(stdout, data)
    except BrokenPipeError:  # the client has gone: nobody to tell
        return True
    except OSError:  # silent too long, or the connection broke
        return False
    finally:
        sock.close()
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def widen_pipe(fd: int) -> None:
    """Gives a pipe the largest buffer an unprivileged process may (Linux; 1 MiB by
    default): with the usual 64 KiB a 384 MB layer crosses it at half the speed."""
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        import fcntl

        fcntl.fcntl(fd, F_SETPIPE_SZ, limit)
    except (OSError, ValueError):  # not a pipe, not Linux, or a lower limit here
        pass


def _one_shot() -> int:
    """This process becomes a one-shot engine (``nst-engine stream``), stdin unread."""
    command = [sys.executable, "-m", "nst_engine", "stream"]
    sys.stdout.flush()
    if os.name == "posix":
        os.execv(sys.executable, command)
    return subprocess.call(command)


def idle_default() -> float:
    try:
        return float(os.environ.get("NST_SERVICE_IDLE_S", DEFAULT_IDLE_S))
    except ValueError:
        return DEFAULT_IDLE_S
