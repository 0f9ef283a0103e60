"""With the real VGG19 (installed by ./run-tests.sh): the style really transfers."""

import numpy as np
import pytest
from conftest import real_weights_dir

from nst_engine import Settings, StyleTransfer, load_picture
from nst_engine.enlarging import resize
from nst_engine.losses import gram_matrix
from nst_engine.tensors import to_tensor

pytestmark = pytest.mark.real_weights


def test_short_run_moves_grams_to_the_style_and_keeps_the_content(photo, painting, monkeypatch):
    monkeypatch.setenv("NST_DATA_DIR", str(real_weights_dir()))
    monkeypatch.delenv("NST_WEIGHTS")
    engine = StyleTransfer(Settings(max_size=128, iterations=40, device="cpu"))
    assert engine.network.family == "original"
    content, style = load_picture(photo), load_picture(painting)
    result = engine.stylize(content, [style]).picture

    def features(rgb):
        image = to_tensor(rgb, engine.device)
        return engine.network.features(resize(image, *content.size))

    target, before, after = features(style.rgb), features(content.rgb), features(result.rgb)
    ratios = []
    for layer in engine.settings.style_layers:
        start = (gram_matrix(before[layer]) - gram_matrix(target[layer])).norm()
        end = (gram_matrix(after[layer]) - gram_matrix(target[layer])).norm()
        ratios.append(float(end / start))
    # seen here: 0.38 0.59 0.62 0.53 0.38
    assert max(ratios) < 0.75 and np.mean(ratios) < 0.6, ratios
    # The content layer stays closer to the photo than the painting is (seen: 0.81 of it).
    layer = engine.settings.content_layer
    moved = (after[layer] - before[layer]).norm()
    painting_distance = (target[layer] - before[layer]).norm()
    assert moved < 0.9 * painting_distance, (float(moved), float(painting_distance))
