"""Planning a run: the coarse-to-fine scales, their tiles, and the memory model.

Pure geometry and arithmetic, no network, standard library only: what the run will
do is known (and reported in the ``started`` event) before the first step, and the
plug-in's time estimate plans with the very same rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import EngineError, bad_input
from .knobs import MIN_WORK_SIDE

MIN_SCALE_SIDE = 128  # coarsest scale's longest side
MIN_TILE_SIDE = 128
BYTES_PER_PIXEL = 2000.0  # peak memory per working pixel, L-BFGS, fp32 (~1630 at 1 MP)
PHOTO_BYTES_PER_PIXEL = 64.0  # ~5 full-size fp32 RGB copies of the photo
NO_GRAD_BYTES_PER_PIXEL = 800.0  # a forward pass without gradients, style layers kept
STRIP_MARGIN = 64  # rows of context around a strip; a multiple of VGG19's stride 16
LBFGS_HISTORY = 50  # curvature pairs L-BFGS keeps, at most ...
LBFGS_HISTORY_BYTES = 320e6  # ... and at most this much memory: 12 pairs at 1024²

Tile = tuple[int, int, int, int]  # x0, y0, x1, y1 at the scale's size


@dataclass
class Scale:
    width: int
    height: int
    steps: int
    tiles: list[Tile] = field(default_factory=list)  # empty: the whole image at once
    refining: bool = False  # the refinement at the photo's full size, after the working size

    def regions(self) -> list[Tile]:
        return self.tiles or [(0, 0, self.width, self.height)]

    @property
    def ticks(self) -> int:
        """Progress steps: every tile runs all of the scale's steps."""
        return self.steps * len(self.regions())

    @property
    def work(self) -> int:
        """Pixel-steps, the unit of the time estimate."""
        return self.steps * sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in self.regions())


def auto_max_size(device_type: str) -> int:
    """The working size when none is asked for: 1024 px on a GPU, 512 on the CPU."""
    return 512 if device_type == "cpu" else 1024


def plan_scales(width: int, height: int, max_size: int, iterations: int) -> list[Scale]:
    """Coarse to fine: the longest side doubles up to ``min(max_size, input)``.

    Each scale gets about half the steps of the next finer one (every scale at
    least one), so the top scale gets about half of them all. A step costs a
    quarter of one at the next finer scale, so the coarse scales, which lay out the
    style's large structures, take about a seventh of the top scale's time; steps
    beyond a few dozen there barely change where the top scale ends up, and the
    top scale needs its steps to redraw the fine texture that enlarging blurs.

    VGG needs a short side of at least ``MIN_WORK_SIDE``; a coarse scale of a
    long, thin photo is widened to it, but never past the top scale, and a photo
    so thin that even the top scale would exceed ``max_size`` is refused.
    """
    longest, shortest = max(width, height), min(width, height)
    top = min(max_size, longest)
    if shortest * top / longest < MIN_WORK_SIDE and longest * MIN_WORK_SIDE / shortest > \
            max_size:
        needed = math.ceil(longest * MIN_WORK_SIDE / shortest)
        raise bad_input(
            f"a {width}×{height} image is too thin for a max size of {max_size}: its short "
            f"side would be under {MIN_WORK_SIDE} pixels; use a max size of at least "
            f"{needed}, or crop it")
    sides = [top]
    while sides[-1] / 2 >= MIN_SCALE_SIDE:
        sides.append(sides[-1] / 2)
    iterations = max(1, iterations)
    sides = sides[:iterations][::-1]
    extra = iterations - len(sides)  # the steps left once each scale has one
    steps = [1 + extra * 2**i // (2 ** len(sides) - 1) for i in range(len(sides) - 1)]
    steps.append(iterations - sum(steps))
    scales = []
    for side, count in zip(sides, steps):
        factor = side / longest
        factor = max(factor, MIN_WORK_SIDE / min(width, height)) if factor < 1 else factor
        scales.append(
            Scale(max(1, round(width * factor)), max(1, round(height * factor)), count)
        )
    return scales


def plan_refinement(scales: list[Scale], width: int, height: int, steps: int) -> list[Scale]:
    """Adds the refinement at full size after the working size, unless the working
    size already is the full size."""
    top = scales[-1]
    if (top.width, top.height) == (width, height):
        return scales
    return [*scales, Scale(width, height, steps, refining=True)]


def tile_scales(scales: list[Scale], work_budget: float) -> list[Scale]:
    """Splits each scale that would not fit ``work_budget`` bytes into overlapping tiles."""
    for scale in scales:
        if scale.width * scale.height * BYTES_PER_PIXEL <= work_budget:
            continue
        side = int((max(work_budget, 0) / BYTES_PER_PIXEL) ** 0.5)
        if side < MIN_TILE_SIDE:
            raise EngineError(
                "out_of_memory",
                f"the memory budget ({work_budget / 1e9:.1f} GB free for the work) is too "
                f"small even for {MIN_TILE_SIDE}-pixel tiles; raise --memory-budget",
            )
        scale.tiles = tile_grid(scale.width, scale.height, side, tile_overlap(side))
    return scales


def work_budget(budget: float, fixed: float, pixels: int) -> float:
    """Bytes left for one optimisation, or one pass for Gram matrices, once ``fixed``
    bytes (torch and the network) and the full-size copies of a photo of ``pixels``
    are held."""
    return budget - fixed - PHOTO_BYTES_PER_PIXEL * pixels


def strip_rows(width: int, budget: float) -> int:
    """Rows of a ``width``-pixel image one no-gradient pass may take within ``budget``
    bytes: a multiple of ``STRIP_MARGIN``, after the margins above and below."""
    rows = int(budget / (NO_GRAD_BYTES_PER_PIXEL * width)) - 2 * STRIP_MARGIN
    return max(STRIP_MARGIN, rows // STRIP_MARGIN * STRIP_MARGIN)


def lbfgs_history(values: int) -> int:
    """Curvature pairs (two fp32 vectors each) that fit in ``LBFGS_HISTORY_BYTES``."""
    return max(5, min(LBFGS_HISTORY, int(LBFGS_HISTORY_BYTES // (8 * values))))


def tile_grid(width: int, height: int, side: int, overlap: int) -> list[Tile]:
    """Overlapping tiles of at most ``side`` pixels covering the image, row by row."""

    def spans(length: int) -> list[tuple[int, int]]:
        if length <= side:
            return [(0, length)]
        count = math.ceil((length - overlap) / (side - overlap))
        stride = (length - side) / (count - 1)
        return [(round(i * stride), round(i * stride) + side) for i in range(count)]

    return [(x0, y0, x1, y1) for y0, y1 in spans(height) for x0, x1 in spans(width)]


def tile_overlap(side: int) -> int:
    """Overlap between neighbouring tiles of ``side`` pixels."""
    return max(32, side // 6)
