"""Where the engine runs and the command that reaches it: ``nst-engine.json`` (written
by install.sh beside the plug-in), SSH for another machine, and the environment the
engine is started with; standard library only."""

from __future__ import annotations

import json
import os
import shlex
import stat
from pathlib import Path

from nst_messages import ClientError

CONFIG_NAME = "nst-engine.json"  # written by install.sh next to the plug-in

REMOTE_PYTHON = ".local/share/nst-engine/venv/bin/python"  # install.sh's, from the home

# Set by GIMP's bundled Python and harmful to a different interpreter.
DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME", "GI_TYPELIB_PATH", "LD_LIBRARY_PATH")


def engine_command(plugin_dir: str | os.PathLike) -> tuple[list[str], str | None]:
    """The command that reaches the engine, and the SSH host it runs on (None: this
    computer), from ``NST_ENGINE_PYTHON`` or the config install.sh wrote beside the
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
    return [*launcher, python, "-m", "nst_engine", "connect"], None

DEVICES = ("cuda", "mps", "cpu")  # as the engine names them


def available_devices(plugin_dir: str | os.PathLike) -> list[str] | None:
    """The devices this computer's engine has (``devices``, which install.sh found in
    the engine's torch), or None where unknown: an engine on another machine, a
    config from before, or one that cannot be read (the run will say why)."""
    try:
        config = read_config(Path(plugin_dir) / CONFIG_NAME, need_python=False)
    except ClientError:
        return None
    if config.get("remote") is not None:
        return None
    return config.get("devices")


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
    if "devices" in config:
        _require(isinstance(config["devices"], list) and config["devices"]
                 and all(device in DEVICES for device in config["devices"]),
                 f"{name}: devices must list some of {', '.join(DEVICES)}")
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
