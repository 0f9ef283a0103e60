"""Gatys et al. style transfer: the coarse-to-fine schedule and the optimisation loop."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import weights
from .errors import EngineError, bad_input, cancelled
from .images import Picture, keep_colors, load_picture, luminance
from .losses import Objective, blended_grams
from .vgg import LAYER_NAMES, Tap, VGGFeatures, stride

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
MIN_SCALE_SIDE = 128  # coarsest scale's longest side
MIN_WORK_SIDE = 32  # VGG needs a few pixels left after four poolings
MIN_TILE_SIDE = 128
BYTES_PER_PIXEL = 2000.0  # peak memory per working pixel, L-BFGS, fp32 (~1630 at 1 MP)
FIXED_BYTES = 1.0e9  # torch and the network, besides the optimisation ...
PHOTO_BYTES_PER_PIXEL = 64.0  # ... and ~5 full-size fp32 RGB copies of the photo
NO_GRAD_BYTES_PER_PIXEL = 800.0  # a forward pass without gradients, style layers kept
STRIP_MARGIN = 64  # rows of context around a strip; a multiple of VGG19's stride 16
LBFGS_HISTORY = 50  # curvature pairs L-BFGS keeps, at most ...
LBFGS_HISTORY_BYTES = 320e6  # ... and at most this much memory: 12 pairs at 1024²


def style_weight_for(strength: float) -> float:
    """Maps ``--style-strength`` s in [0, 1] onto beta (alpha = 1): ``beta = 10^(4s - 1)``.

    s = 0 gives beta = 0.1 (the photo barely changes), 0.5 gives 10, 1 gives 1000.
    """
    if not 0.0 <= strength <= 1.0:
        raise bad_input(f"style strength must be between 0 and 1, got {strength}")
    return 10.0 ** (4.0 * strength - 1.0)


@dataclass
class Settings:
    """Every knob of a run; the CLI and the protocol both fill this in."""

    iterations: int = 200
    max_size: int | None = None  # longest side of the working size; None: 1024 GPU, 512 CPU
    style_strength: float = 0.5
    content_weight: float = 1.0
    style_weight: float | None = None  # overrides style_strength when set
    tv_weight: float = 0.0
    content_layer: str = CONTENT_LAYER
    style_layers: tuple[str, ...] = STYLE_LAYERS
    style_blend: tuple[float, ...] | None = None
    style_scale: float = 1.0
    preserve_colors: bool = False
    init: str = "content"  # content, noise, or a path to an image
    optimizer: str = "lbfgs"  # lbfgs or adam
    learning_rate: float = 0.02  # Adam's step, in [0, 1] pixel units
    pooling: str = "max"
    seed: int = 0
    device: str = "auto"
    weights: str | None = None  # original, torchvision, random, a path; None: NST_WEIGHTS
    memory_budget: float | None = None  # GB the engine may use; None: from the device

    @classmethod
    def from_dict(cls, values: dict) -> Settings:
        """Builds settings from plain values (JSON or argparse); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise bad_input(f"unknown setting(s): {', '.join(unknown)}")
        values = dict(values)
        for key, value in values.items():
            if value is None and key in _OPTIONAL:
                continue
            expected = _TYPES[key]
            if expected is tuple:
                if not isinstance(value, (list, tuple)):
                    raise bad_input(f"setting {key} must be a list")
                values[key] = tuple(value)
            elif expected is float and isinstance(value, int) and not isinstance(value, bool):
                values[key] = float(value)
            elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise bad_input(f"setting {key} must be of type {expected.__name__}, got {value!r}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.iterations < 1:
            raise bad_input("iterations must be at least 1")
        if self.max_size is not None and self.max_size < MIN_WORK_SIDE:
            raise bad_input(f"max size must be at least {MIN_WORK_SIDE} pixels")
        for name in (self.content_layer, *self.style_layers):
            if name not in LAYER_NAMES:
                raise bad_input(f"unknown VGG19 layer {name!r} (use e.g. relu4_2)")
        if self.optimizer not in ("lbfgs", "adam"):
            raise bad_input("optimizer must be lbfgs or adam")
        if self.pooling not in ("max", "avg"):
            raise bad_input("pooling must be max or avg")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise bad_input("memory budget must be positive (in GB)")
        if self.style_scale <= 0:
            raise bad_input("style scale must be positive")
        if min(self.content_weight, self.tv_weight, self.style_weight or 0.0) < 0:
            raise bad_input("loss weights cannot be negative")
        style_weight_for(self.style_strength)

    @property
    def beta(self) -> float:
        if self.style_weight is not None:
            return self.style_weight
        return style_weight_for(self.style_strength)


_TYPES = {
    "iterations": int, "max_size": int, "seed": int, "preserve_colors": bool,
    "style_strength": float, "content_weight": float, "style_weight": float,
    "tv_weight": float, "style_scale": float, "learning_rate": float,
    "content_layer": str, "init": str, "optimizer": str, "pooling": str, "device": str,
    "weights": str, "style_layers": tuple, "style_blend": tuple, "memory_budget": float,
}
_OPTIONAL = {"max_size", "style_weight", "style_blend", "weights", "memory_budget"}


Tile = tuple[int, int, int, int]  # x0, y0, x1, y1 at the scale's size


@dataclass
class Scale:
    width: int
    height: int
    steps: int
    tiles: list[Tile] = field(default_factory=list)  # empty: the whole image at once

    def regions(self) -> list[Tile]:
        return self.tiles or [(0, 0, self.width, self.height)]

    @property
    def ticks(self) -> int:
        """Progress steps: every tile runs all of the scale's steps."""
        return self.steps * len(self.regions())


@dataclass
class Progress:
    """Reported after every optimisation step."""

    scale: int  # 1-based
    scales: int
    width: int
    height: int
    step: int  # 1-based, counted over all scales
    total: int
    loss: float
    losses: dict[str, float] = field(default_factory=dict)  # weighted parts: content, style, tv
    elapsed: float = 0.0
    eta: float = 0.0
    image: torch.Tensor | None = None  # the current image at this scale (for previews)


def plan_scales(width: int, height: int, max_size: int, iterations: int) -> list[Scale]:
    """Coarse to fine: the longest side doubles up to ``min(max_size, input)``.

    Each scale gets about half the steps of the next finer one (every scale at
    least one), so the top scale gets about half of them all. A step costs a
    quarter of one at the next finer scale, so the coarse scales, which lay out the
    style's large structures, take about a seventh of the top scale's time; steps
    beyond a few dozen there barely change where the top scale ends up, and the
    top scale needs its steps to redraw the fine texture that enlarging blurs.
    """
    longest = max(width, height)
    top = min(max_size, longest)
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
    """Overlap between neighbouring tiles of ``side`` pixels, and the width over which
    a tile's result is blended in."""
    return max(32, side // 6)


def blend_ramp(tile: Tile, overlap: int, device: torch.device) -> torch.Tensor:
    """Weight of a tile's result: rising over the overlap with tiles done before it
    (left and above), 1 elsewhere; later tiles blend over its right and bottom edges."""
    x0, y0, x1, y1 = tile

    def ramp(start: int, length: int) -> torch.Tensor:
        weight = torch.ones(length, device=device)
        if start > 0:
            rise = min(overlap, length)
            weight[:rise] = torch.linspace(0, 1, rise + 2, device=device)[1:-1]
        return weight

    return ramp(y0, y1 - y0).view(1, 1, -1, 1) * ramp(x0, x1 - x0).view(1, 1, 1, -1)


def pick_device(name: str) -> torch.device:
    """``auto`` prefers CUDA, then Apple's MPS, then the CPU."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise bad_input("CUDA was asked for but this torch sees no CUDA GPU; use --device cpu")
    if name == "mps" and not mps_ok:
        raise bad_input("MPS was asked for but is not available; use --device cpu")
    if name not in ("cuda", "mps", "cpu"):
        raise bad_input(f"unknown device {name!r}; use auto, cuda, mps or cpu")
    return torch.device(name)


def to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    return tensor.contiguous().to(device)


def to_array(image: torch.Tensor) -> np.ndarray:
    return image[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def resize(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bicubic, antialiased when shrinking; no blockiness when enlarging."""
    if image.shape[-2:] == (height, width):
        return image
    out = F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False,
                        antialias=True)
    return out.clamp(0, 1)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


class StyleTransfer:
    """Loads VGG19 once; :meth:`stylize` runs the coarse-to-fine optimisation."""

    def __init__(self, settings: Settings) -> None:
        settings.validate()
        self.settings = settings
        self.device = pick_device(settings.device)
        if self.device.type == "cpu":
            torch.set_num_threads(os.cpu_count() or 1)
        self.autocast = self.device.type == "cuda"  # bf16 VGG pass; Grams and losses fp32
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        state, self.family = weights.load(settings.weights)
        layers = (settings.content_layer, *settings.style_layers)
        self.vgg = VGGFeatures(state, self.family, layers, settings.pooling).to(self.device)

    @property
    def max_size(self) -> int:
        return self.settings.max_size or (1024 if self.device.type == "cuda" else 512)

    def features(self, image: torch.Tensor, tap: Tap | None = None) -> dict[str, torch.Tensor]:
        """VGG activations (see ``VGGFeatures.forward``); under bf16 autocast on CUDA
        (Grams and losses stay fp32)."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return self.vgg(image, tap)

    def memory_budget(self) -> float:
        """Bytes the engine may use in all: ``memory_budget`` GB, else 80% of free GPU
        memory, or a third of the machine's RAM (GIMP holds the same photo, with undo,
        and the rest of the desktop needs room too)."""
        if self.settings.memory_budget is not None:
            return self.settings.memory_budget * 1e9
        if self.device.type == "cuda":
            return 0.8 * torch.cuda.mem_get_info(self.device)[0]
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            ram = 8e9
        return ram / 3

    def work_budget(self, pixels: int) -> float:
        """Bytes left for one optimisation, or one pass for Gram matrices, once torch,
        the network and the full-size copies of a photo of ``pixels`` are held."""
        return self.memory_budget() - FIXED_BYTES - PHOTO_BYTES_PER_PIXEL * pixels

    def plan(self, width: int, height: int) -> list[Scale]:
        """The scales, each split into overlapping tiles when it would not fit the budget."""
        scales = plan_scales(width, height, self.max_size, self.settings.iterations)
        budget = self.work_budget(width * height)
        for scale in scales:
            if scale.width * scale.height * BYTES_PER_PIXEL <= budget:
                continue
            side = int((max(budget, 0) / BYTES_PER_PIXEL) ** 0.5)
            if side < MIN_TILE_SIDE:
                raise EngineError(
                    "out_of_memory",
                    f"the memory budget ({budget / 1e9:.1f} GB free for the work) is too "
                    f"small even for {MIN_TILE_SIDE}-pixel tiles; raise --memory-budget",
                )
            scale.tiles = tile_grid(scale.width, scale.height, side, tile_overlap(side))
        return scales

    def style_grams(self, styles: Sequence[torch.Tensor], side: float, budget: float) -> dict:
        """Blended Gram targets of the style images resized to ``style_scale × side``,
        each computed within ``budget`` bytes (see :meth:`grams`)."""
        s = self.settings
        grams = []
        for style in styles:
            factor = side * s.style_scale / max(style.shape[-2:])
            size = (max(MIN_WORK_SIDE, round(style.shape[-1] * factor)),
                    max(MIN_WORK_SIDE, round(style.shape[-2] * factor)))
            grams.append(self.grams(resize(style, *size), budget))
        return blended_grams(grams, s.style_blend or (1.0,) * len(styles))

    def grams(self, image: torch.Tensor, budget: float) -> dict:
        """Gram matrices of ``image`` at the style layers.

        A large image (a style image enlarged for a full-resolution scale) is run
        through the network in horizontal strips that fit ``budget`` bytes, each
        with ``STRIP_MARGIN`` rows of context above and below whose features are
        dropped; the Gram sums over the strips' own rows. Exact up to what lies
        beyond the margin in the deepest layers' receptive fields.
        """
        layers = self.settings.style_layers
        height, width = image.shape[-2:]
        rows = int(budget / (NO_GRAD_BYTES_PER_PIXEL * width)) - 2 * STRIP_MARGIN
        rows = max(STRIP_MARGIN, rows // STRIP_MARGIN * STRIP_MARGIN)
        sums = {name: 0.0 for name in layers}
        positions = dict.fromkeys(layers, 0)
        with torch.no_grad():
            for top in range(0, height, rows):
                bottom = min(height, top + rows)
                above = min(top, STRIP_MARGIN)
                strip = image[..., top - above:min(height, bottom + STRIP_MARGIN), :]
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

    def _initial(self, content: torch.Tensor) -> torch.Tensor:
        init = self.settings.init
        if init == "content":
            return content.clone()
        if init == "noise":
            generator = torch.Generator().manual_seed(self.settings.seed)
            noise = torch.rand(content.shape, generator=generator)
            return noise.to(self.device)
        other = load_picture(Path(init), "init image")
        return resize(to_tensor(other.rgb, self.device), content.shape[-1], content.shape[-2])

    def stylize(
        self,
        content: Picture,
        styles: Sequence[Picture],
        callback: Callable[[Progress], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Picture:
        """Returns the stylised picture at ``content``'s full size, alpha untouched."""
        s = self.settings
        if not styles:
            raise bad_input("at least one style image is needed")
        if s.style_blend is not None and len(s.style_blend) != len(styles):
            raise bad_input(
                f"{len(s.style_blend)} blend weights given for {len(styles)} style images"
            )
        if s.style_blend is not None and (min(s.style_blend) < 0 or sum(s.style_blend) <= 0):
            raise bad_input("style blend weights must be non-negative and not all zero")
        torch.manual_seed(s.seed)
        width, height = content.size
        scales = self.plan(width, height)
        budget = self.work_budget(width * height)
        full = to_tensor(content.rgb, self.device)
        style_images = [to_tensor(style.rgb, self.device) for style in styles]
        clock = _Clock(scales)
        image = None
        for index, scale in enumerate(scales, start=1):
            try:
                target = resize(full, scale.width, scale.height)
                start = self._initial(target) if image is None else resize(
                    image, scale.width, scale.height)
                grams = self.style_grams(style_images, max(scale.width, scale.height), budget)
                image = start.detach().clamp(0, 1)
                for tile in scale.regions():
                    image = self._optimise_region(
                        image, target, grams, tile, scale, index, len(scales), clock,
                        callback, cancel,
                    )
            except (RuntimeError, MemoryError) as exc:
                if not _is_oom(exc):
                    raise
                smaller = max(MIN_WORK_SIDE, int(max(scale.width, scale.height) / 1.5))
                raise EngineError(
                    "out_of_memory",
                    f"out of memory at {scale.width}×{scale.height} on {self.device.type}; "
                    f"try --max-size {smaller} or a smaller --memory-budget",
                ) from None
        del full, style_images
        result = to_tensor(to_array(image), torch.device("cpu"))
        rgb = to_array(resize(result, width, height))
        if s.preserve_colors:
            rgb = keep_colors(rgb, content.rgb)
        if content.gray:
            rgb = np.repeat(luminance(rgb)[..., None], 3, axis=2)
        return replace(content, rgb=np.ascontiguousarray(rgb, dtype=np.float32))

    def _optimise_region(self, image, content, grams, tile, scale, index, scales, clock,
                         callback, cancel) -> torch.Tensor:
        """Optimises one tile (or the whole image) and blends it back into ``image``."""
        x0, y0, x1, y1 = tile
        objective = self.objective(content[..., y0:y1, x0:x1], grams)
        region = image[..., y0:y1, x0:x1].clone().requires_grad_(True)
        if self.settings.optimizer == "lbfgs":
            optimizer = torch.optim.LBFGS(
                [region], lr=1.0, max_iter=1, history_size=lbfgs_history(region.numel()),
                line_search_fn="strong_wolfe",
            )
        else:
            optimizer = torch.optim.Adam([region], lr=self.settings.learning_rate)
        latest = {}

        def closure() -> torch.Tensor:
            # L-BFGS (one iteration per step) re-evaluates at the start of each step
            # the point its line search just accepted: answer from the last
            # evaluation when it was that point, which halves the cost of a step.
            if "image" in latest and torch.equal(latest["image"], region):
                region.grad = latest["grad"]
                return latest["tensor"]
            optimizer.zero_grad(set_to_none=True)
            loss, parts = objective(region, self.features)
            loss.backward()
            latest.update(loss=loss.item(), parts=parts, tensor=loss.detach(),
                          image=region.detach().clone(), grad=region.grad)
            return loss

        previous = math.inf
        for _ in range(scale.steps):
            if cancel is not None and cancel.is_set():
                raise cancelled()
            optimizer.step(closure)
            if latest["loss"] >= previous * (1 - 1e-6):
                # When its line search fails torch's L-BFGS takes a zero step and then
                # repeats the same direction for good: restart its memory.
                optimizer.state.clear()
            previous = latest["loss"]
            if not math.isfinite(latest["loss"]):
                raise EngineError(
                    "internal",
                    "the optimisation diverged (the loss became NaN or infinite); "
                    "try a lower style strength or --optimizer adam",
                )
            if callback is not None:
                progress = clock.tick(scale, (x1 - x0) * (y1 - y0), index, scales,
                                      latest["loss"], latest["parts"])
                progress.image = region.detach()
                callback(progress)
        with torch.no_grad():
            region.clamp_(0, 1)  # the range penalty leaves at most tiny excursions
        if not scale.tiles:
            return region.detach()
        weight = blend_ramp(tile, tile_overlap(x1 - x0), self.device)
        with torch.no_grad():
            old = image[..., y0:y1, x0:x1]
            image[..., y0:y1, x0:x1] = weight * region + (1 - weight) * old
        return image


class _Clock:
    """Counts steps and estimates time left, weighting steps by their pixel count."""

    def __init__(self, scales: Sequence[Scale]) -> None:
        self.total = sum(s.ticks for s in scales)
        self.work_total = sum(
            s.steps * sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in s.regions())
            for s in scales)
        self.work_done = 0
        self.step = 0
        self.started = time.monotonic()

    def tick(self, scale: Scale, pixels: int, index: int, scales: int, loss: float,
             parts: dict) -> Progress:
        self.step += 1
        self.work_done += pixels
        elapsed = time.monotonic() - self.started
        rate = elapsed / self.work_done
        return Progress(
            scale=index, scales=scales, width=scale.width, height=scale.height,
            step=self.step, total=self.total, loss=loss, losses=parts,
            elapsed=elapsed, eta=rate * (self.work_total - self.work_done),
        )
