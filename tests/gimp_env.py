"""Finds or provisions a real GIMP 3 and runs batch scripts in it, for the end-to-end tests.

A ``gimp-console-3.x`` on the PATH is used as it is. Otherwise, as root on
Debian/Ubuntu, ``tests/gimp/provision.sh`` builds (once, cached) a Debian root with
GIMP 3.0 (trixie) or 3.2 (forky) and Debian's torch, and the tests run GIMP in it
with chroot. The plug-in and engine are installed there with the repository's own
``install.sh --python /usr/bin/python3``, as a user with such a Python would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROVISION = REPO / "tests" / "gimp" / "provision.sh"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
HOW_TO_GET_GIMP = (
    "install GIMP 3 (Debian 13: apt install gimp gir1.2-gimp-3.0 python3-gi "
    "gir1.2-freedesktop gir1.2-gegl-0.4 gir1.2-babl-0.1), or run the tests as root on "
    "Debian/Ubuntu so they can build a GIMP root with debootstrap"
)


class GimpUnavailable(Exception):
    pass


class Gimp:
    """One GIMP 3 installation with the plug-in installed into a temporary profile."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.root: Path | None = None
        self.console = shutil.which(f"gimp-console-{version}")
        self.mounted = False
        self.scratch: Path | None = None

    # Paths as GIMP sees them (inside the root) and as this process sees them.
    def inside(self, path: Path) -> str:
        if self.root is None:
            return str(path)
        return "/" + str(path.relative_to(self.root))

    def setup(self) -> None:
        if self.console is None:
            if os.geteuid() != 0 or not shutil.which("apt-get"):
                raise GimpUnavailable(f"no gimp-console-{self.version}; {HOW_TO_GET_GIMP}")
            built = subprocess.run(
                ["bash", str(PROVISION), self.version], capture_output=True, text=True
            )
            if built.returncode != 0:
                raise GimpUnavailable(
                    f"provisioning GIMP {self.version} failed:\n{built.stderr[-3000:]}"
                )
            self.root = Path(built.stdout.strip().splitlines()[-1])
            self.console = "gimp-console"
            subprocess.run(["mount", "-t", "proc", "proc", str(self.root / "proc")], check=True)
            self.mounted = True
            shutil.copyfile(HOST_CA, self.root / "etc/ssl/certs/nst-host-ca.crt")
        base = self.root / "tmp" if self.root else Path(tempfile.gettempdir())
        self.scratch = Path(tempfile.mkdtemp(prefix="nst-e2e-", dir=base))
        src = self.scratch / "src"
        shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
            ".git", "__pycache__", "*.egg-info", "build", ".venv", ".pytest_cache", "benchmarks"))
        (self.scratch / "home").mkdir()
        self.profile = self.scratch / "profile"
        python = "/usr/bin/python3" if self.root else os.environ.get("NST_E2E_PYTHON", "")
        command = ["bash", self.inside(src / "install.sh"), "--no-weights", "--no-speed-test",
                   "--venv", self.inside(self.scratch / "venv"),
                   "--gimp-profile", self.inside(self.profile)]
        if python:
            command[2:2] = ["--python", python]
        done = self.run(command, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"install.sh failed in GIMP {self.version}:\n{done.stdout[-4000:]}")

    def env(self) -> dict:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": self.inside(self.scratch / "home"),
            "GIMP3_DIRECTORY": self.inside(self.profile),
            "NST_DATA_DIR": self.inside(self.scratch / "data"),
            "NST_WEIGHTS": "random",
            "NST_SERVICE_IDLE_S": "5",  # the warm engine goes soon after the tests
            "LANG": "C.UTF-8",
        }
        if self.root:
            env["SSL_CERT_FILE"] = "/etc/ssl/certs/nst-host-ca.crt"
            env["PIP_CERT"] = env["SSL_CERT_FILE"]
        else:
            env["PATH"] = os.environ.get("PATH", env["PATH"])
        return env

    def run(self, command: list[str], stdin: str | None = None, extra_env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        env = {**self.env(), **(extra_env or {})}
        prefix = ["chroot", str(self.root)] if self.root else []
        full = [*prefix, "env", "-i", *(f"{k}={v}" for k, v in env.items()), *command]
        return subprocess.run(full, input=stdin, capture_output=True, text=True,
                              timeout=timeout, env=None if self.root else env)

    def batch(self, script: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
        """Runs a python-fu-eval batch script headless; stdout and stderr merged in stdout."""
        command = [self.console, "-i", "--batch-interpreter=python-fu-eval", "-b", "-", "--quit"]
        done = self.run(command, stdin=script, extra_env=extra_env)
        done.stdout = done.stdout + "\n" + done.stderr
        return done

    def processes(self, program: bytes) -> list[int]:
        """Processes in this GIMP's root whose program's name is ``program``."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                name = (entry / "cmdline").read_bytes().split(b"\0")[0]
                root = os.readlink(entry / "root")
            except (OSError, IndexError):
                continue
            if name.rsplit(b"/", 1)[-1] == program and root == str(self.root or "/"):
                found.append(int(entry.name))
        return found

    def engines(self, command: bytes) -> dict[int, int]:
        """Engine processes (``nst_engine <command>``) running in this GIMP's root:
        pid → parent pid."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
                stat = (entry / "stat").read_text()
                root = os.readlink(entry / "root")
            except OSError:
                continue
            if b"nst_engine" not in args or command not in args:
                continue
            if root != str(self.root or "/"):
                continue
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        return found

    def host_path(self, inside_path: str) -> Path:
        return Path(inside_path) if self.root is None else self.root / inside_path.lstrip("/")

    def teardown(self) -> None:
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
        if self.mounted:
            subprocess.run(["umount", str(self.root / "proc")], check=False)
