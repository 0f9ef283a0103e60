"""The warm engine: ``nst-engine serve`` keeps torch, the device and the network loaded
and runs protocol-3 requests (``stream.py``) one at a time from a Unix socket;
``nst-engine connect`` joins stdin/stdout to it, starting it on demand.

The socket lives in a private folder (0700) of the user's runtime directory, and
the service serves only connections whose peer is the same user (SO_PEERCRED).
Nothing listens on TCP. ``connect`` is what the plug-in runs, locally or through
``ssh`` on a GPU machine; where the service cannot be started or reached it runs
the request itself, one-shot. This module imports only the standard library at
the top: ``connect`` must start in milliseconds.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

# What decides the network and the data a run uses: a client whose values differ
# reaches a service of its own (``socket_path``), never one started with other weights.
RUN_ENVIRONMENT = ("NST_WEIGHTS", "NST_DATA_DIR", "XDG_DATA_HOME", "XDG_CACHE_HOME", "HOME")
MAX_SOCKET_PATH = 107  # bytes of a Unix socket's path (sun_path, less its NUL)
SOCKET_NAME_BYTES = len("/engine-12345678.sock")
DEFAULT_IDLE_S = 600.0
START_WAIT_S = 60.0
FIRST_WAIT_S = 10.0
LOG_LIMIT = 1 << 20
F_SETPIPE_SZ = 1031  # Linux's fcntl command (fcntl.F_SETPIPE_SZ from Python 3.10)
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_RETRY_S = 0.1


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


def peer_uid(conn: socket.socket) -> int | None:
    """The connecting process's user (Linux SO_PEERCRED); None where unknown."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    data = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    return struct.unpack("3i", data)[1]


def running() -> socket.socket | None:
    """A connection to this user's service when one is running (none is started)."""
    if not hasattr(socket, "AF_UNIX") or not hasattr(os, "getuid"):
        return None
    try:
        return _connect(socket_path(runtime_dir()))
    except OSError:
        return None


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


# --- the service -------------------------------------------------------------------

def serve(idle_s: float = DEFAULT_IDLE_S) -> int:
    """Serves requests until ``idle_s`` seconds pass without one. Imports torch."""
    from .errors import bad_input
    from .transfer import Warm

    try:
        folder = runtime_dir()
    except OSError as exc:
        raise bad_input(f"no private runtime folder for the service: {exc}") from None
    path = socket_path(folder)
    if _in_the_way(path):
        raise bad_input(f"{path} is in the way of the service's socket (it is not a "
                        "socket); remove it")
    listener = _listen(path)
    if listener is None:
        print("nst-engine: a service is already running", file=sys.stderr)
        return 0
    inode = os.stat(path).st_ino
    waiting: queue.Queue[socket.socket] = queue.Queue()
    busy = threading.Event()

    def accept() -> None:
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
            if busy.is_set() or not waiting.empty():
                _tell(conn, {"event": "queued", "ahead": waiting.qsize() + busy.is_set()})
            waiting.put(conn)

    threading.Thread(target=accept, name="accept", daemon=True).start()
    warm = Warm()
    print(f"nst-engine service: listening on {path}", file=sys.stderr, flush=True)
    wait = max(idle_s, FIRST_WAIT_S)  # the client that started it is on its way
    try:
        while True:
            try:
                conn = waiting.get(timeout=wait)
                wait = idle_s
            except queue.Empty:
                # Unlink first: new clients then start a new service, and the ones that
                # connected just before (in the listen backlog) are still served here.
                if _owns(path, inode):
                    path.unlink()
                time.sleep(0.3)
                if waiting.empty():
                    print("nst-engine service: idle, exiting", file=sys.stderr, flush=True)
                    return 0
                continue
            busy.set()
            try:
                _handle(conn, warm, folder)
            except OSError:  # a connection that broke: the next one is served all the same
                traceback.print_exc()
            busy.clear()
            warm.release_memory()
    finally:
        listener.close()
        if _owns(path, inode):
            path.unlink()


