"""A real OpenSSH server on 127.0.0.1 for the tests, started by the tests themselves.

Debian's ``sshd`` (an installed one, or unpacked from the ``openssh-server`` package into
the test cache by ``run-tests.sh``), on a free high port, with a throwaway host key
and user key in a temporary folder. As root, sshd wants a privilege-separation user
and ``/run/sshd``: it runs in a mount namespace of its own (``unshare``) where a
copy of ``/etc/passwd`` with that user and a private ``/run`` are mounted, so
nothing of the machine's own sshd, users or keys is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

UNPACKED = Path(os.environ.get("NST_TEST_CACHE", Path.home() / ".cache" / "nst-test")) / "sshd"


class SSHUnavailable(Exception):
    pass


def find_sshd() -> tuple[str, dict]:
    """The sshd binary and the environment it needs (its unpacked libraries)."""
    for path in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if path and os.access(path, os.X_OK):
            return path, {}
    unpacked = UNPACKED / "usr" / "sbin" / "sshd"
    if unpacked.exists():
        libs = [str(UNPACKED / "lib" / "x86_64-linux-gnu"),
                str(UNPACKED / "usr" / "lib" / "x86_64-linux-gnu")]
        return str(unpacked), {"LD_LIBRARY_PATH": ":".join(libs)}
    raise SSHUnavailable("no sshd: install openssh-server, or run ./run-tests.sh (it unpacks "
                         "one into the test cache)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SSHServer:
    def __init__(self, folder: Path, session_env: dict[str, str]) -> None:
        if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ssh"):
            raise SSHUnavailable("needs root, unshare and the ssh client")
        self.folder = folder
        self.sshd, self.env = find_sshd()
        self.port = free_port()
        for name in ("host", "user"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(folder / name)], check=True)
        shutil.copy(folder / "user.pub", folder / "authorized_keys")
        host_key = (folder / "host.pub").read_text().split()[:2]
        (folder / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {' '.join(host_key)}\n")
        passwd = Path("/etc/passwd").read_text()
        (folder / "passwd").write_text(
            passwd + "sshd:x:74:65534:privilege separation:/run/sshd:/usr/sbin/nologin\n")
        settings = " ".join(f"{k}={v}" for k, v in session_env.items())
        (folder / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host'}\n"
            f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {folder / 'sshd.pid'}\nSetEnv {settings}\n")
        script = (f"mount --bind {folder / 'passwd'} /etc/passwd && "
                  "mount -t tmpfs tmpfs /run && mkdir -m 755 /run/sshd && "
                  f"exec {self.sshd} -D -e -f {folder / 'sshd_config'}")
        self.log = open(folder / "sshd.log", "wb")
        self.process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=self.log, stderr=self.log, env={**os.environ, **self.env})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if b"Server listening" in (folder / "sshd.log").read_bytes():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise SSHUnavailable("sshd did not start: "
                             + (folder / "sshd.log").read_text(errors="replace")[-2000:])

    @property
    def host(self) -> str:
        return "root@127.0.0.1"

    def client_options(self) -> str:
        """``NST_SSH_OPTIONS`` for the plug-in's ssh: this port, key and host key."""
        return (f"-p {self.port} -i {self.folder / 'user'} -o IdentitiesOnly=yes "
                f"-o UserKnownHostsFile={self.folder / 'known_hosts'} "
                "-o StrictHostKeyChecking=yes")

    def drop_connections(self) -> None:
        """Kills the server's per-connection processes (SIGKILL): to the client, the
        connection drops as when the network goes."""
        master = int((self.folder / "sshd.pid").read_text())
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if parent == master:
                os.kill(int(entry.name), signal.SIGKILL)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
