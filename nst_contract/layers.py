"""VGG19's convolutional layers by name (``conv1_1`` … ``pool5``): their order, stride
and parameter shapes.

Standard library only, so that the settings (which name layers) and the command
line know the network without importing torch; ``vgg.py`` builds it.
"""

from __future__ import annotations

# Channels and convolutions per block of VGG19's convolutional part.
BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


def _layer_names() -> list[str]:
    names = []
    for block, (_, convs) in enumerate(BLOCKS, start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return names


LAYER_NAMES: list[str] = _layer_names()


def stride(name: str) -> int:
    """Input pixels per position of layer ``name``: 2 for every pooling up to it."""
    return 2 ** sum(n.startswith("pool") for n in LAYER_NAMES[: LAYER_NAMES.index(name) + 1])


def _feature_shapes() -> dict[str, tuple[int, ...]]:
    shapes, channels = {}, 3
    for index, name in enumerate(LAYER_NAMES):
        if name.startswith("conv"):
            out = BLOCKS[int(name[4]) - 1][0]
            shapes[f"{index}.weight"] = (out, channels, 3, 3)
            shapes[f"{index}.bias"] = (out,)
            channels = out
    return shapes


# Expected parameter shapes, keyed like torchvision's ``vgg19().features`` state dict.
FEATURE_SHAPES: dict[str, tuple[int, ...]] = _feature_shapes()
