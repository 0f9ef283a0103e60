"""The engine on another machine, through a real OpenSSH server on 127.0.0.1."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nst_client
import nst_config
import nst_messages
import numpy as np
import pytest
from sshd import SSHServer, SSHUnavailable

SETTINGS = {"style_strength": 0.5, "iterations": 4, "max_size": 64, "preserve_colors": False,
            "seed": 0, "device": "cpu"}


@pytest.fixture
def server(tmp_path, monkeypatch):
    folder = tmp_path / "ssh"
    folder.mkdir()
    remote_run = tmp_path / "remote-run"
    remote_run.mkdir(mode=0o700)
    env = {"NST_WEIGHTS": "random", "NST_SERVICE_IDLE_S": "3",
           "XDG_RUNTIME_DIR": str(remote_run)}
    try:
        ssh = SSHServer(folder, env)
    except SSHUnavailable as why:
        if os.environ.get("CI"):
            pytest.fail(f"an sshd is required in CI: {why}")
        pytest.skip(str(why))
    monkeypatch.setenv("NST_SSH_OPTIONS", ssh.client_options())
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "nst-engine.json").write_text(json.dumps(
        {"python": sys.executable, "remote": {"host": ssh.host, "python": sys.executable}}))
    yield ssh, plugin
    ssh.stop()


def layer():
    data = np.random.default_rng(3).random((50, 60, 4), dtype=np.float32)
    return data, data.tobytes(), data.shape


def test_a_run_over_ssh_gives_the_local_result(server, painting):
    ssh, plugin = server
    command, host = nst_config.engine_command(plugin)
    assert command[0] == "ssh" and host == ssh.host
    data, raw, shape = layer()
    events = []
    style = nst_client.Style.from_file(painting)
    remote = nst_client.run_engine(command, SETTINGS, raw, shape, style, events.append, host)
    local = nst_client.run_engine([sys.executable, "-m", "nst_engine", "connect"], SETTINGS,
                                  raw, shape, style)
    assert remote["payload"] == local["payload"]  # float32 both ways: nothing lost
    assert [e["event"] for e in events][-1] == "result"
    assert any(e["event"] == "progress" for e in events)


def test_keep_this_result_over_ssh(server, painting):
    ssh, plugin = server
    command, host = nst_config.engine_command(plugin)
    _, raw, shape = layer()
    run = None

    def on_event(event):
        if event["event"] == "progress" and event["progress"].step == 3:
            run.send("finish")

    run = nst_client.EngineRun(command, on_event, host)
    run.send_request({**SETTINGS, "iterations": 2000}, raw, shape,
                     nst_client.Style.from_file(painting))
    result = run.read_to_end()
    assert result["stopped"] == "finished" and result["steps"] < 2000


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_dropped_connection_cancels_the_remote_run(server, painting):
    ssh, plugin = server
    command, host = nst_config.engine_command(plugin)
    _, raw, shape = layer()
    seen = {}

    def on_event(event):
        if event["event"] == "started":
            seen["pid"] = event["engine_pid"]
        if event["event"] == "progress" and event["progress"].step == 3:
            ssh.drop_connections()  # the network goes: the server side ends abruptly

    run = nst_client.EngineRun(command, on_event, host)
    run.send_request({**SETTINGS, "iterations": 3000}, raw, shape,
                     nst_client.Style.from_file(painting))
    while run.read_available():
        pass
    dropped = time.monotonic()
    with pytest.raises(nst_messages.ClientError) as info:
        run.outcome()
    assert info.value.kind == "connection" and ssh.host in info.value.message
    # the remote engine stops working on the run within 10 s
    pid = seen["pid"]
    while time.monotonic() - dropped < 10:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        try:
            if cpu_seconds(pid) - before < 0.2:
                break
        except FileNotFoundError:
            break  # the service itself has gone: stopped too
    else:
        pytest.fail("the remote run was still working 10 s after the connection dropped")


def test_unreachable_host_is_a_clear_message(tmp_path, monkeypatch, painting):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "nst-engine.json").write_text(json.dumps(
        {"python": sys.executable, "remote": {"host": "nobody@127.0.0.1"}}))
    port = subprocess.run([sys.executable, "-c", "import socket; s=socket.socket(); "
                           "s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"],
                          capture_output=True, text=True).stdout.strip()
    monkeypatch.setenv("NST_SSH_OPTIONS", f"-p {port}")  # nothing listens there
    command, host = nst_config.engine_command(plugin)
    _, raw, shape = layer()
    with pytest.raises(nst_messages.ClientError) as info:
        nst_client.run_engine(command, SETTINGS, raw, shape,
                              nst_client.Style.from_file(painting), None, host)
    assert info.value.kind == "connection" and "127.0.0.1" in info.value.message
    assert "ssh" in nst_messages.user_message(info.value).lower()


def test_an_engine_not_installed_on_the_host_says_so(server, painting):
    """Not 'stopped unexpectedly: bash: …/python: No such file or directory'."""
    ssh, plugin = server
    (plugin / "nst-engine.json").write_text(json.dumps({"python": sys.executable, "remote": {
        "host": ssh.host, "python": "/nowhere/venv/bin/python"}}))
    command, host = nst_config.engine_command(plugin)
    _, raw, shape = layer()
    with pytest.raises(nst_messages.ClientError) as info:
        nst_client.run_engine(command, SETTINGS, raw, shape,
                              nst_client.Style.from_file(painting), None, host)
    assert info.value.kind == "not_installed"
    assert f"not installed on {ssh.host}" in info.value.message
    assert "install.sh" in info.value.message
