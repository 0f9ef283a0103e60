"""``nst-engine batch --ray`` on a real two-node Ray cluster (tests/raycluster.py:
its own network namespace, token authentication on): the same files as a batch on
one machine, a node killed mid-photo, a client without the token refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from raycluster import RayCluster, RayUnavailable
from test_batch import batch, make_photos, photo_events, results

from nst_contract.errors import EXIT_CODES

REPO = Path(__file__).resolve().parent.parent
FAST = ["--max-size", "48", "--iterations", "3", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {**os.environ, "NST_WEIGHTS": "random", "PYTHONPATH": str(REPO),
           "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("ray-cache"))}
    try:
        cluster = RayCluster(env)
    except RayUnavailable as why:
        if os.environ.get("NST_REQUIRE_RAY") == "1":
            pytest.fail(f"a Ray cluster is required here (NST_REQUIRE_RAY=1): {why}")
        pytest.skip(f"no Ray cluster here: {why}")
    yield cluster
    cluster.close()


def ray_batch(cluster, *args, env=None):
    done = cluster.run([sys.executable, "-m", "nst_engine", "batch", *map(str, args),
                        "--ray", cluster.address], env=env, timeout=600)
    return done


def test_the_cluster_paints_the_same_files_as_one_machine(cluster, painting, tmp_path):
    photos = make_photos(tmp_path / "shoot", 5)
    (tmp_path / "shoot" / "photo02b.png").write_bytes(b"\x89PNG broken")
    args = [tmp_path / "shoot", "--style", painting, *FAST]
    # One thread, as each painter has (one CPU each): the same arithmetic, bit for bit.
    here = batch(*args, "-o", tmp_path / "here", env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert here.returncode == EXIT_CODES["photos_failed"], here.stderr
    there = ray_batch(cluster, *args, "-o", tmp_path / "there", "--progress", "json")
    assert there.returncode == EXIT_CODES["photos_failed"], there.stderr
    events = [json.loads(line) for line in there.stdout.splitlines()]
    assert events[0]["where"] == f"on the Ray cluster at {cluster.address}"
    outcomes = photo_events(events)
    assert outcomes["photo02b.png"]["status"] == "failed"
    assert "photo02b.png" in outcomes["photo02b.png"]["reason"]
    assert results(tmp_path / "there") == results(tmp_path / "here") == \
        [".nst-batch.json"] + [p.name for p in photos]
    for path in photos:
        assert (tmp_path / "there" / path.name).read_bytes() == \
            (tmp_path / "here" / path.name).read_bytes(), path.name
    # the same manifest rule: the cluster's batch goes on from one machine's
    again = batch(*args, "-o", tmp_path / "there", "--progress", "json")
    assert [e["status"] for e in photo_events(
        [json.loads(line) for line in again.stdout.splitlines()]).values()].count(
        "skipped") == 5


def a_slow_batch(cluster, painting, tmp_path):
    """Eight photos of a second or two each on the cluster, its events to be read."""
    photos = make_photos(tmp_path / "shoot", 8)
    out = tmp_path / "out"
    process = cluster.popen(
        [sys.executable, "-m", "nst_engine", "batch", *map(str, photos), "--style",
         str(painting), "-o", str(out), "--max-size", "64", "--iterations", "40",
         "--no-converge", "--device", "cpu", "--ray", cluster.address, "--progress", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return photos, out, process


def test_a_node_killed_mid_photo_costs_only_a_retry(cluster, painting, tmp_path):
    photos, out, process = a_slow_batch(cluster, painting, tmp_path)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and process.poll() is None:
        painter = cluster.busy_painter_on_second_node()
        if painter is not None:  # mid-photo: its node's raylet dies, and the painter too
            killed = cluster.second_node_raylet()
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    stdout, stderr = process.communicate(timeout=300)
    assert killed is not None, "the second node never painted"
    assert process.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    retries = [e for e in events if e["event"] == "retry"]
    assert len(retries) == 1 and "painter was lost" in retries[0]["reason"]
    outcomes = photo_events(events)
    assert {name: e["status"] for name, e in outcomes.items()} == \
        {p.name: "done" for p in photos}
    assert outcomes[photos[retries[0]["photo"] - 1].name]["attempts"] == 2
    # every output once, whole; no temporary file left
    assert results(out) == [".nst-batch.json"] + [p.name for p in photos]
    manifest = json.loads((out / ".nst-batch.json").read_text())
    assert sorted(manifest["done"]) == [p.name for p in photos]


@pytest.mark.parametrize("token", ["another", "none"])
def test_a_client_without_the_clusters_token_is_refused(cluster, painting, tmp_path, token):
    photos = make_photos(tmp_path / "shoot", 1)
    if token == "another":
        env = {**cluster.env, "RAY_AUTH_TOKEN": "0" * 32}
    else:  # a client that sends no token at all (its HOME has no ~/.ray/auth_token)
        env = {key: value for key, value in cluster.env.items()
               if not key.startswith("RAY_AUTH")}
    done = ray_batch(cluster, *photos, "--style", painting, "-o", tmp_path / "out", *FAST,
                     env=env)
    assert done.returncode == EXIT_CODES["bad_input"], done.stderr
    assert f"cannot join the Ray cluster at {cluster.address}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "photo00.png").exists()


def test_without_ray_installed_the_option_says_how_to_get_it(painting, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "ray.py").write_text("raise ImportError('no ray here')\n")
    photos = make_photos(tmp_path / "shoot", 1)
    done = batch(*photos, "--style", painting, "-o", tmp_path / "out", *FAST, "--ray", "auto",
                 env={**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)])})
    assert done.returncode == EXIT_CODES["bad_input"]
    assert "pip install 'nst-engine[ray]'" in done.stderr


def test_ctrl_c_stops_the_clusters_work_and_keeps_what_was_painted(cluster, painting,
                                                                   tmp_path):
    photos, out, process = a_slow_batch(cluster, painting, tmp_path)
    painted = []
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == "photo":
            painted.append(Path(event["output"]).name)
            driver = cluster.namespace.child_of(process.pid)  # nsenter's: the batch
            os.kill(driver, signal.SIGINT)
            break
    rest, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_CODES["cancelled"], stderr
    assert "photos painted are kept" in stderr and "Traceback" not in stderr
    for line in rest.splitlines():  # a photo that ended meanwhile counts as painted
        event = json.loads(line)
        if event["event"] == "photo" and event["status"] == "done":
            painted.append(Path(event["output"]).name)
    assert results(out) == [".nst-batch.json", *sorted(painted)]
    assert len(painted) < len(photos)
    deadline = time.monotonic() + 30  # the painters are gone: no work goes on there
    while cluster.painters() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.painters() == []
