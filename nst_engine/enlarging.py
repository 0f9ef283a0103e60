"""Bringing the working-size painting up to the layer's full size.

``bicubic`` enlarges the painting alone: at ×4–12 its edges and the photo's fine
detail are soft at 100 %. ``guided`` (the default) enlarges it the same way and
then adds the photo's own finest detail, the part of the full-size photo that
the working size could not hold, each colour channel scaled by how strongly the
painting follows the photo's brightness around that point (a guided filter's
local gain, measured at the working size). Where the painting repainted a
region freely the gain is near zero and nothing of the photo comes back; where
it kept the photo's edges they come back sharp. ``docs/losses.md`` has the
comparison that chose it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .pictures import LUMA

GUIDE_RADIUS = 4  # working-size pixels the local gain is measured over (9×9)
GUIDE_EPS = 1e-4  # regularises the gain where the photo is flat (variance of [0, 1] values)
MAX_GAIN = 2.0  # where the photo is nearly flat its noise would be amplified past this
STRIP_ROWS = 512  # full-size rows the gain is applied to at once (bounds the memory)


def resize(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bicubic, antialiased when shrinking; no blockiness when enlarging. Contiguous,
    also from a view (``transfer.photo_tensor``)."""
    if image.shape[-2:] == (height, width):
        return image.contiguous()
    out = F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False,
                        antialias=True)
    return out.clamp(0, 1)


def luma_plane(rgb: torch.Tensor) -> torch.Tensor:
    """Luma Y' of a (1, 3, H, W) R'G'B' tensor, as (1, 1, H, W): the channels-first
    counterpart of ``pictures.luminance``, with the same weights."""
    weights = torch.as_tensor(LUMA, dtype=rgb.dtype, device=rgb.device)
    return (rgb * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)


def enlarge(painting: torch.Tensor, photo: torch.Tensor, method: str = "guided") -> torch.Tensor:
    """``painting`` (1, 3, h, w) brought to ``photo``'s size (1, 3, H, W), in [0, 1]."""
    height, width = photo.shape[-2:]
    if painting.shape[-2:] == (height, width):
        return painting
    enlarged = resize(painting, width, height)
    if method == "bicubic":
        return enlarged
    small = resize(photo, painting.shape[-1], painting.shape[-2])
    guide = luma_plane(small)
    gain = local_gain(guide, painting)
    smooth = resize(guide, width, height)  # the photo as the working size saw it
    for top in range(0, height, STRIP_ROWS):
        rows = slice(top, min(height, top + STRIP_ROWS))
        lost = luma_plane(photo[..., rows, :]) - smooth[..., rows, :]
        strip = enlarged[..., rows, :]
        strip += _bilinear_rows(gain, width, height, rows) * lost
        strip.clamp_(0, 1)
    return enlarged


def local_gain(guide: torch.Tensor, painting: torch.Tensor) -> torch.Tensor:
    """Per channel, how much the painting changes per unit of the photo's brightness
    around each working-size pixel: a guided filter's ``a`` (He et al.), smoothed."""
    def box(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2 * GUIDE_RADIUS + 1, stride=1, padding=GUIDE_RADIUS,
                            count_include_pad=False)

    mean_guide, mean_painting = box(guide), box(painting)
    covariance = box(guide * painting) - mean_guide * mean_painting
    variance = box(guide * guide) - mean_guide * mean_guide
    return box(covariance / (variance + GUIDE_EPS)).clamp(-MAX_GAIN, MAX_GAIN)


def _bilinear_rows(low: torch.Tensor, width: int, height: int, rows: slice) -> torch.Tensor:
    """The given rows of ``low`` bilinearly enlarged to ``width``×``height``, pixel
    centres aligned as ``F.interpolate(align_corners=False)`` aligns them."""
    xs = (torch.arange(width, dtype=low.dtype, device=low.device) + 0.5) / width * 2 - 1
    ys = (torch.arange(rows.start, rows.stop, dtype=low.dtype, device=low.device) + 0.5) \
        / height * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
    return F.grid_sample(low, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)
