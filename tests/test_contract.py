"""The shared package, ``nst_contract``: standard library only (GIMP's Python imports
it), and the import graph of both halves without a cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from nst_contract import wire

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("nst_contract", "nst_engine")
BLOCK_TORCH = ("import sys\n"
               "for name in ('torch', 'torchvision', 'numpy', 'PIL', 'nst_engine'):\n"
               "    sys.modules[name] = None  # importing it raises ImportError\n")


@pytest.mark.parametrize("where, module", [
    (REPO, "nst_contract.knobs"), (REPO, "nst_contract.plan"), (REPO, "nst_contract.wire"),
    (REPO, "nst_contract.errors"), (REPO, "nst_contract.layers"),
    *((REPO / "gimp_plugin" / "neural-style-transfer", module) for module in (
        "nst_arguments", "nst_client", "nst_config", "nst_estimates", "nst_messages")),
])
def test_what_gimps_python_imports_needs_neither_torch_nor_numpy_nor_the_engine(where,
                                                                                module):
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + f"sys.path[:0] = [{str(where)!r}, "
         f"{str(REPO)!r}]\nimport {module}"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def imports_of(path: Path, package: str) -> set[str]:
    """Every module of ours that ``path`` imports, at its top or inside a function
    (both packages are flat: a relative import is of the package itself)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(filter(None, (package if node.level else "", node.module)))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] in PACKAGES}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {f"{package}.{path.stem}": path for package in PACKAGES
               for path in (REPO / package).glob("*.py") if path.stem != "__init__"}
    graph = {}
    for name, path in modules.items():
        package = name.split(".")[0]
        graph[name] = {target for target in imports_of(path, package)
                       if target in modules and target != name}
    return graph


def test_no_import_cycle_and_the_contract_imports_nothing_of_the_engine():
    graph = import_graph()
    assert graph["nst_engine.transfer"] >= {"nst_contract.plan", "nst_engine.loop"}  # sees
    for name, targets in graph.items():
        if name.startswith("nst_contract."):
            assert not any(t.startswith("nst_engine.") for t in targets), (name, targets)
    done, on_path = set(), []

    def visit(name: str) -> None:
        if name in on_path:
            cycle = on_path[on_path.index(name):] + [name]
            pytest.fail("import cycle: " + " → ".join(cycle))
        if name in done:
            return
        on_path.append(name)
        for target in sorted(graph[name]):
            visit(target)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_the_engines_heartbeat_comes_well_within_what_a_client_waits_for():
    assert wire.ENGINE_HEARTBEAT_S * 5 <= wire.SILENT_ENGINE_S
    # A client's missed pings end its run before it would itself give the engine up.
    assert wire.HEARTBEAT_MISSES * wire.CLIENT_HEARTBEAT_S < wire.SILENT_ENGINE_S


def _stream(*messages):
    """Protocol 3 bytes of ``(message, payload)`` pairs."""
    return b"".join(wire.encode({**m, "bytes": len(p)} if p else m) + p for m, p in messages)


MESSAGES = [({"event": "progress", "step": 1}, b""),
            ({"event": "preview", "shape": [1, 2, 3]}, bytes(range(24))),
            ({"event": "alive"}, b""),
            ({"event": "result"}, b"\n" * 5000)]  # a payload may hold newlines


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_one_reader_splits_any_chunking_into_the_same_messages(chunk):
    """Every reader (the engine's blocking Channel, the plug-in's non-blocking one)
    goes through Frames: bytes fed in any pieces give the messages and payloads sent."""
    data = _stream(*MESSAGES)
    frames = wire.Frames("event", limit=lambda m: 1 << 20)
    got = []
    for start in range(0, len(data), chunk):
        frames.feed(data[start:start + chunk])
        while (found := frames.next()) is not None:
            got.append((found[0], bytes(found[1])))
    assert [(m["event"], p) for m, p in got] == [(m["event"], p) for m, p in MESSAGES]


def test_a_payload_is_received_straight_into_its_room():
    frames = wire.Frames("event", limit=lambda m: 100, make_room=bytearray)
    frames.feed(wire.encode({"event": "result", "bytes": 10}) + b"abc")
    assert frames.next() is None
    room = frames.room()
    assert len(room) == 7
    room[:7] = b"defghij"
    frames.filled(7)
    message, payload = frames.next()
    assert message["event"] == "result" and bytes(payload) == b"abcdefghij"
    assert frames.room() is None


def test_garbage_is_refused_or_skipped_and_a_payload_over_the_limit_makes_no_room():
    strict = wire.Frames("event")
    strict.feed(b"not json\n")
    with pytest.raises(wire.EngineError, match="not JSON"):
        strict.next()
    skipped = []
    lenient = wire.Frames("event", on_garbage=skipped.append)
    lenient.feed(b'[1]\n{"event": 7}\n{"event": "x", "bytes": -1}\n{"event": "alive"}\n')
    assert lenient.next() == ({"event": "alive"}, b"")
    assert len(skipped) == 3
    rooms = []
    small = wire.Frames("event", limit=lambda m: 10, make_room=rooms.append)
    small.feed(wire.encode({"event": "result", "bytes": 1 << 40}))
    with pytest.raises(wire.EngineError, match="at most 10"):
        small.next()
    assert rooms == []
    endless = wire.Frames("event")
    endless.feed(b"x" * (wire.MAX_LINE + 1))
    with pytest.raises(wire.EngineError, match="too long"):
        endless.next()
