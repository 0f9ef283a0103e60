"""Gatys et al. style transfer, one run from photo to stylised picture.

:meth:`StyleTransfer.stylize` plans the scales (``nst_contract.plan``) and walks them
coarse to fine: each scale's targets come from :class:`~.targets.Targets` (through the
:class:`~.network.Network`), its pixels are optimised by the :class:`~.loop.Loop`, one
tile at a time where the scale was cut (``blending``), and the result is enlarged to
full size (``enlarging``); a :class:`~.control.Control` lets another thread stop it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from nst_contract import plan
from nst_contract.errors import EngineError, bad_input
from nst_contract.knobs import MIN_WORK_SIDE, Settings
from nst_contract.plan import Scale

from . import devices, enlarging
from .blending import blend_in
from .cache import EngineCache, style_digest
from .control import Control
from .enlarging import resize
from .loop import Iterate, Loop, Stop
from .network import Network
from .pictures import Picture, as_the_layer_will_be
from .targets import Targets, start_image
from .tensors import photo_tensor, to_array, to_tensor

OOM_SHRINK = 1.5  # the working size an out-of-memory message suggests: this much smaller


@dataclass
class Result:
    picture: Picture
    steps: int  # optimisation steps done
    stopped: Stop


class StyleTransfer:
    """One run's engine: the network (from ``cache`` when a warm engine holds it), the
    targets it looks for, and :meth:`stylize`."""

    def __init__(self, settings: Settings, cache: EngineCache | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.cache = cache
        self.network = Network(settings, cache)
        self.device = self.network.device
        self.targets = Targets(self.network, settings, cache)

    @property
    def max_size(self) -> int:
        if self.settings.auto_size:
            return plan.auto_max_size(self.device.type)
        return self.settings.max_size

    def work_budget(self, pixels: int) -> float:
        budget = devices.memory_budget(self.device, self.settings.memory_budget)
        return plan.work_budget(budget, devices.fixed_bytes(self.device), pixels)

    def plan(self, width: int, height: int, worked_to: int = 0) -> list[Scale]:
        """The scales, each split into overlapping tiles when it would not fit the budget.
        ``worked_to``: the longest side a start picture was already worked out at (a
        quick look finished): the scales up to it are not done again."""
        s = self.settings
        scales = plan.plan_scales(width, height, self.max_size, s.iterations)
        if worked_to:
            scales = [c for c in scales if max(c.width, c.height) > worked_to] or scales[-1:]
        if s.refines(self.device.type):
            scales = plan.plan_refinement(scales, width, height,
                                      s.refinement_steps(self.device.type))
        return plan.tile_scales(scales, self.work_budget(width * height))

    def stylize(
        self,
        content: Picture,
        styles: Sequence[Picture],
        callback: Callable[[Iterate], None] | None = None,
        control: Control | None = None,
        scales: list[Scale] | None = None,
        start: Picture | None = None,
    ) -> Result:
        """The stylised picture at ``content``'s full size, alpha untouched.

        ``scales`` is the plan (from :meth:`plan`) when the caller already made it;
        ``start`` a picture to start from instead of ``settings.init`` (an earlier
        result of the same photo: a quick look finished at the full working size).
        """
        s = self.settings
        if not styles:
            raise bad_input("at least one style image is needed")
        if s.style_blend is not None and len(s.style_blend) != len(styles):
            raise bad_input(
                f"{len(s.style_blend)} blend weights given for {len(styles)} style images"
            )
        control = control or Control()
        torch.manual_seed(s.seed)
        width, height = content.size
        scales = scales or self.plan(width, height)
        loop = Loop(s, self.network.features, scales, callback, control)
        try:
            image = self._optimise_scales(loop, content, styles, start)
            control.check()
            rgb = as_the_layer_will_be(to_array(image), content.rgb, s.preserve_colors,
                                       content.gray)
            del image
        except (RuntimeError, MemoryError) as exc:
            if not devices.is_out_of_memory(exc):
                raise
            raise out_of_memory(loop.at or scales[-1], self.device.type) from None
        picture = replace(content, rgb=np.ascontiguousarray(rgb, dtype=np.float32))
        return Result(picture, loop.steps, loop.stopped)

    def _optimise_scales(self, loop: Loop, content: Picture, styles: Sequence[Picture],
                         start_picture: Picture | None = None) -> torch.Tensor:
        """Every working scale in turn, the enlargement to full size, and the
        refinement there when planned; returns the image at full size."""
        s, control = self.settings, loop.control
        width, height = content.size
        budget = self.work_budget(width * height)
        full = photo_tensor(content.rgb, self.device)
        style_images = [to_tensor(style.rgb, self.device) for style in styles]
        digests = [style_digest(style.rgb) for style in styles] if self.cache else []
        image = kept = None
        for scale in loop.scales:
            control.check()
            if loop.stopped is Stop.FINISHED:
                break
            loop.at = scale
            if scale.refining:
                kept = enlarging.enlarge(image, full, s.enlarge)
                target, start = full, kept  # ``start`` is copied below: ``kept`` stays
            else:
                target = resize(full, scale.width, scale.height)
                if image is not None:
                    start = resize(image, scale.width, scale.height)
                elif start_picture is not None:
                    start = resize(to_tensor(start_picture.rgb, self.device), scale.width,
                                   scale.height)
                else:
                    start = start_image(s, target)
            grams = self.targets.style_grams(style_images, max(scale.width, scale.height),
                                             budget, control, digests, native=scale.refining)
            image = start.detach().clamp(0, 1)
            for tile in scale.regions():
                x0, y0, x1, y1 = tile
                photo = target[..., y0:y1, x0:x1]
                objective = self.targets.objective(photo, grams)
                region = loop.optimise(image[..., y0:y1, x0:x1].clone(), objective, scale,
                                       tile, photo)
                image = blend_in(image, region, tile, scale.tiles)
                if loop.stopped is Stop.FINISHED:
                    if scale.refining and tile != scale.regions()[-1]:
                        return kept  # Keep: the last finished state, not half the tiles
                    break
        return enlarging.enlarge(image, full, s.enlarge)


def out_of_memory(where: Scale, device_type: str) -> EngineError:
    """What to try when the run at ``where`` did not fit the device's memory."""
    if where.refining:
        return EngineError(
            "out_of_memory",
            f"out of memory refining at full size ({where.width}×{where.height}) on "
            f"{device_type}; try --detail working or a smaller --memory-budget")
    smaller = max(MIN_WORK_SIDE, int(max(where.width, where.height) / OOM_SHRINK))
    return EngineError(
        "out_of_memory",
        f"out of memory at {where.width}×{where.height} on {device_type}; "
        f"try --max-size {smaller} or a smaller --memory-budget",
    )
