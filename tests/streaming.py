"""Protocol 3 from the client's side, for tests: the frames a run sends, and a one-shot
``nst_engine stream`` (or ``connect``) process to talk to as the plug-in does."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ENGINE = [sys.executable, "-m", "nst_engine"]
SETTINGS = {"max_size": 48, "iterations": 2, "device": "cpu"}


def line(message: dict) -> bytes:
    return json.dumps(message).encode() + b"\n"


def run_message(shape=(36, 48, 3), nbytes=None, settings=None, **extra) -> bytes:
    size = 4 * shape[0] * shape[1] * shape[2] if nbytes is None else nbytes
    return line({"type": "run", "protocol": 3, "settings": settings or SETTINGS,
                 "styles": 1, "content": {"shape": list(shape), "dtype": "<f4"},
                 "bytes": size, **extra})


def layer(shape=(36, 48, 3)) -> bytes:
    return np.random.default_rng(0).random(shape, dtype=np.float32).tobytes()


def style_message(path: Path) -> bytes:
    body = Path(path).read_bytes()
    return line({"type": "style", "name": Path(path).name, "bytes": len(body)}) + body


def request(painting: Path, content: np.ndarray, settings: dict | None = None,
            **extra) -> bytes:
    """A whole request: the run message with ``content`` as its layer, one style."""
    data = np.ascontiguousarray(content, "<f4")
    return (run_message(data.shape, settings={**SETTINGS, **(settings or {})}, **extra)
            + data.tobytes() + style_message(painting))


class EngineProcess:
    """``nst_engine stream`` (or ``connect``) with pipes, read event by event."""

    def __init__(self, command: str = "stream", env=None) -> None:
        self.process = subprocess.Popen([*ENGINE, command], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=env)
        self.events: list[dict] = []  # every event but ``alive``, the heartbeat
        self.payloads: list[bytes] = []
        self.alive: list[float] = []  # when each ``alive`` came

    def send(self, data: bytes) -> None:
        try:
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except BrokenPipeError:  # it refused the message before reading the rest
            pass

    def command(self, kind: str) -> None:
        self.send(line({"type": kind}))

    def next_event(self) -> dict | None:
        """The next event other than ``alive`` (those are counted in ``alive``)."""
        while head := self.process.stdout.readline():
            event = json.loads(head)
            if event["event"] == "alive":
                self.alive.append(time.monotonic())
                continue
            self.events.append(event)
            self.payloads.append(self.process.stdout.read(event.get("bytes", 0)))
            return event
        return None

    def until(self, kind: str) -> dict:
        """Events up to the first of ``kind`` (or the last one)."""
        while (event := self.next_event()) is not None:
            if event["event"] in (kind, "error", "result"):
                return event
        raise AssertionError(f"the stream ended before a {kind} event: {self.stderr()}")

    def close_stdin(self) -> None:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass

    def finish(self, timeout: float = 120) -> tuple[dict, int]:
        """Reads to the end; the last event (``error`` or ``result``, checked) and the
        exit code."""
        while (not self.events or self.events[-1]["event"] not in ("error", "result")) \
                and self.next_event() is not None:
            pass
        self.close_stdin()
        code = self.process.wait(timeout=timeout)
        assert self.events and self.events[-1]["event"] in ("error", "result"), self.stderr()
        return self.events[-1], code

    def stderr(self) -> str:
        return self.process.stderr.read().decode(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
