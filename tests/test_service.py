"""The warm engine service: on demand, warm, queued, idle exit, crashes, and only for its
user — driven through the plug-in's own client (nst_client) and ``nst_engine connect``."""

import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nst_client
import nst_messages
import numpy as np
import pytest

from nst_engine import relay

CONNECT = [sys.executable, "-m", "nst_engine", "connect"]
SETTINGS = {"style_strength": 0.5, "iterations": 4, "max_size": 64, "preserve_colors": False,
            "seed": 0, "device": "cpu"}


def run(painting, iterations=4, on_event=None):
    data = np.random.default_rng(0).random((50, 60, 3), dtype=np.float32)
    events = []

    def record(event):
        events.append(event)
        if on_event:
            on_event(event)

    result = nst_client.run_engine(CONNECT, {**SETTINGS, "iterations": iterations},
                                   data.tobytes(), data.shape,
                                   nst_client.Style.from_file(painting), record)
    return result, events


def started(events):
    return next(e for e in events if e["event"] == "started")


def socket_path() -> Path:
    return relay.socket_path(Path(os.environ["XDG_RUNTIME_DIR"]) / "nst-engine")


def service_pid(events) -> int:
    return started(events)["engine_pid"]


def wait_gone(pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").exists() and \
                Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.1)
    return False


def test_started_on_demand_then_warm(painting):
    first, events1 = run(painting)
    pid = service_pid(events1)
    assert pid != os.getpid() and started(events1)["loaded_network"]
    path = socket_path()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_ISSOCK(path.stat().st_mode)
    second, events2 = run(painting)
    assert service_pid(events2) == pid  # the same process: nothing imported or loaded again
    assert not started(events2)["loaded_network"]
    assert first["payload"] == second["payload"]  # warm caches change nothing
    assert wait_gone(pid, 30), "the service did not exit when idle"
    assert not path.exists()


def test_queued_clients_are_told_their_place_as_the_queue_moves(painting):
    """One run paints, two wait: each waiting client hears how many runs are before
    it, and hears it again when the queue moves, so that its window counts down."""
    results, errors = {}, []
    working, second_waits = threading.Event(), threading.Event()
    data = np.random.default_rng(0).random((50, 60, 3), dtype=np.float32)

    def client(name, settings, on_event):
        events = []

        def record(event):
            events.append(event)
            on_event(event)

        try:
            result = nst_client.run_engine(CONNECT, {**SETTINGS, **settings}, data.tobytes(),
                                           data.shape, nst_client.Style.from_file(painting), record)
            results[name] = result, events
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=args) for args in (
        ("first", {"iterations": 150, "converge": False},
         lambda e: e["event"] == "progress" and working.set()),
        ("second", {}, lambda e: e["event"] == "queued" and second_waits.set()),
        ("third", {}, lambda e: None))]
    threads[0].start()
    assert working.wait(120)  # the first is running
    threads[1].start()
    assert second_waits.wait(60)
    threads[2].start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors and len(results) == 3
    told = {name: [(e["event"], e.get("ahead")) for e in found if e["event"] != "alive"]
            for name, (_, found) in results.items()}
    assert "queued" not in [kind for kind, _ in told["first"]]
    assert told["second"][0] == ("queued", 1) and told["second"][1][0] == "started"
    assert told["third"][:3] == [("queued", 2), ("queued", 1), ("started", None)]
    assert results["third"][0]["steps"] == 4
    assert len({service_pid(found) for _, found in results.values()}) == 1


def test_crash_mid_run_is_a_clear_message_and_the_next_run_starts_fresh(painting):
    def kill_service(event):
        if event["event"] == "progress" and event["progress"].step == 2:
            os.kill(kill_service.pid, signal.SIGKILL)
        elif event["event"] == "started":
            kill_service.pid = event["engine_pid"]

    with pytest.raises(nst_messages.ClientError) as info:
        run(painting, iterations=200, on_event=kill_service)
    assert info.value.kind == "internal" and "stopped unexpectedly" in info.value.message
    result, events = run(painting)
    assert result["steps"] == 4 and service_pid(events) != kill_service.pid


def test_another_user_cannot_use_the_socket(painting, monkeypatch):
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to act as another user")
    runtime = Path(tempfile.mkdtemp(prefix="nst-run-", dir="/tmp"))  # reachable by others
    runtime.chmod(0o711)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    _, events = run(painting)
    path = socket_path()
    probe = ("import socket, sys\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n"
             "    print('refused', type(e).__name__); sys.exit(0)\n"
             "try:\n    s.sendall(b'{}\\n')\n    print('answer', repr(s.recv(100)))\n"
             "except (BrokenPipeError, ConnectionResetError):\n    print('answer closed')\n")
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
              "-c", probe, str(path)]
    done = subprocess.run(nobody, capture_output=True, text=True, timeout=30)
    assert done.stdout.startswith("refused PermissionError"), done.stdout + done.stderr
    # Even with the folder and socket opened up, the service checks who is calling:
    path.parent.chmod(0o755)
    path.chmod(0o666)
    try:
        done = subprocess.run(nobody, capture_output=True, text=True, timeout=30)
    finally:
        path.parent.chmod(0o700)
        path.chmod(0o600)
    assert done.stdout.strip() in ("answer b''", "answer closed"), done.stdout + done.stderr
    assert wait_gone(service_pid(events), 30)
    shutil.rmtree(runtime, ignore_errors=True)


