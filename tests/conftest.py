import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "gimp_plugin" / "neural-style-transfer")]


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory) -> Path:
    """One cache folder for the whole session: the processor's bf16 probe runs once."""
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(autouse=True)
def isolated_engine(tmp_path, monkeypatch, engine_cache):
    """Random weights, an empty data folder and a runtime folder of its own (so a warm
    engine service a test starts is that test's, and exits soon) unless a test asks
    otherwise; the session's cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(engine_cache))
    monkeypatch.setenv("NST_WEIGHTS", "random")
    monkeypatch.setenv("NST_DATA_DIR", str(tmp_path / "nst-data"))
    runtime = tmp_path.parent / f"{tmp_path.name}-run"  # beside: tests list tmp_path
    runtime.mkdir(mode=0o700, exist_ok=True)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("NST_SERVICE_IDLE_S", "3")
    monkeypatch.delenv("NST_DEBUG", raising=False)


@pytest.fixture
def photo(tmp_path) -> Path:
    """A 96×80 RGB 'photo': smooth gradients plus a disc."""
    y, x = np.mgrid[0:80, 0:96]
    rgb = np.stack([x / 95, y / 79, 0.5 + 0.4 * np.sin(x / 7)], axis=2)
    rgb[(x - 40) ** 2 + (y - 40) ** 2 < 300] = (0.9, 0.2, 0.1)
    path = tmp_path / "photo.png"
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def painting(tmp_path) -> Path:
    """A 64×64 'painting': bold diagonal stripes of saturated colours."""
    y, x = np.mgrid[0:64, 0:64]
    band = ((x + y) // 6) % 3
    palette = np.array([(0.1, 0.2, 0.8), (0.95, 0.8, 0.1), (0.1, 0.6, 0.2)])
    path = tmp_path / "painting.png"
    Image.fromarray((palette[band] * 255).astype(np.uint8)).save(path)
    return path


def real_weights_dir() -> Path | None:
    """Where the test runner installed the real VGG19 weights (NST_TEST_DATA_DIR)."""
    folder = os.environ.get("NST_TEST_DATA_DIR")
    if folder and (Path(folder) / "vgg19-original.pth").is_file():
        return Path(folder)
    if os.environ.get("NST_REQUIRE_WEIGHTS") == "1":
        pytest.fail("the real VGG19 weights are required here (NST_REQUIRE_WEIGHTS=1) but "
                    "NST_TEST_DATA_DIR holds none; run ./run-tests.sh")
    pytest.skip("real VGG19 weights not installed; ./run-tests.sh installs them")
