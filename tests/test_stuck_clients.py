"""The warm service serves the next photographer whatever one client does, and clients
tell a stopped engine from a slow one (issue 26, group A). A real ``serve`` and real
sockets, with every deadline shortened tenfold (``NST_DEADLINE_SCALE``)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import nst_client
import nst_messages
import numpy as np
import pytest
from streaming import EngineProcess, request
from test_service import SETTINGS, run, socket_path
from test_service import service_pid as engine_pid

from nst_engine import relay
from nst_engine.connections import MAX_CONNECTIONS

CONNECT = [sys.executable, "-m", "nst_engine", "connect"]
PLUGIN = Path(__file__).resolve().parent.parent / "gimp_plugin" / "neural-style-transfer"


@pytest.fixture(autouse=True)
def short_deadlines(monkeypatch):
    """Deadlines a tenth as long for the service and relays these tests start."""
    monkeypatch.setenv("NST_DEADLINE_SCALE", "0.1")  # requests 3 s, writes 3 s, greeting 0.5 s


def greeted(path: Path) -> socket.socket:
    """A raw connection the service has greeted; what came after the greeting is kept
    in ``said`` (see read_all)."""
    reached = relay.reach(path)
    assert reached is not None and reached.pid > 0
    said[reached.sock.fileno()] = reached.after
    return reached.sock


said: dict[int, bytes] = {}


def read_all(sock: socket.socket, seconds: float) -> bytes:
    """What the service writes after its greeting until it closes the connection
    (within ``seconds``)."""
    sock.settimeout(seconds)
    data = said.pop(sock.fileno(), b"")
    try:
        while chunk := sock.recv(1 << 16):
            data += chunk
    except ConnectionResetError:  # a byte we sent after the service's last read: all that
        pass  # it wrote was read first, the reset only replaces the end of the stream
    return data


def end(pid: int) -> None:
    for signum in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def test_stalled_slow_and_idle_clients_hold_up_nobody(painting):
    """Twenty connections that say nothing and one that sends a byte at a time: the
    next run is served at once (not queued behind them), and each of them is told,
    when its deadline passes, that its request did not arrive in time."""
    _, events = run(painting)  # the service is up
    pid = engine_pid(events)
    path = socket_path()
    try:
        idle = [greeted(path) for _ in range(20)]
        slow = greeted(path)
        line = json.dumps({"type": "run", "protocol": 3}).encode()
        stop = threading.Event()

        def trickle():
            for byte in line:
                if stop.wait(0.5):
                    return
                try:
                    slow.send(bytes([byte]))
                except OSError:
                    return

        threading.Thread(target=trickle, daemon=True).start()
        began = time.monotonic()
        _, events = run(painting)
        assert engine_pid(events) == pid and "queued" not in [e["event"] for e in events]
        assert time.monotonic() - began < 20
        for conn in [*idle, slow]:
            said = read_all(conn, 15)  # REQUEST_S is 3 s here
            assert b"did not arrive in time" in said, said
        stop.set()
        assert time.monotonic() - began < 30
    finally:
        end(pid)


def test_a_client_that_does_not_read_its_result_is_dropped(painting):
    """A whole request, then not a byte read of its 7.7 MB result: the service gives
    up writing after WRITE_STALL_S and serves the next run."""
    _, events = run(painting)
    pid = engine_pid(events)
    try:
        deaf = greeted(socket_path())
        deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        layer = np.random.default_rng(1).random((800, 800, 3), dtype=np.float32)
        deaf.sendall(request(painting, layer, {"iterations": 2, "max_size": 48}))
        time.sleep(0.5)  # its run goes first
        began = time.monotonic()
        result, events = run(painting)
        assert result["steps"] == 4 and engine_pid(events) == pid
        assert time.monotonic() - began < 30
        deaf.settimeout(10)  # closed by the service: the end comes, not a timeout
        try:
            while deaf.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass
    finally:
        end(pid)


def test_connections_are_bounded_and_the_one_too_many_is_told(painting):
    _, events = run(painting)
    pid = engine_pid(events)
    path = socket_path()
    held = []
    try:
        held = [greeted(path) for _ in range(MAX_CONNECTIONS)]
        extra = greeted(path)
        said = read_all(extra, 5)
        assert f"{MAX_CONNECTIONS} connections already".encode() in said, said
        for conn in held:
            conn.close()
        time.sleep(0.5)
        result, _ = run(painting)
        assert result["steps"] == 4
    finally:
        for conn in held:
            conn.close()
        end(pid)


def test_dead_connections_cost_the_next_run_nothing(painting):
    """Two hundred clients that connect and vanish: no traceback per connection in
    the log, and the next run is served promptly."""
    _, events = run(painting)
    pid = engine_pid(events)
    path = socket_path()
    try:
        for _ in range(200):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(str(path))
            conn.close()
        began = time.monotonic()
        result, events = run(painting)
        assert result["steps"] == 4 and engine_pid(events) == pid
        assert time.monotonic() - began < 20
        text = (path.parent / "service.log").read_text()
        assert "Traceback" not in text
        assert text.count("\n") < 250  # at most a line for each
    finally:
        end(pid)


def test_a_stopped_service_is_named_and_the_next_run_starts_a_fresh_one(painting,
                                                                        monkeypatch):
    """The service SIGSTOPped mid-run (a hung engine): the plug-in says that the engine
    stopped answering, within its bound, and the next run does not wait on the
    stopped service: a fresh one takes its socket."""
    monkeypatch.setattr(nst_client, "SILENT_ENGINE_S", 1.0)  # before the relay's 2.5 s
    stopped = {}

    def stop_it(event):
        if event["event"] == "progress" and event["progress"].step == 2 and not stopped:
            stopped["pid"] = engine_pid([e for e in seen if e["event"] == "started"])
            stopped["at"] = time.monotonic()
            os.kill(stopped["pid"], signal.SIGSTOP)

    seen = []
    try:
        with pytest.raises(nst_messages.ClientError) as info:
            run(painting, iterations=2000, on_event=lambda e: (seen.append(e), stop_it(e)))
        assert info.value.kind == "engine_silent"
        assert "stopped answering" in info.value.message
        assert time.monotonic() - stopped["at"] < 10
        monkeypatch.setattr(nst_client, "SILENT_ENGINE_S", 20.0)  # a service starts now
        began = time.monotonic()
        result, events = run(painting)
        assert result["steps"] == 4 and engine_pid(events) != stopped["pid"]
        assert time.monotonic() - began < 60
        end(engine_pid(events))
    finally:
        if stopped:
            end(stopped["pid"])


def test_stylize_paints_itself_beside_a_stopped_service(painting, photo, tmp_path):
    _, events = run(painting)
    pid = engine_pid(events)
    os.kill(pid, signal.SIGSTOP)
    try:
        out = tmp_path / "out.png"
        done = subprocess.run([sys.executable, "-m", "nst_engine", "stylize", str(photo),
                               str(painting), "-o", str(out), "--max-size", "48",
                               "--iterations", "2"], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert out.exists()
    finally:
        end(pid)


def test_a_plugin_stopped_and_resumed_is_told_what_happened(painting, tmp_path):
    """GIMP stopped (SIGSTOP) mid-run past the engine's three missed pings: the engine
    ends the run; the plug-in, resumed, reads why — not 'cancelled', which only the
    photographer does."""
    script = tmp_path / "plugin.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import numpy as np
        import nst_client
        import nst_messages
        data = np.full((50, 60, 3), 0.5, np.float32)
        settings = {({**SETTINGS, "iterations": 5000, "converge": False})!r}
        try:
            nst_client.run_engine({CONNECT!r}, settings, data.tobytes(), data.shape,
                                  nst_client.Style.from_file({str(painting)!r}),
                                  lambda e: print(e["event"], flush=True))
            print("RESULT", flush=True)
        except nst_messages.ClientError as error:
            print("ERROR", error.kind, error.message, flush=True)
    """))
    env = {**os.environ, "NST_DEADLINE_SCALE": "1",  # the real bounds: pings every 2 s
           "PYTHONPATH": str(PLUGIN)}
    plugin = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(plugin.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while "progress\n" not in lines:
            assert time.monotonic() < deadline and plugin.poll() is None, plugin.stderr.read()
            time.sleep(0.1)
        os.kill(plugin.pid, signal.SIGSTOP)
        time.sleep(10.0)  # the engine gives up after 6 s of silence
        os.kill(plugin.pid, signal.SIGCONT)
        plugin.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        end(plugin.pid)
    last = lines[-1]
    assert last.startswith("ERROR cancelled"), lines[-3:]
    assert "heard nothing from its client" in last and "cancelled" not in last[15:]


def test_a_long_step_is_not_silence(painting):
    """One VGG pass of seconds (the painting enlarged 16× for its targets): the engine
    says it is alive all the while, so no client takes it for a stopped one."""
    run = EngineProcess()
    run.send(request(painting, np.full((64, 64, 3), 0.5, np.float32),
                     {"max_size": 64, "iterations": 3, "style_scale": 16.0}))
    assert run.next_event()["event"] == "started"
    began = time.monotonic()
    assert run.next_event()["event"] == "progress"
    took = time.monotonic() - began
    inside = [t for t in run.alive if t > began]
    assert took > 1.0 and len(inside) >= took / 0.2 * 0.5  # every 0.2 s here, roughly
    event, code = run.finish()
    assert event["event"] == "result" and code == 0


def test_a_long_lived_services_log_is_started_anew_past_its_limit(painting):
    """service.log is the service's stderr: past LOG_LIMIT it is started anew after a
    run, not only when a service starts."""
    from nst_engine.relay import LOG_LIMIT

    log = socket_path().parent / "service.log"
    log.parent.mkdir(mode=0o700, exist_ok=True)
    log.write_bytes(b"old line\n" * (LOG_LIMIT // 9 + 10))
    with open(log, "ab") as stderr:
        service = subprocess.Popen([sys.executable, "-m", "nst_engine", "serve",
                                    "--idle-timeout", "30"], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while not socket_path().exists():
            assert time.monotonic() < deadline and service.poll() is None
            time.sleep(0.1)
        result, events = run(painting)
        assert engine_pid(events) == service.pid
        assert log.stat().st_size < LOG_LIMIT
    finally:
        service.terminate()
        service.wait(timeout=30)
