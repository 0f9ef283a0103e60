"""The network a run looks through: which VGG19 weights, loaded once per engine cache,
and the feature pass under the run's precision."""

from __future__ import annotations

import torch

from nst_contract.knobs import Settings

from . import devices, weights
from .cache import EngineCache
from .vgg import Tap, VGGFeatures


class Network:
    """VGG19 cut after the run's layers, on the run's device and in its precision.

    The VGG pass runs in bf16 where that is faster (``devices.precision``); the style
    targets, G − A, the losses and the pixels L-BFGS moves stay fp32 (a departure from
    the paper's fp32: docs/losses.md).
    """

    def __init__(self, settings: Settings, cache: EngineCache | None = None) -> None:
        self.device = devices.pick(settings.device)
        self.precision = devices.precision(self.device, settings.precision)
        self.autocast = self.precision.name == "bf16"
        # oneDNN's bf16 kernels on the processor are faster on channels-last tensors
        # (the network and the image it is given); fp32 stays as it always was.
        self.memory_format = torch.channels_last \
            if self.autocast and self.device.type == "cpu" else torch.contiguous_format
        layers = (settings.content_layer, *settings.style_layers)
        spec = weights.chosen(settings.weights)
        # What makes two runs' networks the same one (the engine cache's key).
        self.key = (spec, layers, settings.pooling, str(self.device), self.precision.name)

        def load() -> tuple[VGGFeatures, str]:
            state, family = weights.load(spec)
            network = VGGFeatures(state, family, layers, settings.pooling)
            return network.to(self.device, memory_format=self.memory_format), family

        self.loaded = cache is None or self.key not in cache.networks
        self.vgg, self.family = cache.network(self.key, load) if cache else load()

    def features(self, image: torch.Tensor, tap: Tap | None = None) -> dict[str, torch.Tensor]:
        """VGG activations (see ``VGGFeatures.forward``), under bf16 autocast and
        channels-last on the processor when the precision is bf16."""
        if self.memory_format is torch.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.vgg(image, tap)
