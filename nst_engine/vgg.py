"""VGG19 feature extractor with layers addressed by name (``conv1_1`` … ``relu5_4``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from nst_contract.layers import LAYER_NAMES

Tap = Callable[[str, torch.Tensor], torch.Tensor]

# Input normalisation per weight family. "original" is Simonyan & Zisserman's
# Caffe VGG19: BGR, 0-255, mean pixel subtracted. "torchvision" is ImageNet mean/std.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_features() -> nn.Sequential:
    """torchvision's VGG19 ``features`` (same modules and indices), without the classifier."""
    return make_layers(cfgs["E"], batch_norm=False)


class Normalize(nn.Module):
    """Maps RGB in [0, 1] to the input the weights were trained on."""

    def __init__(self, family: str) -> None:
        super().__init__()
        if family == "original":
            scale = torch.full((3,), 255.0)
            shift = torch.tensor(CAFFE_MEAN_BGR)
            self.bgr = True
        elif family in ("torchvision", "random"):
            scale = 1.0 / torch.tensor(IMAGENET_STD)
            shift = torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
            self.bgr = False
        else:
            raise ValueError(f"unknown weight family {family!r}")
        self.register_buffer("scale", scale.view(1, 3, 1, 1))
        self.register_buffer("shift", shift.view(1, 3, 1, 1))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = rgb.flip(1) if self.bgr else rgb
        return x * self.scale - self.shift


class _MaxPool(torch.autograd.Function):
    """2×2 max pooling that keeps no indices for backward: it finds the maxima again
    in its input, which the ReLU before it keeps anyway. torch's own pooling holds
    int64 indices, half the size of its input (0.24 GB over the four poolings at
    1 MP), for the whole backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.max_pool2d(x, 2, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        _, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        return F.max_unpool2d(grad, indices, 2, 2, output_size=x.shape[-2:])


class MaxPool(nn.Module):
    """VGG19's pooling (2×2, stride 2), with the leaner backward of ``_MaxPool``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _MaxPool.apply(x)


class VGGFeatures(nn.Module):
    """Runs VGG19 up to the deepest requested layer and returns those activations.

    The network is truncated after the last layer in use, frozen and in eval mode.
    """

    def __init__(
        self,
        state_dict: dict[str, torch.Tensor],
        family: str,
        layers: Iterable[str],
        pooling: str = "max",
    ) -> None:
        super().__init__()
        self.layers = list(dict.fromkeys(layers))
        unknown = [name for name in self.layers if name not in LAYER_NAMES]
        if unknown:
            raise ValueError(f"unknown VGG19 layer(s): {', '.join(unknown)}")
        if pooling not in ("max", "avg"):
            raise ValueError("pooling must be 'max' or 'avg'")
        depth = max(LAYER_NAMES.index(name) for name in self.layers) + 1
        features = build_features()
        features.load_state_dict(state_dict)
        modules = list(features.children())[:depth]
        for index, module in enumerate(modules):
            if isinstance(module, nn.MaxPool2d):
                modules[index] = nn.AvgPool2d(2, 2) if pooling == "avg" else MaxPool()
            # An in-place ReLU would overwrite a conv output we return.
            if isinstance(module, nn.ReLU):
                module.inplace = LAYER_NAMES[index - 1] not in self.layers
        self.names = LAYER_NAMES[:depth]
        self.body = nn.Sequential(*modules)
        self.normalize = Normalize(family)
        self.eval().requires_grad_(False)

    def forward(self, rgb: torch.Tensor, tap: Tap | None = None) -> dict[str, torch.Tensor]:
        """The requested layers' activations. ``tap(name, x)``, when given, sees each
        of them during the pass and returns what goes on through the network (the
        losses use it so that their gradients join the backward pass there)."""
        x = self.normalize(rgb)
        wanted = set(self.layers)
        out = {}
        for name, module in zip(self.names, self.body):
            x = module(x)
            if name in wanted:
                out[name] = x = tap(name, x) if tap else x
        return out
