"""The plug-in's side of the engine protocol (docs/protocol.md), standard library only.

GIMP's bundled Python has neither torch nor numpy, so this module writes and
reads ``.npy`` arrays by hand, finds the engine's Python, and runs the engine as a
subprocess, turning its JSON-lines events into callbacks.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path

PROTOCOL_VERSION = 1
CONFIG_NAME = "nst-engine.json"  # written by install.sh next to the plug-in
TEMP_PREFIX = "nst-gimp-"
# Set by GIMP's bundled Python and harmful to a different interpreter.
DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "GI_TYPELIB_PATH", "LD_LIBRARY_PATH")
NPY_MAGIC = b"\x93NUMPY"
NATIVE_F4 = "<f4" if sys.byteorder == "little" else ">f4"

HINTS = {
    "not_installed": "See the README's installation section; 'install.sh --check' tells what "
    "is missing.",
    "no_weights": "Install the network weights: run install.sh again, or "
    "'{python} -m nst_engine weights download'.",
    "out_of_memory": "Lower 'Max size', select a smaller area, or close other GPU programs.",
    "bad_input": "Check the style image and the options.",
    "internal": "Run 'install.sh --check'; if it reports no problem, please report this.",
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


def write_npy(path: str | os.PathLike, data: bytes, shape: tuple[int, ...]) -> None:
    """Writes native-endian float32 bytes as a version 1.0 ``.npy`` file."""
    expected = 4
    for dim in shape:
        expected *= dim
    if len(data) != expected:
        raise ValueError(f"{len(data)} bytes do not fill a float32 array of shape {shape}")
    header = repr({"descr": NATIVE_F4, "fortran_order": False, "shape": tuple(shape)})
    padding = 64 - (len(NPY_MAGIC) + 4 + len(header) + 1) % 64
    header = header + " " * padding + "\n"
    with open(path, "wb") as handle:
        handle.write(NPY_MAGIC + b"\x01\x00" + struct.pack("<H", len(header)))
        handle.write(header.encode("latin1"))
        handle.write(data)


def read_npy(path: str | os.PathLike) -> tuple[bytes, tuple[int, ...]]:
    """Reads a float32 C-order ``.npy``; returns native-endian bytes and the shape."""
    with open(path, "rb") as handle:
        if handle.read(6) != NPY_MAGIC:
            raise ValueError(f"{path} is not a .npy file")
        major = handle.read(2)[0]
        size_format = "<H" if major == 1 else "<I"
        (length,) = struct.unpack(size_format, handle.read(struct.calcsize(size_format)))
        header = ast.literal_eval(handle.read(length).decode("latin1"))
        data = handle.read()
    descr, shape = header["descr"], tuple(header["shape"])
    if descr not in ("<f4", ">f4") or header["fortran_order"]:
        raise ValueError(f"unexpected array type {descr} (fortran={header['fortran_order']})")
    expected = 4
    for dim in shape:
        expected *= dim
    if len(data) != expected:
        raise ValueError(f"{path} is truncated: {len(data)} of {expected} bytes")
    if descr != NATIVE_F4:
        swapped = array("f", data)
        swapped.byteswap()
        data = swapped.tobytes()
    return data, shape


def find_engine(plugin_dir: str | os.PathLike) -> list[str]:
    """The command prefix that runs the engine's Python.

    ``NST_ENGINE_PYTHON`` wins; otherwise the config install.sh wrote beside the
    plug-in: ``{"python": PATH}``, plus ``"launcher": ["flatpak-spawn", "--host"]``
    for a Flatpak GIMP, whose sandbox cannot see the host's files.
    """
    override = os.environ.get("NST_ENGINE_PYTHON")
    launcher: list[str] = []
    if override:
        python = override
    else:
        config = Path(plugin_dir) / CONFIG_NAME
        try:
            settings = json.loads(config.read_text(encoding="utf-8"))
            python = settings["python"]
            launcher = list(settings.get("launcher", []))
        except (OSError, ValueError, KeyError, TypeError):
            raise ClientError(
                "not_installed",
                f"The style transfer engine is not set up ({config} is missing or "
                "unreadable). Run install.sh from the plug-in's download folder.",
            ) from None
    if not launcher and not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ClientError(
            "not_installed",
            f"The engine's Python ({python}) does not exist or cannot run. "
            "Run install.sh again to repair the installation.",
        )
    return [*launcher, python]


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


def write_request(workdir: str, content: str, style: str, settings: dict) -> str:
    """Writes ``request.json`` into ``workdir``; the result goes to ``result.npy`` there."""
    request = {
        "protocol": PROTOCOL_VERSION,
        "content": content,
        "styles": [style],
        "output": "result.npy",
        "settings": settings,
    }
    path = os.path.join(workdir, "request.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(request, handle)
    return path


def settings_from_arguments(
    style_strength: float, iterations: int, max_size: int, preserve_colors: bool,
    seed: int, device: str,
) -> dict:
    """Maps the procedure's arguments onto engine settings (docs/protocol.md)."""
    return {
        "style_strength": float(style_strength),
        "iterations": int(iterations),
        "max_size": int(max_size),
        "preserve_colors": bool(preserve_colors),
        "seed": int(seed),
        "device": str(device),
    }


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


def run_engine(engine: list[str], request_path: str, on_progress=None, on_start=None) -> str:
    """Runs one request; returns the result path or raises ClientError.

    The engine's stdin stays open and unused: when this process dies, the pipe
    closes and the engine cancels itself. Its stderr goes to a file beside the
    request, read back when it fails without an ``error`` event.
    """
    workdir = os.path.dirname(request_path)
    stderr_path = os.path.join(workdir, "engine-stderr.txt")
    command = [*engine, "-m", "nst_engine", "run-request", request_path]
    with open(stderr_path, "wb") as stderr:
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                env=engine_environment(), cwd=workdir,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except OSError as exc:
            raise ClientError("not_installed", f"Could not start the engine: {exc}") from None
        result = error = None
        try:
            for raw in process.stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                kind = event.get("event")
                if kind == "progress" and on_progress:
                    on_progress(Progress(
                        event["step"], event["total"], event["fraction"],
                        event.get("eta_s", 0.0), event.get("scale", 1), event.get("scales", 1),
                    ))
                elif kind == "started" and on_start:
                    on_start(event)
                elif kind == "result":
                    result = event["path"]
                elif kind == "error":
                    error = ClientError(event.get("kind", "internal"), event.get("message", ""))
        finally:
            if process.poll() is None:
                process.stdin.close()
            code = process.wait()
    if error is not None:
        raise error
    if code != 0 or result is None:
        lines = Path(stderr_path).read_text(encoding="utf-8", errors="replace").splitlines()
        lines = [line for line in lines if line.strip() and not line[0].isspace()]
        tail = lines[-1] if lines else f"exit status {code}"
        raise ClientError("internal", f"The engine stopped unexpectedly: {tail}")
    return result


def user_message(error: ClientError, python: str = "python3") -> str:
    hint = HINTS.get(error.kind, "")
    return f"{error.message}\n\n{hint.format(python=python)}".strip()
