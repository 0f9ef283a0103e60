"""Gatys et al. style transfer: the network, the style targets and the optimisation loop.

:meth:`StyleTransfer.stylize` walks the planned scales coarse to fine; a
:class:`_Run` holds one run's state, and every step is reported as an
:class:`Iterate`; a :class:`~.control.Control` lets another thread stop it.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from nst_contract import plan
from nst_contract.errors import EngineError, bad_input
from nst_contract.knobs import MIN_WORK_SIDE, Settings
from nst_contract.layers import stride
from nst_contract.plan import Scale, Tile

from . import blending, devices, enlarging, weights
from .control import Control
from .enlarging import resize
from .images import Picture, as_tensor, keep_colors, load_picture, luminance
from .losses import Objective, blended_grams
from .vgg import Tap, VGGFeatures

CONVERGE_MIN_STEPS = 30  # top-scale steps before the convergence rule may stop a run ...
CONVERGE_WINDOW = 10  # ... when the objective fell by less than CONVERGE_TOLERANCE
CONVERGE_TOLERANCE = 0.0125  # ... (relative) over the last CONVERGE_WINDOW steps


@dataclass
class Iterate:
    """Reported after every optimisation step."""

    scale: int  # 1-based
    scales: int
    width: int
    height: int
    step: int  # 1-based, counted over all scales
    total: int
    loss: float
    losses: dict[str, float] = field(default_factory=dict)  # weighted parts
    elapsed: float = 0.0
    eta: float = 0.0
    scale_done: bool = False  # the last step of this scale (or of the run)
    detail: bool = False  # a step of the refinement at full size
    tile: int = 1  # 1-based, of ``tiles`` regions at this scale
    tiles: int = 1
    pixels: int = 0  # of the region (tile or whole image) this step worked on
    image: torch.Tensor | None = None  # the current image at this scale (for previews)


@dataclass
class Result:
    picture: Picture
    steps: int  # optimisation steps done
    stopped: str  # "completed", "converged" or "finished" (Keep this result)


def to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    return tensor.contiguous().to(device)


def photo_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """The full-size photo the scales are resized from. On the CPU a view of the layer
    as received (no 300 MB copy of a 24-megapixel layer before the first step; what
    is resized or run through the network from it is the same to the bit), on a GPU
    a copy there."""
    view = as_tensor(rgb).permute(2, 0, 1)[None]
    return view if device.type == "cpu" else view.contiguous().to(device)


def to_array(image: torch.Tensor) -> np.ndarray:
    """``H×W×3`` float32 in [0, 1], contiguous (made so by torch: several threads)."""
    return image[0].detach().float().clamp(0, 1).permute(1, 2, 0).contiguous().cpu().numpy()


class Warm:
    """What a long-lived engine (the service) keeps between runs: the loaded networks
    and the style targets of recently used style images."""

    GRAMS_KEPT = 32  # style images × scales

    def __init__(self) -> None:
        self.networks: dict[tuple, tuple[VGGFeatures, str]] = {}
        self.grams: OrderedDict[tuple, dict] = OrderedDict()

    def network(self, key: tuple, load: Callable[[], tuple[VGGFeatures, str]]):
        if key not in self.networks:
            self.networks.clear()  # one network at a time: memory over reuse
            self.networks[key] = load()
        return self.networks[key]

    def release_memory(self) -> None:
        """Gives the device's cached memory back between runs (the network stays)."""
        for network, _ in self.networks.values():
            devices.release_memory(next(network.parameters()).device)

    def gram(self, key: tuple, compute: Callable[[], dict]) -> dict:
        if key in self.grams:
            self.grams.move_to_end(key)
            return self.grams[key]
        value = self.grams[key] = compute()
        while len(self.grams) > self.GRAMS_KEPT:
            self.grams.popitem(last=False)
        return value


