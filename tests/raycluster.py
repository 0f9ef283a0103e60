"""A real two-node Ray cluster for the tests and the batch benchmark, inside a
network namespace of their own.

On this machine Ray advertises and binds the machine's own network interface, so
every ``ray start`` runs inside a network namespace made here (``unshare --net``:
loopback only), which is also a PID and mount namespace: killing its first process
ends every Ray process in it, so nothing outlives the test. Token authentication is
on (``RAY_AUTH_MODE=token``) with a throwaway token. Each node is a ``ray start
--block`` of its own with ``--num-cpus 1``; the second node's raylet has a known
port, so a test can kill that node alone. Needs root, ``unshare``, ``nsenter`` and
``ip`` (util-linux and iproute2).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAD_PORT = 46379
SECOND_NODE_PORT = 46380  # the second node's raylet (--node-manager-port)
START_S = 90.0


class RayUnavailable(Exception):
    pass


class Namespace:
    """A network, PID and mount namespace whose first process is a ``sleep``."""

    def __init__(self) -> None:
        if os.geteuid() != 0 or not all(map(shutil.which, ("unshare", "nsenter", "ip"))):
            raise RayUnavailable("needs root, unshare, nsenter and ip")
        self.holder = subprocess.Popen(["unshare", "--net", "--pid", "--fork", "--mount-proc",
                                        "--kill-child", "sleep", "infinity"])
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children")
        deadline = time.monotonic() + 10
        while not (children.exists() and children.read_text().split()):
            if time.monotonic() > deadline or self.holder.poll() is not None:
                raise RayUnavailable("unshare did not start a namespace")
            time.sleep(0.02)
        self.pid = int(children.read_text().split()[0])
        subprocess.run(self.command(["ip", "link", "set", "lo", "up"]), check=True)

    def command(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--target={self.pid}", "--net", "--pid", "--mount",
                f"--wd={os.getcwd()}", "--", *argv]

    @staticmethod
    def child_of(pid: int) -> int:
        """The process ``nsenter`` (pid) started in the namespace."""
        children = Path(f"/proc/{pid}/task/{pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split():
            if time.monotonic() > deadline:
                raise LookupError(f"{pid} started nothing")
            time.sleep(0.02)
        return int(children.read_text().split()[0])

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)  # the namespace's init: all in it end
        except ProcessLookupError:
            pass
        self.holder.wait(timeout=30)


class RayCluster:
    """A head and a second node, each with one CPU, in a :class:`Namespace`."""

    def __init__(self, env: dict[str, str]) -> None:
        ray = Path(sys.executable).parent / "ray"
        if not ray.exists():
            raise RayUnavailable("Ray is not installed here (pip install 'nst-engine[ray]')")
        self.namespace = Namespace()
        self.address = f"127.0.0.1:{HEAD_PORT}"
        self.token = secrets.token_hex(16)
        # A short folder: Ray's Unix sockets live under it (108 characters at most).
        self.folder = Path(tempfile.mkdtemp(prefix="nst-ray-", dir="/tmp"))
        self.env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(self.folder)}
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
                  "--object-store-memory", str(200 * 2**20), "--temp-dir",
                  str(self.folder / "t"), "--block"]
        self.nodes = []
        try:
            self._start([str(ray), "start", "--head", "--port", str(HEAD_PORT),
                         "--include-dashboard", "false", *common], "head")
            self._wait_for(1)
            self._start([str(ray), "start", "--address", self.address,
                         "--node-manager-port", str(SECOND_NODE_PORT), *common], "second")
            self._wait_for(2)
        except BaseException:
            self.close()
            raise

    def _start(self, argv: list[str], name: str) -> None:
        log = open(self.folder / f"{name}.log", "wb")
        self.nodes.append(subprocess.Popen(self.namespace.command(argv), env=self.env,
                                           stdout=log, stderr=subprocess.STDOUT))
        log.close()

    def _wait_for(self, count: int) -> None:
        probe = ("import sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                 "print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if any(node.poll() is not None for node in self.nodes):
                raise RayUnavailable(f"ray start ended: {self.logs()}")
            done = self.run([sys.executable, "-c", probe, self.address], timeout=60)
            lines = done.stdout.split()
            if done.returncode == 0 and lines and int(lines[-1]) >= count:
                return
            time.sleep(1)
        raise RayUnavailable(f"the Ray cluster did not come up: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-2000:]
                         for path in sorted(self.folder.glob("*.log")))

    def run(self, argv: list[str], env: dict | None = None, **kwargs):
        """A command inside the namespace, a client of the cluster (with its token)."""
        return subprocess.run(self.namespace.command(argv), env=env or self.env,
                              capture_output=True, text=True, **kwargs)

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.namespace.command(argv), env=self.env, **kwargs)

    def second_node_raylet(self) -> int:
        """The host's pid of the second node's raylet."""
        for pid in _pids():
            argv = _cmdline(pid)
            if argv and argv[0].endswith("raylet") and \
                    f"--node_manager_port={SECOND_NODE_PORT}" in argv:
                return pid
        raise LookupError("no raylet of the second node")

    def busy_painter_on_second_node(self) -> int | None:
        """The host's pid of a painter at work on the second node, if one is."""
        raylet = self.second_node_raylet()
        for pid in _pids():
            argv = _cmdline(pid)
            if argv and argv[0].startswith("ray::Painter.paint") and _parent(pid) == raylet:
                return pid
        return None

    def painters(self) -> list[int]:
        """The host's pids of the painters alive on the cluster (either node)."""
        return [pid for pid in _pids()
                if (_cmdline(pid) or [""])[0].startswith("ray::Painter")]

    def close(self) -> None:
        self.namespace.close()
        for node in self.nodes:
            node.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") \
            .split("\0")
    except OSError:
        return []


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0
