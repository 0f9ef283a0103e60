"""What a run optimises towards: the photo's content features and the paintings' blended
Gram matrices (in strips when large, kept in the engine cache), and the image the
optimisation starts from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from nst_contract import plan
from nst_contract.knobs import MIN_WORK_SIDE, Settings
from nst_contract.layers import stride

from .cache import EngineCache, style_key
from .control import Control
from .enlarging import resize
from .images import load_picture
from .losses import Objective, blended_grams
from .network import Network
from .tensors import to_tensor


class Targets:
    def __init__(self, network: Network, settings: Settings,
                 cache: EngineCache | None = None) -> None:
        self.network = network
        self.settings = settings
        self.cache = cache

    def style_grams(self, styles: Sequence[torch.Tensor], side: float, budget: float,
                    control: Control | None = None, digests: Sequence[str] = (),
                    native: bool = False) -> dict:
        """Blended Gram targets of the style images resized to ``style_scale × side``,
        each computed within ``budget`` bytes (see :meth:`grams`), or taken from the
        engine cache by the paintings' ``digests`` (``cache.style_digest``).

        ``native`` (the refinement at full size): never enlarged past the painting's
        own size, whose fine texture enlarging would blur (docs/losses.md).
        """
        s = self.settings
        grams = []
        for index, style in enumerate(styles):
            factor = side * s.style_scale / max(style.shape[-2:])
            factor = min(factor, 1.0) if native else factor
            size = (max(MIN_WORK_SIDE, round(style.shape[-1] * factor)),
                    max(MIN_WORK_SIDE, round(style.shape[-2] * factor)))

            def compute(style=style, size=size) -> dict:
                return self.grams(resize(style, *size), budget, control)

            if self.cache is not None and index < len(digests):
                key = style_key(digests[index], size, self.network.key, s.style_loss)
                grams.append(self.cache.gram(key, compute))
            else:
                grams.append(compute())
        return blended_grams(grams, s.style_blend or (1.0,) * len(styles))

    def grams(self, image: torch.Tensor, budget: float, control: Control | None = None) -> dict:
        """Gram matrices of ``image`` at the style layers; for the ``w2`` style loss
        with the features' mean as a last row (``losses.moments``).

        A large image (a style image enlarged for a full-resolution scale) is run
        through the network in horizontal strips that fit ``budget`` bytes, each
        with ``STRIP_MARGIN`` rows of context above and below whose features are
        dropped; the Gram sums over the strips' own rows. Exact up to what lies
        beyond the margin in the deepest layers' receptive fields.
        """
        layers = self.settings.style_layers
        height, width = image.shape[-2:]
        rows = plan.strip_rows(width, budget)
        margin = plan.STRIP_MARGIN
        sums = {name: 0.0 for name in layers}
        totals = {name: 0.0 for name in layers}
        positions = dict.fromkeys(layers, 0)
        with torch.no_grad():
            for top in range(0, height, rows):
                if control is not None:
                    control.check()
                bottom = min(height, top + rows)
                above = min(top, margin)
                strip = image[..., top - above:min(height, bottom + margin), :]
                features = self.network.features(strip)
                for name in layers:
                    step = stride(name)
                    core = features[name][..., above // step:(above + bottom - top) // step, :]
                    flat = core.reshape(core.shape[1], -1).float()
                    sums[name] = sums[name] + flat @ flat.T
                    totals[name] = totals[name] + flat.sum(1)
                    positions[name] += flat.shape[1]
                del features  # before the next strip's pass
        if self.settings.style_loss == "w2":
            return {name: torch.cat([sums[name], totals[name][None]]) / positions[name]
                    for name in layers}
        return {name: sums[name] / positions[name] for name in layers}

    def objective(self, content: torch.Tensor, grams: dict) -> Objective:
        """The loss for images of ``content``'s size against the given style Grams."""
        s = self.settings
        with torch.no_grad():
            target = self.network.features(content)[s.content_layer]
        return Objective({s.content_layer: target}, grams, s.content_weight, s.beta,
                         s.tv_weight, s.style_loss).to(self.network.device)


def start_image(settings: Settings, content: torch.Tensor) -> torch.Tensor:
    """Where the first scale's optimisation starts: the photo, noise, or an image file."""
    if settings.init == "content":
        return content.clone()
    if settings.init == "noise":
        generator = torch.Generator().manual_seed(settings.seed)
        return torch.rand(content.shape, generator=generator).to(content.device)
    other = load_picture(Path(settings.init), "init image")
    return resize(to_tensor(other.rgb, content.device), content.shape[-1], content.shape[-2])