class StyleTransfer:
    """Loads VGG19 (or takes it from ``warm``); :meth:`stylize` runs the coarse-to-fine
    optimisation."""

    def __init__(self, settings: Settings, warm: Warm | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.warm = warm
        self.device = devices.pick(settings.device)
        # The VGG pass in bf16 where it is faster (devices.precision); the style
        # targets, G - A, the losses and the pixels L-BFGS moves stay fp32 (a
        # departure from the paper's fp32; docs/losses.md).
        self.precision = devices.precision(self.device, settings.precision)
        self.autocast = self.precision.name == "bf16"
        # oneDNN's bf16 kernels on the processor are faster on channels-last tensors
        # (the network and the image it is given); fp32 stays as it always was.
        self.memory_format = torch.channels_last \
            if self.autocast and self.device.type == "cpu" else torch.contiguous_format
        layers = (settings.content_layer, *settings.style_layers)
        spec = settings.weights or os.environ.get("NST_WEIGHTS") or "original"
        self.network_key = (spec, layers, settings.pooling, str(self.device),
                            self.precision.name)

        def load() -> tuple[VGGFeatures, str]:
            state, family = weights.load(spec)
            network = VGGFeatures(state, family, layers, settings.pooling)
            return network.to(self.device, memory_format=self.memory_format), family

        self.loaded_network = warm is None or self.network_key not in warm.networks
        self.vgg, self.family = warm.network(self.network_key, load) if warm else load()

    @property
    def max_size(self) -> int:
        if self.settings.auto_size:
            return plan.auto_max_size(self.device.type)
        return self.settings.max_size

    def features(self, image: torch.Tensor, tap: Tap | None = None) -> dict[str, torch.Tensor]:
        """VGG activations (see ``VGGFeatures.forward``), under bf16 autocast and
        channels-last on the processor when the precision is bf16."""
        if self.memory_format is torch.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.vgg(image, tap)

    def work_budget(self, pixels: int) -> float:
        budget = devices.memory_budget(self.device, self.settings.memory_budget)
        return plan.work_budget(budget, devices.fixed_bytes(self.device), pixels)

    def plan(self, width: int, height: int) -> list[Scale]:
        """The scales, each split into overlapping tiles when it would not fit the budget."""
        s = self.settings
        scales = plan.plan_scales(width, height, self.max_size, s.iterations)
        if s.refines(self.device.type):
            scales = plan.plan_detail(scales, width, height,
                                          s.refinement_steps(self.device.type))
        return plan.tile_scales(scales, self.work_budget(width * height))

    def style_grams(self, styles: Sequence[torch.Tensor], side: float, budget: float,
                    control: Control | None = None, keys: Sequence[str] = (),
                    native: bool = False) -> dict:
        """Blended Gram targets of the style images resized to ``style_scale × side``,
        each computed within ``budget`` bytes (see :meth:`grams`), or taken from the
        warm cache by the style's ``keys`` (content hashes).

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

            if self.warm is not None and index < len(keys):
                grams.append(self.warm.gram((keys[index], size, self.network_key), compute))
            else:
                grams.append(compute())
        return blended_grams(grams, s.style_blend or (1.0,) * len(styles))

    def grams(self, image: torch.Tensor, budget: float, control: Control | None = None) -> dict:
        """Gram matrices of ``image`` at the style layers.

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
        positions = dict.fromkeys(layers, 0)
        with torch.no_grad():
            for top in range(0, height, rows):
                if control is not None:
                    control.check()
                bottom = min(height, top + rows)
                above = min(top, margin)
                strip = image[..., top - above:min(height, bottom + margin), :]
                features = self.features(strip)
                for name in layers:
                    step = stride(name)
                    core = features[name][..., above // step:(above + bottom - top) // step, :]
                    flat = core.reshape(core.shape[1], -1).float()
                    sums[name] = sums[name] + flat @ flat.T
                    positions[name] += flat.shape[1]
                del features  # before the next strip's pass
        return {name: sums[name] / positions[name] for name in layers}

    def objective(self, content: torch.Tensor, grams: dict) -> Objective:
        """The loss for images of ``content``'s size against the given style Grams."""
        s = self.settings
        with torch.no_grad():
            target = self.features(content)[s.content_layer]
        return Objective({s.content_layer: target}, grams, s.content_weight, s.beta,
                         s.tv_weight).to(self.device)

    def initial(self, content: torch.Tensor) -> torch.Tensor:
        init = self.settings.init
        if init == "content":
            return content.clone()
        if init == "noise":
            generator = torch.Generator().manual_seed(self.settings.seed)
            return torch.rand(content.shape, generator=generator).to(self.device)
        other = load_picture(Path(init), "init image")
        return resize(to_tensor(other.rgb, self.device), content.shape[-1], content.shape[-2])

    def stylize(
        self,
        content: Picture,
        styles: Sequence[Picture],
        callback: Callable[[Iterate], None] | None = None,
        control: Control | None = None,
        scales: list[Scale] | None = None,
    ) -> Result:
        """The stylised picture at ``content``'s full size, alpha untouched.

        ``scales`` is the plan (from :meth:`plan`) when the caller already made it.
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
        run = _Run(self, scales, callback, control)
        try:
            image = run.optimise(content, styles)
            control.check()
            rgb = to_array(image)
            del image
            if s.preserve_colors:
                rgb = keep_colors(rgb, content.rgb)
            if content.gray:
                rgb = np.repeat(luminance(rgb)[..., None], 3, axis=2)
        except (RuntimeError, MemoryError) as exc:
            if not devices.is_out_of_memory(exc):
                raise
            raise run.out_of_memory() from None
        picture = replace(content, rgb=np.ascontiguousarray(rgb, dtype=np.float32))
        return Result(picture, run.steps, run.stopped)


class _Run:
    """One run's state: the plan, the clock, where it is, and how it ended."""

    def __init__(self, engine: StyleTransfer, scales: list[Scale],
                 callback: Callable[[Iterate], None] | None, control: Control) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.scales = scales
        self.callback = callback
        self.control = control
        self.clock = _Clock(scales)
        self.scale: Scale | None = None
        self.steps = 0
        self.stopped = "completed"

    def out_of_memory(self) -> EngineError:
        where = self.scale or self.scales[-1]
        if where.detail:
            return EngineError(
                "out_of_memory",
                f"out of memory refining at full size ({where.width}×{where.height}) on "
                f"{self.engine.device.type}; try --detail working or a smaller "
                "--memory-budget")
        side = max(where.width, where.height)
        smaller = max(MIN_WORK_SIDE, int(side / 1.5))
        return EngineError(
            "out_of_memory",
            f"out of memory at {where.width}×{where.height} on {self.engine.device.type}; "
            f"try --max-size {smaller} or a smaller --memory-budget",
        )

    def optimise(self, content: Picture, styles: Sequence[Picture]) -> torch.Tensor:
        """Every working scale in turn, the enlargement to full size, and the
        refinement there when planned; returns the image at full size."""
        engine, device = self.engine, self.engine.device
        width, height = content.size
        budget = engine.work_budget(width * height)
        full = photo_tensor(content.rgb, device)
        style_images = [to_tensor(style.rgb, device) for style in styles]
        keys = [hashlib.sha1(style.rgb.tobytes()).hexdigest() for style in styles] \
            if engine.warm is not None else []
        working = [scale for scale in self.scales if not scale.detail]
        image = kept = None
        for index, scale in enumerate(self.scales, start=1):
            self.control.check()
            if self.stopped == "finished":
                break
            self.scale = scale
            if scale.detail:
                kept = enlarging.enlarge(image, full, self.settings.enlarge)
                target, start = full, kept  # ``start`` is copied below: ``kept`` stays
            else:
                target = resize(full, scale.width, scale.height)
                start = engine.initial(target) if image is None else resize(
                    image, scale.width, scale.height)
            grams = engine.style_grams(style_images, max(scale.width, scale.height), budget,
                                       self.control, keys, native=scale.detail)
            image = start.detach().clamp(0, 1)
            top = scale is working[-1]
            for tile in scale.regions():
                image = self.optimise_region(image, target, grams, tile, index, top)
                if self.stopped == "finished":
                    if scale.detail and tile != scale.regions()[-1]:
                        return kept  # Keep: the last finished state, not half the tiles
                    break
        return enlarging.enlarge(image, full, self.settings.enlarge)

    def optimise_region(self, image: torch.Tensor, content: torch.Tensor, grams: dict,
                        tile: Tile, index: int, top: bool) -> torch.Tensor:
        """Optimises one tile (or the whole image) and blends it back into ``image``."""
        engine, scale = self.engine, self.scale
        lbfgs = self.settings.optimizer == "lbfgs"
        x0, y0, x1, y1 = tile
        objective = engine.objective(content[..., y0:y1, x0:x1], grams)
        region = image[..., y0:y1, x0:x1].clone().requires_grad_(True)
        if lbfgs:
            optimizer = torch.optim.LBFGS(
                [region], lr=1.0, max_iter=1,
                history_size=plan.lbfgs_history(region.numel()),
                line_search_fn="strong_wolfe",
            )
        else:
            optimizer = torch.optim.Adam([region], lr=self.settings.learning_rate)
        last = _Evaluation()

        def closure() -> torch.Tensor:
            # L-BFGS (one iteration per step) re-evaluates at the start of each step
            # the point its line search just accepted: answer from the last
            # evaluation when it was that point, which halves the cost of a step.
            if last.image is not None and torch.equal(last.image, region):
                region.grad = last.grad
                return last.tensor
            optimizer.zero_grad(set_to_none=True)
            loss, parts = objective(region, engine.features)
            loss.backward()
            last.update(loss, parts, region)
            return loss

        last_region = tile == scale.regions()[-1]
        history: list[float] = []
        for step in range(1, scale.steps + 1):
            self.control.check()
            if self.control.finish.is_set() and self.steps:
                self.stopped = "finished"
                break
            optimizer.step(closure)
            self.steps += 1
            if not math.isfinite(last.loss):
                raise EngineError(
                    "internal",
                    "the optimisation diverged (the loss became NaN or infinite); "
                    "try a lower style strength or --optimizer adam",
                )
            if lbfgs and history and last.loss >= history[-1] * (1 - 1e-6):
                # When its line search fails torch's L-BFGS takes a zero step and then
                # repeats the same direction for good: restart its memory.
                optimizer.state.clear()
            history.append(last.loss)
            converged = top and self.settings.converge and _converged(history)
            if self.control.finish.is_set():
                self.stopped = "finished"
            elif converged:  # this region; the next tile (or the refinement) goes on
                self.stopped = "converged"
            finishing = self.stopped == "finished"
            done = step == scale.steps or finishing or converged
            if self.callback is not None:
                iterate = self.clock.tick(scale, index, tile, last.loss, last.parts)
                iterate.scale_done = done and (last_region or finishing)
                iterate.image = region.detach()
                self.callback(iterate)
            if done:
                break
        with torch.no_grad():
            region.clamp_(0, 1)  # the range penalty leaves at most tiny excursions
        if not scale.tiles:
            return region.detach()
        weight = blending.blend_ramp(tile, scale.tiles, engine.device)
        with torch.no_grad():
            old = image[..., y0:y1, x0:x1]
            image[..., y0:y1, x0:x1] = weight * region + (1 - weight) * old
        return image


def _converged(history: Sequence[float]) -> bool:
    """The top scale's objective fell by less than ``CONVERGE_TOLERANCE`` (relative) over
    the last ``CONVERGE_WINDOW`` steps, after at least ``CONVERGE_MIN_STEPS`` there."""
    if len(history) < max(CONVERGE_MIN_STEPS, CONVERGE_WINDOW + 1):
        return False
    before, now = history[-1 - CONVERGE_WINDOW], history[-1]
    return before - now < CONVERGE_TOLERANCE * now


@dataclass
class _Evaluation:
    """The last objective evaluation, to answer L-BFGS's repeated one."""

    loss: float = math.nan
    parts: dict = field(default_factory=dict)
    tensor: torch.Tensor | None = None
    image: torch.Tensor | None = None
    grad: torch.Tensor | None = None

    def update(self, loss: torch.Tensor, parts: dict, region: torch.Tensor) -> None:
        self.loss, self.parts, self.tensor = loss.item(), parts, loss.detach()
        self.image, self.grad = region.detach().clone(), region.grad


class _Clock:
    """Counts steps and estimates time left, weighting steps by their pixel count."""

    def __init__(self, scales: Sequence[Scale]) -> None:
        self.scales = len(scales)
        self.total = sum(s.ticks for s in scales)
        self.work_total = sum(s.work for s in scales)
        self.work_done = 0
        self.step = 0
        self.started = time.monotonic()

    def tick(self, scale: Scale, index: int, tile: Tile, loss: float,
             parts: dict) -> Iterate:
        x0, y0, x1, y1 = tile
        pixels = (x1 - x0) * (y1 - y0)
        self.step += 1
        self.work_done += pixels
        elapsed = time.monotonic() - self.started
        rate = elapsed / self.work_done
        return Iterate(
            scale=index, scales=self.scales, width=scale.width, height=scale.height,
            step=self.step, total=self.total, loss=loss, losses=parts,
            elapsed=elapsed, eta=rate * (self.work_total - self.work_done),
            detail=scale.detail, tile=scale.regions().index(tile) + 1,
            tiles=len(scale.regions()), pixels=pixels,
        )
