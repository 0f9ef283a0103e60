"""crowsonkb/style-transfer-pytorch's own command line, unmodified but for its VGG19.

    python benchmarks/crowsonkb_cli.py CHECKOUT [its own arguments…]

CHECKOUT is a copy of github.com/crowsonkb/style-transfer-pytorch (commit e7e2c71
was measured; MIT licence). Its ``VGGFeatures`` builds torchvision's ImageNet VGG19
(``models.vgg19(weights=IMAGENET1K_V1)``, a download that cannot be reached here) and
normalises its input with ImageNet's mean and std. This launcher changes exactly
those two things, in its module's namespace and nowhere else:

* ``models.vgg19`` returns torchvision's VGG19 with the engine's original VGG19
  weights (Simonyan & Zisserman's Caffe network, the same tensors the engine paints
  with) in its ``features``;
* ``transforms.Normalize`` returns the input mapping those weights expect: RGB in
  [0, 1] to BGR in 0–255 less the Caffe mean pixel (``nst_engine.vgg.Normalize``).

Everything else — its layers and their weights, the Wasserstein-2 style loss, Adam
with iterate averaging, the scales √2 apart, its defaults, its output writing — is
its own code, run through its own ``cli.main``. It imports ``aiohttp`` (its web
interface) and ``tqdm``; the engine's weights must be installed (NST_DATA_DIR).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path


def main() -> None:
    checkout = Path(sys.argv.pop(1)).resolve()
    sys.path.insert(0, str(checkout))
    import torchvision.models
    from style_transfer import cli
    from style_transfer import style_transfer as module

    from nst_engine import weights
    from nst_engine.vgg import Normalize

    features, family = weights.load("original")
    assert family == "original"

    def vgg19(**_ignored):
        model = torchvision.models.vgg19(weights=None)
        model.features.load_state_dict(features)
        return model

    module.models = types.SimpleNamespace(vgg19=vgg19, VGG19_Weights=types.SimpleNamespace(
        IMAGENET1K_V1=None))
    module.transforms = types.SimpleNamespace(
        Normalize=lambda mean, std: Normalize("original"))
    cli.main()


if __name__ == "__main__":
    main()