def _handle(conn: socket.socket, warm, folder: Path) -> None:
    """Runs one connection's request, answering on it; never raises for the request."""
    from .control import Control
    from .errors import EngineError
    from .stream import serve_one
    from .wire import Channel, Emitter, error_event

    control = Control()
    with conn, conn.makefile("wb") as wfile:
        emit = Emitter(wfile, on_gone=control.cancel.set)
        try:
            serve_one(Channel(conn.recv, conn.recv_into), emit, control, warm)
        except EngineError as error:
            emit(error_event(error))
        except Exception as exc:  # one bad request must not end the service
            traceback.print_exc()
            emit(error_event(EngineError(
                "internal", f"internal error in the engine service "
                f"({type(exc).__name__}: {exc}); its log: {folder / 'service.log'}")))
        try:  # wakes this connection's command reader
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _in_the_way(path: Path) -> bool:
    """Something other than a socket (a folder, a file) holds the socket's path."""
    try:
        return not stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _listen(path: Path) -> socket.socket | None:
    """Binds the socket (0600), replacing a stale one; None if a live service has it."""
    if path.exists():
        live = _connect(path)
        if live is not None:
            live.close()
            return None
        path.unlink()
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


def _tell(conn: socket.socket, event: dict) -> None:
    try:
        conn.sendall(json.dumps(event).encode() + b"\n")
    except OSError:
        pass


# --- connect: the plug-in's (or ssh's) way in ---------------------------------------

def connect(idle_s: float = DEFAULT_IDLE_S) -> int:
    """Joins stdin/stdout to the service, starting it when none answers; runs the
    request here, one-shot, when no service can be had."""
    if not hasattr(socket, "AF_UNIX") or not hasattr(os, "getuid"):  # Windows
        return _one_shot()
    try:
        folder = runtime_dir()
    except OSError as exc:
        print(f"nst-engine: no private runtime folder ({exc}); running one-shot",
              file=sys.stderr)
        return _one_shot()
    path = socket_path(folder)
    if _in_the_way(path):  # a service could not bind there: no start to wait for
        print(f"nst-engine: {path} is in the way of the engine service's socket (it is "
              "not a socket; remove it); running one-shot", file=sys.stderr)
        return _one_shot()
    sock = _connect(path) or _start(folder, path, idle_s)
    if sock is None:
        print("nst-engine: the engine service could not be started; running one-shot "
              f"(see {folder / 'service.log'})", file=sys.stderr)
        return _one_shot()
    _relay(sock)
    # Only read when the stream ended without a result or error: the service crashed.
    print(f"nst-engine: the engine service closed the connection; its log: "
          f"{folder / 'service.log'}", file=sys.stderr)
    return 0


def _start(folder: Path, path: Path, idle_s: float) -> socket.socket | None:
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
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        sock = _connect(path)
        if sock is not None:
            return sock
        if process.poll() is not None:
            return _connect(path)  # lost a race with another starting service: fine
        time.sleep(0.05)
    return None


def _relay(sock: socket.socket) -> None:
    """Copies stdin to the socket and the socket to stdout until the service is done.
    stdin's end (the client has gone) is passed on: the service cancels the run."""
    stdin, stdout = sys.stdin.buffer.fileno(), sys.stdout.buffer.fileno()
    for fd in (stdin, stdout):
        widen_pipe(fd)

    def upstream() -> None:
        try:
            while data := os.read(stdin, 1 << 20):
                sock.sendall(data)
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, name="upstream", daemon=True).start()
    try:
        while data := sock.recv(1 << 20):
            view = memoryview(data)
            while view:
                view = view[os.write(stdout, view):]
    except OSError:
        pass
    sock.close()


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
    from .cli import main

    return main(["stream"])


def idle_default() -> float:
    try:
        return float(os.environ.get("NST_SERVICE_IDLE_S", DEFAULT_IDLE_S))
    except ValueError:
        return DEFAULT_IDLE_S
