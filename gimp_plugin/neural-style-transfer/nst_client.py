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
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

PROTOCOL_VERSION = 2  # docs/protocol.md; the engine also still reads 1
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


def write_request(workdir: str, content: str, style: str, settings: dict,
                  preview_interval_s: float = 0.0) -> str:
    """Writes ``request.json`` into ``workdir``; the result goes to ``result.npy`` there,
    previews (when ``preview_interval_s`` > 0) to ``preview.png``."""
    request = {
        "protocol": PROTOCOL_VERSION,
        "content": content,
        "styles": [style],
        "output": "result.npy",
        "preview_interval_s": preview_interval_s,
        "settings": settings,
    }
    path = os.path.join(workdir, "request.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(request, handle)
    return path


def settings_from_config(value_of) -> dict:
    """Engine settings from the procedure's arguments, read by name (``value_of(name)``),
    as docs/protocol.md maps them: ``style-strength`` → ``style_strength``, …"""
    kinds = {"style-strength": float, "iterations": int, "max-size": int,
             "preserve-colors": bool, "seed": int, "device": str}
    return {name.replace("-", "_"): kind(value_of(name)) for name, kind in kinds.items()}


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
    """One engine process running a request: events in, ``finish``/``cancel`` out.

    The engine's stdin stays open: when this process dies, the pipe closes and the
    engine cancels itself. Its stderr goes to a file beside the request, kept in the
    user's cache folder when the engine fails with an internal error.
    """

    def __init__(self, engine: list[str], request_path: str, on_event=None) -> None:
        self.workdir = os.path.dirname(request_path)
        self.stderr_path = os.path.join(self.workdir, "engine-stderr.txt")
        self.on_event = on_event
        self.result: dict | None = None
        self.error: ClientError | None = None
        self.garbage = ""  # the last line that was not an event
        self._pending = b""
        command = [*engine, "-m", "nst_engine", "run-request", request_path]
        try:
            with open(self.stderr_path, "wb") as stderr:
                self.process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                    env=engine_environment(), cwd=self.workdir,
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
        except OSError as exc:
            raise ClientError("not_installed", f"Could not start the engine: {exc}") from None

    @property
    def stdout_fd(self) -> int:
        return self.process.stdout.fileno()

    def read_available(self) -> bool:
        """Reads what the engine has written (one read) and handles every whole line;
        False at the end of its output."""
        chunk = os.read(self.stdout_fd, 65536)
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self.handle_line(line)
        return bool(chunk)

    def handle_line(self, raw: bytes) -> None:
        event = parse_event(raw)
        if event is None:
            text = raw.decode("utf-8", "replace").strip()
            self.garbage = text[:200] or self.garbage
            return
        if event["event"] == "result":
            self.result = event
        elif event["event"] == "error":
            self.error = ClientError(str(event.get("kind", "internal")),
                                     str(event.get("message", "")))
        if self.on_event:
            self.on_event(event)

    def send(self, command: str) -> None:
        """``finish`` (keep the image as it is now) or ``cancel``; quiet if the engine
        has gone."""
        try:
            self.process.stdin.write(command.encode() + b"\n")
            self.process.stdin.flush()
        except (OSError, ValueError):
            pass

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

    def outcome(self) -> dict:
        """Waits for the process and returns the ``result`` event, or raises ClientError."""
        try:
            self.process.stdin.close()
        except OSError:
            pass
        code = self.process.wait()
        self.process.stdout.close()
        if self.error is not None:
            if self.error.kind == "internal":
                self.error.message += log_note(keep_log(self.stderr_path))
            raise self.error
        if code != 0 or self.result is None or not isinstance(self.result.get("path"), str):
            lines = Path(self.stderr_path).read_text(encoding="utf-8", errors="replace")
            lines = [line for line in lines.splitlines() if line.strip()]
            tail = next((line for line in reversed(lines) if not line[0].isspace()),
                        self.garbage or f"exit status {code}")
            raise ClientError("internal", f"The engine stopped unexpectedly: {tail}"
                              + log_note(keep_log(self.stderr_path)))
        return self.result


def parse_event(raw: bytes) -> dict | None:
    """A protocol event, or None for anything else (garbage, a non-object, a progress
    event without its numbers)."""
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    if event["event"] == "progress":
        try:
            event["progress"] = Progress(
                int(event["step"]), int(event["total"]), float(event["fraction"]),
                float(event.get("eta_s", 0.0)), int(event.get("scale", 1)),
                int(event.get("scales", 1)))
        except (KeyError, TypeError, ValueError):
            return None
    return event


def run_engine(engine: list[str], request_path: str, on_progress=None, on_event=None) -> str:
    """Runs one request to its end (no window); returns the result path or raises
    ClientError."""

    def dispatch(event: dict) -> None:
        if event["event"] == "progress" and on_progress:
            on_progress(event["progress"])
        if on_event:
            on_event(event)

    run = EngineRun(engine, request_path, dispatch)
    try:
        while run.read_available():
            pass
    finally:
        if run.process.poll() is None and run.result is None:
            run.stop()
    return run.outcome()["path"]


def log_folder() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "nst-gimp" / "logs"


def keep_log(stderr_path: str, keep: int = 5, limit: int = 64 * 1024) -> str | None:
    """Copies the engine's stderr (its last ``limit`` bytes) into the user's cache
    folder, keeping the newest ``keep`` logs; returns the copy's path, or None."""
    try:
        folder = log_folder()
        folder.mkdir(parents=True, exist_ok=True)
        with open(stderr_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            data = handle.read()
        stamp = time.strftime("%Y%m%d-%H%M%S") + f".{time.time_ns() % 10**9:09d}"
        target = folder / f"engine-{stamp}-{os.getpid()}.log"
        target.write_bytes(data)
        for old in sorted(folder.glob("engine-*.log"))[:-keep]:
            old.unlink()
        return str(target)
    except OSError:
        return None


def log_note(path: str | None) -> str:
    return f"\n\nThe engine's log is saved in {path}; please attach it to a report." if path \
        else ""


MIN_SCALE_SIDE = 128  # as nst_engine.planning
MIN_WORK_SIDE = 32


def plan_sizes(width: int, height: int, max_size: int, iterations: int) -> list[tuple]:
    """The engine's coarse-to-fine plan, ``[(w, h, steps), …]`` (the same arithmetic as
    ``nst_engine.planning.plan_scales``; a test keeps the two equal), for estimates."""
    longest = max(width, height)
    sides = [min(max_size, longest)]
    while sides[-1] / 2 >= MIN_SCALE_SIDE:
        sides.append(sides[-1] / 2)
    iterations = max(1, iterations)
    sides = sides[:iterations][::-1]
    extra = iterations - len(sides)
    steps = [1 + extra * 2**i // (2 ** len(sides) - 1) for i in range(len(sides) - 1)]
    steps.append(iterations - sum(steps))
    sizes = []
    for side, count in zip(sides, steps):
        factor = side / longest
        factor = max(factor, MIN_WORK_SIDE / min(width, height)) if factor < 1 else factor
        sizes.append((max(1, round(width * factor)), max(1, round(height * factor)), count))
    return sizes


def auto_max_size(device: str) -> int:
    """The engine's automatic working size (``nst_engine.planning.auto_max_size``)."""
    return 512 if device == "cpu" else 1024


class SpeedLog:
    """Measures a run from its events, for the next runs' time estimates: start-up,
    seconds per step as ``a + b × pixels``, and the share of the top scale's steps
    that runs with the convergence rule."""

    def __init__(self) -> None:
        self.launched = time.monotonic()
        self.device = None
        self.planned: list = []
        self.first_step_at = None
        self.marks: dict[int, list] = {}  # scale → [pixels, first elapsed, last elapsed, steps]
        self.result = None
        self.first_seen: dict[str, float] = {}  # event kind → seconds after launch

    def on_event(self, event: dict) -> None:
        kind = event["event"]
        self.first_seen.setdefault(kind, round(time.monotonic() - self.launched, 3))
        if kind == "started":
            self.device = event.get("device")
            self.planned = event.get("scales", [])
        elif kind == "progress":
            p = event["progress"]
            if self.first_step_at is None:
                self.first_step_at = time.monotonic()
            mark = self.marks.setdefault(
                p.scale, [event.get("width", 0) * event.get("height", 0),
                          float(event.get("elapsed_s", 0)), 0.0, 0])
            mark[2] = float(event.get("elapsed_s", 0))
            mark[3] += 1
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
        top_fraction = None
        if self.result and self.result.get("stopped") in ("completed", "converged") \
                and self.planned and max(self.marks) == len(self.planned):
            top_fraction = self.marks[max(self.marks)][3] / max(1, self.planned[-1][2])
        return {"device": self.device, "startup_s": round(max(0.0, startup), 3),
                "step_s": round(a, 6), "step_s_per_megapixel": round(b * 1e6, 6),
                "top_fraction": top_fraction}


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
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        float(data["startup_s"]), float(data["step_s"]), float(data["step_s_per_megapixel"])
        return data
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_calibration(path: str | os.PathLike, new: dict) -> None:
    """Stores ``new`` (from :meth:`SpeedLog.calibration`), keeping the last known share
    of top-scale steps when this run could not measure it; quiet on failure."""
    old = load_calibration(path) or {}
    if new.get("top_fraction") is None and old.get("device") == new["device"]:
        new["top_fraction"] = old.get("top_fraction")
    try:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(new, handle)
        os.replace(tmp, path)
    except OSError:
        pass


def estimate_seconds(calibration: dict | None, width: int, height: int,
                     settings: dict) -> float | None:
    """Seconds a run of these settings should take here, or None before the first run."""
    if not calibration:
        return None
    max_size = settings["max_size"] or auto_max_size(calibration["device"])
    sizes = plan_sizes(width, height, max_size, settings["iterations"])
    fraction = calibration.get("top_fraction") or 1.0
    seconds = float(calibration["startup_s"])
    for index, (w, h, steps) in enumerate(sizes):
        if index == len(sizes) - 1:
            steps = max(1, steps * min(1.0, fraction))
        per_step = calibration["step_s"] + calibration["step_s_per_megapixel"] * w * h / 1e6
        seconds += steps * per_step
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


def user_message(error: ClientError, python: str = "python3") -> str:
    hint = HINTS.get(error.kind, "")
    return f"{error.message}\n\n{hint.format(python=python)}".strip()
