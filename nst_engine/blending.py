"""How the results of overlapping tiles are blended into one picture (the tiles
themselves are planned in ``nst_contract.plan``)."""

from __future__ import annotations

import torch

from nst_contract.plan import Tile


def blend_ramp(tile: Tile, tiles: list[Tile], device: torch.device) -> torch.Tensor:
    """Weight of a tile's result: rising across its actual overlap with the tiles
    before it (left and above, each axis its own width), 1 elsewhere; later tiles
    blend over its right and bottom edges."""
    x0, y0, x1, y1 = tile
    left = max((tx1 - x0 for tx0, _, tx1, _ in tiles if tx0 < x0 < tx1), default=0)
    top = max((ty1 - y0 for _, ty0, _, ty1 in tiles if ty0 < y0 < ty1), default=0)

    def ramp(rise: int, length: int) -> torch.Tensor:
        weight = torch.ones(length, device=device)
        rise = min(rise, length)
        if rise > 0:
            weight[:rise] = torch.linspace(0, 1, rise + 2, device=device)[1:-1]
        return weight

    return ramp(top, y1 - y0).view(1, 1, -1, 1) * ramp(left, x1 - x0).view(1, 1, 1, -1)


def blend_in(image: torch.Tensor, region: torch.Tensor, tile: Tile,
             tiles: list[Tile]) -> torch.Tensor:
    """``image`` with a tile's optimised ``region`` blended in over the ramp (in place);
    with no tiles the region is the whole image."""
    if not tiles:
        return region
    x0, y0, x1, y1 = tile
    weight = blend_ramp(tile, tiles, region.device)
    with torch.no_grad():
        old = image[..., y0:y1, x0:x1]
        image[..., y0:y1, x0:x1] = weight * region + (1 - weight) * old
    return image
