"""A picture in the engine: float32 ``H×W×3`` RGB in [0, 1] (non-linear, as stored),
alpha alongside in its original dtype and handed back untouched, and the bits to write
back; the protocol's arrays in and out, and the photo's colours kept. numpy only
(torch where it is faster, imported when used); files are ``images.py``'s."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nst_contract.errors import bad_input

MIN_SIDE = 16
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec. 601, for non-linear RGB


@dataclass
class Picture:
    rgb: np.ndarray  # H×W×3 float32 in [0, 1]; grayscale is replicated into 3 channels
    alpha: np.ndarray | None = None  # H×W in the source's dtype, passed through bit-exact
    gray: bool = False
    bits: int = 8  # precision to write back: 8, 16 or 32 (float)
    icc: bytes | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return self.rgb.shape[1], self.rgb.shape[0]


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ LUMA


def keep_colors(stylised: np.ndarray, content: np.ndarray) -> np.ndarray:
    """The stylised luminance with the content's chroma (Y'CbCr chroma kept exactly)."""
    shift = luminance(stylised) - luminance(content)
    return np.clip(content + shift[..., None], 0.0, 1.0)


def as_the_layer_will_be(rgb: np.ndarray, photo: np.ndarray | None, preserve_colors: bool,
                         gray: bool) -> np.ndarray:
    """The stylised colours as the result layer gets them: the photo's chroma when its
    colours are kept, gray for a gray layer. For the result and for every preview, so
    that the forming picture shows what the layer will be."""
    if preserve_colors:
        rgb = keep_colors(rgb, photo)
    if gray:
        rgb = np.repeat(luminance(rgb)[..., None], 3, axis=2)
    return rgb


def from_channels(data: np.ndarray, scale: float, bits: int) -> Picture:
    """Builds a Picture from an ``H×W×C`` array (C = 1, 2, 3 or 4) of raw values."""
    if data.ndim == 2:
        data = data[..., None]
    channels = data.shape[2]
    if channels not in (1, 2, 3, 4):
        raise bad_input(f"images with {channels} channels are not supported")
    if data.dtype.kind == "f" and not math.isfinite(data.sum(dtype=np.float64)):
        # any NaN or ±inf makes the sum so; one pass, no temporaries (unlike isfinite)
        raise bad_input("the image contains NaN or infinite pixel values")
    color = data[..., : 1 if channels <= 2 else 3].astype(np.float32)  # a copy
    if scale != 1.0:
        color /= scale
    np.clip(color, 0.0, 1.0, out=color)
    alpha = data[..., -1].copy() if channels in (2, 4) else None
    if channels <= 2:
        color = np.repeat(color, 3, axis=2)
    return Picture(color, alpha, channels <= 2, bits)


def check_size(picture: Picture, what: str) -> Picture:
    width, height = picture.size
    if min(width, height) < MIN_SIDE:
        raise bad_input(
            f"{what} is {width}×{height} pixels; at least {MIN_SIDE}×{MIN_SIDE} is needed"
        )
    return picture


def picture_from_array(data: np.ndarray, owned: bool = False, what: str = "layer") -> Picture:
    """The protocol's input: float32 ``H×W×C`` (C = 1 Y, 2 YA, 3 RGB, 4 RGBA) in [0, 1].

    ``owned``: ``data`` is the engine's own (a writable buffer it received): an RGB(A)
    layer's colour is clipped in place and the picture holds views of it — no copy,
    which for a 24-megapixel layer saves most of a warm service's time to the first
    step (docs/design.md, "The layer's way in").
    """
    if data.dtype != np.float32 or data.ndim != 3:
        raise bad_input(f"expected a float32 H×W×C array, got {data.dtype} {data.shape}")
    if not (owned and data.shape[2] in (3, 4) and data.flags.writeable):
        return check_size(from_channels(data, 1.0, 32), what)
    pixels = as_tensor(data)  # torch: multithreaded, 7× numpy's speed at these passes
    # A float32 sum is NaN or infinite when a value is; when it overflowed, numpy says.
    if not math.isfinite(pixels.sum()) and not np.isfinite(data).all():
        raise bad_input("the image contains NaN or infinite pixel values")
    pixels[..., :3].clamp_(0.0, 1.0)
    alpha = data[..., 3] if data.shape[2] == 4 else None
    return check_size(Picture(data[..., :3], alpha, False, 32), what)


def picture_to_array(picture: Picture) -> np.ndarray:
    """Inverse of :func:`picture_from_array`; alpha is returned bit-exact. One new
    array, filled by torch (a 24-megapixel layer in 0.1 s on two cores; numpy's
    single-threaded fill of fresh memory took up to 0.9 s)."""
    import torch

    color = picture.rgb[..., :1] if picture.gray else picture.rgb
    depth = color.shape[2]
    data = torch.empty((*color.shape[:2], depth + (picture.alpha is not None)))
    data[..., :depth] = as_tensor(np.asarray(color, np.float32))
    if picture.alpha is not None:
        data[..., depth] = as_tensor(np.asarray(picture.alpha, np.float32))
    return data.numpy()


def as_tensor(array: np.ndarray):
    """A torch tensor sharing ``array``'s memory; a copy only of a mirrored view (negative
    strides), which torch cannot take. torch is imported here, not with this module:
    ``nst-engine connect`` must start in milliseconds."""
    import torch

    if any(step < 0 for step in array.strides):
        array = np.ascontiguousarray(array)
    return torch.from_numpy(array)
