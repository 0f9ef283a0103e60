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
from .vgg import LAYER_NAMES, VGGFeatures

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
MIN_SCALE_SIDE = 128  # coarsest scale's longest side
MIN_WORK_SIDE = 32  # VGG needs a few pixels left after four poolings


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

    iterations: int = 300
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
    "weights": str, "style_layers": tuple, "style_blend": tuple,
}
_OPTIONAL = {"max_size", "style_weight", "style_blend", "weights"}


@dataclass
class Scale:
    width: int
    height: int
    steps: int


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

    Each scale gets half the steps of the one below it, so most steps run where
    they are cheap; every scale gets at least one step.
    """
    longest = max(width, height)
    top = min(max_size, longest)
    sides = [top]
    while sides[-1] / 2 >= MIN_SCALE_SIDE:
        sides.append(sides[-1] / 2)
    sides = sides[: max(1, iterations)][::-1]
    shares = [2.0 ** (len(sides) - 1 - i) for i in range(len(sides))]
    steps = [max(1, math.floor(iterations * s / sum(shares))) for s in shares]
    steps[0] += iterations - sum(steps)
    scales = []
    for side, count in zip(sides, steps):
        factor = side / longest
        factor = max(factor, MIN_WORK_SIDE / min(width, height)) if factor < 1 else factor
        scales.append(
            Scale(max(1, round(width * factor)), max(1, round(height * factor)), count)
        )
    return scales


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
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        state, self.family = weights.load(settings.weights)
        layers = (settings.content_layer, *settings.style_layers)
        self.vgg = VGGFeatures(state, self.family, layers, settings.pooling).to(self.device)

    @property
    def max_size(self) -> int:
        return self.settings.max_size or (1024 if self.device.type == "cuda" else 512)

    def features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """VGG activations; under bf16 autocast on CUDA (losses stay fp32)."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.vgg(image)

    def objective(self, content: torch.Tensor, styles: Sequence[torch.Tensor]) -> Objective:
        """The loss for images of ``content``'s size (styles resized per ``style_scale``)."""
        s = self.settings
        height, width = content.shape[-2:]
        side = max(height, width) * s.style_scale
        style_feats = []
        with torch.no_grad():
            for style in styles:
                factor = side / max(style.shape[-2:])
                size = (max(MIN_WORK_SIDE, round(style.shape[-1] * factor)),
                        max(MIN_WORK_SIDE, round(style.shape[-2] * factor)))
                feats = self.features(resize(style, *size))
                style_feats.append({k: feats[k] for k in s.style_layers})
            content_feats = self.features(content)
        blend = s.style_blend or (1.0,) * len(styles)
        return Objective(
            {s.content_layer: content_feats[s.content_layer]},
            blended_grams(style_feats, blend),
            s.content_weight, s.beta, s.tv_weight,
        ).to(self.device)

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
        scales = plan_scales(width, height, self.max_size, s.iterations)
        full = to_tensor(content.rgb, self.device)
        style_images = [to_tensor(style.rgb, self.device) for style in styles]
        clock = _Clock(scales)
        image = None
        for index, scale in enumerate(scales, start=1):
            try:
                target = resize(full, scale.width, scale.height)
                start = self._initial(target) if image is None else resize(
                    image, scale.width, scale.height)
                image = self._optimise(
                    start, target, style_images, scale, index, len(scales), clock,
                    callback, cancel,
                )
            except RuntimeError as exc:
                if not _is_oom(exc):
                    raise
                smaller = max(MIN_WORK_SIDE, int(max(scale.width, scale.height) / 1.5))
                raise EngineError(
                    "out_of_memory",
                    f"out of memory at {scale.width}×{scale.height} on {self.device.type}; "
                    f"try a working size of --max-size {smaller} or less",
                ) from None
        del full, style_images
        result = to_tensor(to_array(image), torch.device("cpu"))
        rgb = to_array(resize(result, width, height))
        if s.preserve_colors:
            rgb = keep_colors(rgb, content.rgb)
        if content.gray:
            rgb = np.repeat(luminance(rgb)[..., None], 3, axis=2)
        return replace(content, rgb=np.ascontiguousarray(rgb, dtype=np.float32))

    def _optimise(self, image, content, styles, scale, index, scales, clock, callback, cancel):
        objective = self.objective(content, styles)
        image = image.detach().requires_grad_(True)
        if self.settings.optimizer == "lbfgs":
            optimizer = torch.optim.LBFGS(
                [image], lr=1.0, max_iter=1, history_size=50, line_search_fn="strong_wolfe"
            )
        else:
            optimizer = torch.optim.Adam([image], lr=self.settings.learning_rate)
        latest = {}

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss, parts = objective(image, self.features(image))
            loss.backward()
            latest.update(loss=loss.item(), parts=parts)
            return loss

        previous = math.inf
        for _ in range(scale.steps):
            if cancel is not None and cancel.is_set():
                raise cancelled()
            optimizer.step(closure)
            with torch.no_grad():  # keep pixels displayable
                image.clamp_(0, 1)
            if latest["loss"] >= previous * (1 - 1e-6):
                # Clamping can leave L-BFGS with curvature pairs that no longer give a
                # descent direction, and it then stalls for good: restart its memory.
                optimizer.state.clear()
            previous = latest["loss"]
            if not math.isfinite(latest["loss"]):
                raise EngineError(
                    "internal",
                    "the optimisation diverged (the loss became NaN or infinite); "
                    "try a lower style strength or --optimizer adam",
                )
            if callback is not None:
                progress = clock.tick(scale, index, scales, latest["loss"], latest["parts"])
                progress.image = image.detach()
                callback(progress)
        return image.detach().clamp(0, 1)


class _Clock:
    """Counts steps and estimates time left, weighting steps by their pixel count."""

    def __init__(self, scales: Sequence[Scale]) -> None:
        self.total = sum(s.steps for s in scales)
        self.work_total = sum(s.steps * s.width * s.height for s in scales)
        self.work_done = 0
        self.step = 0
        self.started = time.monotonic()

    def tick(self, scale: Scale, index: int, scales: int, loss: float, parts) -> Progress:
        self.step += 1
        self.work_done += scale.width * scale.height
        elapsed = time.monotonic() - self.started
        rate = elapsed / self.work_done
        return Progress(
            scale=index, scales=scales, width=scale.width, height=scale.height,
            step=self.step, total=self.total, loss=loss, losses=parts,
            elapsed=elapsed, eta=rate * (self.work_total - self.work_done),
        )