def test_unreachable_runtime_folder_runs_one_shot(painting, monkeypatch, tmp_path):
    bad = tmp_path / "shared-run"
    (bad / "nst-engine").mkdir(parents=True, mode=0o777)
    (bad / "nst-engine").chmod(0o777)  # not private: refused, never used
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(bad))
    result, events = run(painting)
    assert result["steps"] == 4 and not list((bad / "nst-engine").iterdir())
    assert service_pid(events) != os.getpid()  # the connect process itself ran it


def test_a_silent_client_is_taken_as_gone(painting):
    """A client that promised heartbeats and falls silent (a dead network, the
    connection still open) has its run cancelled: three missed pings."""
    process = subprocess.Popen(CONNECT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    data = np.full((260, 300, 3), 0.5, np.float32).tobytes()  # two scales: no early stop
    style = painting.read_bytes()
    run_message = {"type": "run", "protocol": 3, "heartbeat_s": 1.0, "styles": 1,
                   "settings": {**SETTINGS, "iterations": 5000, "max_size": 256},
                   "content": {"shape": [260, 300, 3], "dtype": "<f4"}, "bytes": len(data)}
    process.stdin.write(json.dumps(run_message).encode() + b"\n" + data)
    process.stdin.write(json.dumps({"type": "style", "name": "p.png", "bytes": len(style)})
                        .encode() + b"\n" + style)
    process.stdin.flush()  # ... and then nothing more, the pipe left open
    started = None
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and started is None:
            started = time.monotonic()
        if event["event"] in ("result", "error"):
            break
    assert event["kind"] == "cancelled" and "heard nothing from its client" in event["message"]
    assert "cancelled" not in event["message"]  # nobody cancelled it
    assert time.monotonic() - started < 10
    process.stdin.close()
    process.wait(timeout=30)


def test_stylize_uses_a_running_service_unless_told_not_to(photo, painting, tmp_path,
                                                          monkeypatch):
    monkeypatch.setenv("NST_SERVICE_IDLE_S", "30")
    _, events = run(painting)  # starts the service
    pid = service_pid(events)

    def stylize(*extra):
        out = tmp_path / f"out{len(extra)}.png"
        done = subprocess.run(
            [sys.executable, "-m", "nst_engine", "stylize", str(photo), str(painting), "-o",
             str(out), "--max-size", "64", "--iterations", "3", "--device", "cpu",
             "--progress", "json", *extra], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert lines[-1]["event"] == "result" and lines[-1]["steps"] == 3
        from PIL import Image

        with Image.open(out) as image:
            assert image.size == (96, 80)
        return started(lines)["engine_pid"], out.read_bytes()

    through_service, a = stylize()
    alone, b = stylize("--no-service")
    assert through_service == pid and alone != pid
    assert a == b  # the same picture either way
    os.kill(pid, signal.SIGTERM)


def test_the_relay_gives_its_pipes_the_largest_buffer(tmp_path):
    from nst_engine.relay import widen_pipe

    limit = Path("/proc/sys/fs/pipe-max-size")
    if not limit.exists():
        pytest.skip("pipe sizes are Linux's")
    read_end, write_end = os.pipe()
    try:
        widen_pipe(write_end)
        assert fcntl.fcntl(read_end, 1032) == int(limit.read_text())  # F_GETPIPE_SZ
    finally:
        os.close(read_end)
        os.close(write_end)
    with open(tmp_path / "file", "wb") as handle:  # not a pipe: left alone, quietly
        widen_pipe(handle.fileno())


def test_large_layers_and_styles_arrive_whole_and_paint_as_one_shot(tmp_path):
    """Payloads over a megabyte take the received-in-place path (``wire.engine_room``,
    ``picture_from_array(owned=True)``) and the result goes back as a view: the same
    picture, to the bit, as the one-shot engine's, alpha untouched."""
    from PIL import Image

    rng = np.random.default_rng(5)
    style = tmp_path / "noise-painting.png"  # incompressible: ~1.5 MB
    Image.fromarray(rng.integers(0, 256, (700, 700, 3), dtype=np.uint8)).save(style)
    assert style.stat().st_size > 1 << 20
    layer = rng.uniform(-0.2, 1.2, (300, 400, 4)).astype(np.float32)  # 1.9 MB, clipped
    settings = {**SETTINGS, "iterations": 2, "max_size": 48}
    results = [nst_client.run_engine(command, settings, layer.tobytes(), layer.shape,
                                     nst_client.Style.from_file(style))
               for command in (CONNECT, [sys.executable, "-m", "nst_engine", "stream"])]
    warm, one_shot = (np.frombuffer(r["payload"], np.float32).reshape(layer.shape)
                      for r in results)
    assert np.array_equal(warm, one_shot)
    assert np.array_equal(warm[..., 3], layer[..., 3])
    assert 0 <= warm[..., :3].min() and warm[..., :3].max() <= 1


def test_a_client_with_other_weights_is_never_served_by_the_first_clients_service(
        painting, monkeypatch, tmp_path):
    """The first client's NST_WEIGHTS (random, here) stays its own: a later client
    without it reaches a service of its own, which finds no weights in its data
    folder, instead of being painted with the first one's random network."""
    _, events = run(painting)
    assert started(events)["weights"] == "random"
    monkeypatch.delenv("NST_WEIGHTS")
    with pytest.raises(nst_messages.ClientError) as info:
        run(painting)
    assert info.value.kind == "no_weights"
    monkeypatch.setenv("NST_WEIGHTS", "random")  # the first client's world again
    _, again = run(painting)
    assert started(again)["weights"] == "random"


def test_the_service_works_in_its_private_folder_not_the_clients(painting):
    _, events = run(painting)
    pid = service_pid(events)
    assert Path(f"/proc/{pid}/cwd").resolve() == socket_path().parent.resolve()


def test_a_runtime_folder_open_to_others_is_a_clear_message(tmp_path, monkeypatch):
    runtime = tmp_path / "run"
    (runtime / "nst-engine").mkdir(parents=True)
    (runtime / "nst-engine").chmod(0o755)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    done = subprocess.run([sys.executable, "-m", "nst_engine", "serve"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "not a private folder" in done.stderr
    assert "internal" not in done.stderr and "Traceback" not in done.stderr


def test_a_runtime_folder_too_deep_for_a_socket_path_falls_back_to_tmp(painting, tmp_path,
                                                                         monkeypatch):
    """Not every run silently one-shot: the service's socket goes where it fits."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    assert relay.runtime_dir() == Path("/tmp") / f"nst-engine-{os.getuid()}"
    _, first = run(painting)
    _, second = run(painting)
    assert service_pid(first) == service_pid(second)  # a warm service served both
    assert not started(second)["loaded_network"]


def test_something_in_the_way_of_the_socket_costs_no_service_start(painting):
    """A folder where the socket belongs: the run goes one-shot at once, with a note,
    instead of starting a service that cannot bind (seconds lost, then one-shot)."""
    path = socket_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.mkdir()
    result, events = run(painting)
    assert events[-1]["event"] == "result" and result["payload"]
    assert not (path.parent / "service.log").exists()  # no service was started
    done = subprocess.run([sys.executable, "-m", "nst_engine", "serve"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "in the way" in done.stderr


def test_an_engine_paused_and_resumed_goes_on_with_the_run(painting):
    """The service stopped for 8 s (SIGSTOP: a paused or swapped-out engine) while the
    plug-in keeps pinging: on resuming, the pings waiting unread are the client's,
    not its silence — the run ends with its result, not 'cancelled'."""
    paused = threading.Event()

    def pause(event):
        if event["event"] == "progress" and event["progress"].step == 2 \
                and not paused.is_set():
            paused.set()
            pid = pause.pid
            os.kill(pid, signal.SIGSTOP)
            threading.Timer(8.0, os.kill, (pid, signal.SIGCONT)).start()
        elif event["event"] == "started":
            pause.pid = event["engine_pid"]

    result, events = run(painting, iterations=40, on_event=pause)
    assert paused.is_set() and events[-1]["event"] == "result"
    assert result["steps"] == 40


def test_the_service_accepts_again_once_descriptors_free_up(painting, tmp_path):
    """Idle connections up to the descriptor limit used to end the accept loop
    (EMFILE) and leave the service alive, its socket present, answering nobody."""
    import resource

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    service_process = subprocess.Popen(
        [sys.executable, "-m", "nst_engine", "serve", "--idle-timeout", "30"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=low_limit)
    idle = []
    try:
        path = socket_path()
        deadline = time.monotonic() + 60
        while not path.exists():
            assert time.monotonic() < deadline and service_process.poll() is None
            time.sleep(0.1)
        import socket as sockets

        for _ in range(80):  # past the service's 64 descriptors, and its backlog
            conn = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
            conn.settimeout(1.0)
            idle.append(conn)
            try:
                conn.connect(str(path))
            except OSError:  # the backlog is full: the service accepts no more
                break
        time.sleep(1.0)  # the service's accept loop meets EMFILE meanwhile
        for conn in idle:
            conn.close()
        idle.clear()
        result, events = run(painting)
        assert events[-1]["event"] == "result"
        assert service_pid(events) == service_process.pid
    finally:
        for conn in idle:
            conn.close()
        service_process.terminate()
        service_process.wait(timeout=30)
