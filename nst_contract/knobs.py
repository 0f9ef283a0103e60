"""Every knob of a run, written once: default, type, range, choices and help text.

The command line builds its options from :data:`KNOBS`, the protocol reads a
request's ``settings`` through :meth:`Settings.from_dict`, and the GIMP plug-in
declares its arguments from the same fields (``nst_client.ARGUMENT_KNOBS``).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from .errors import bad_input
from .layers import LAYER_NAMES

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
MIN_WORK_SIDE = 32  # VGG needs a few pixels left after four poolings
MAX_SIZE_LIMIT = 16384
MAX_ITERATIONS = 5000
MAX_SEED = 2**31 - 1  # GIMP's int arguments are 32-bit
AUTO_SIZE = 0  # max_size 0 (or None): the engine picks the working size
DETAIL_CHOICES = ("auto", "working", "full")
PRECISION_CHOICES = ("auto", "fp32", "bf16")
STYLE_LOSSES = ("gram", "w2")
DETAIL_STEPS = {"cpu": 10, "cuda": 30, "mps": 30}  # full-size refinement; docs/losses.md
# A quick look (the plug-in's session window): enough of the painting's look to compare
# paintings — a small working size, few steps, enlarged only. At 256 px 24 steps show
# the look that 60 settle (benchmarks/RESULTS.md, "Quick looks").
QUICK_LOOK = {"max_size": 256, "iterations": 24, "detail": "working"}


def knob(default, kind, help: str, group: str = "expert", *, minimum=None, maximum=None,
         choices=None, metavar=None, optional=False):
    """A settings field with what the command line and validation need to know of it."""
    meta = {"kind": kind, "help": help, "group": group, "min": minimum, "max": maximum,
            "choices": choices, "metavar": metavar, "optional": optional}
    return field(default=default, metadata=meta)


def style_weight_for(strength: float) -> float:
    """Maps ``style_strength`` s in [0, 1] onto beta (alpha = 1): ``beta = 10^(4s - 1)``.

    s = 0 gives beta = 0.1 (the photo barely changes), 0.5 gives 10, 1 gives 1000.
    """
    return 10.0 ** (4.0 * strength - 1.0)


@dataclass
class Settings:
    """Every knob of a run; the CLI, the protocol and the plug-in all fill this in."""

    style_strength: float = knob(
        0.5, float, "0 keeps the photo almost as it is, 1 lets the painting take over",
        "look", minimum=0.0, maximum=1.0, metavar="S")
    preserve_colors: bool = knob(
        False, bool, "keep your photo's colours; take only the painting's textures and "
        "brightness patterns", "look")
    style_scale: float = knob(
        1.0, float, "size of the painting's brush strokes relative to the photo: below 1 "
        "gives finer strokes, above 1 bolder ones", "look", minimum=0.01, maximum=100.0,
        metavar="F")
    style_blend: tuple[float, ...] | None = knob(
        None, tuple, "how much each style image counts when several are given "
        "(default: equally)", "look", metavar="W1,W2,…", optional=True)
    tv_weight: float = knob(
        0.0, float, "smoothing against fine noise; try 1 to 10 (0: off)", "look",
        minimum=0.0, maximum=1e6, metavar="W")
    iterations: int = knob(
        200, int, "optimisation steps over all scales at most, about half at the full "
        "working size; a run stops earlier once further steps no longer change the look",
        "quality", minimum=1, maximum=MAX_ITERATIONS, metavar="N")
    max_size: int | None = knob(
        None, int, "longest side, in pixels, at which the painting is worked out; the "
        "result is then enlarged to full size. Larger shows finer detail but needs more "
        "time and memory. 0 or unset: automatic (1024 on a GPU, 512 on the CPU); at or "
        "above the photo's size: full resolution", "quality", minimum=AUTO_SIZE,
        maximum=MAX_SIZE_LIMIT, metavar="PX", optional=True)
    detail: str = knob(
        "auto", str, "after the working size: 'full' refines the result at the photo's "
        "full size (sharp at 100 %, slower), 'working' only enlarges it; auto: full on a "
        "GPU, working on the processor", "quality", choices=DETAIL_CHOICES)
    detail_steps: int | None = knob(
        None, int, "steps of the full-size refinement, every tile (default: "
        f"{DETAIL_STEPS['cpu']} on the processor, {DETAIL_STEPS['cuda']} on a GPU)",
        "quality", minimum=1, maximum=MAX_ITERATIONS, metavar="N", optional=True)
    enlarge: str = knob(
        "guided", str, "how the working size's result is enlarged: guided adds back the "
        "photo's finest detail where the painting follows the photo; bicubic alone is "
        "softer", "quality", choices=("guided", "bicubic"))
    device: str = knob(
        "auto", str, "where to compute: auto picks an NVIDIA GPU, then Apple's GPU, then "
        "the processor", "quality", choices=("auto", "cuda", "mps", "cpu"))
    precision: str = knob(
        "auto", str, "arithmetic of the network's pass: auto takes bf16 on GPUs that "
        "compute it and on processors with native bf16 (AVX512-BF16, AMX, ARM BF16) "
        "where it measures faster, about twice as fast there; fp32 elsewhere. The "
        "objective and the pixels stay fp32", "quality", choices=PRECISION_CHOICES)
    memory_budget: float | None = knob(
        None, float, "memory (GB) the engine may use in all; working sizes that would need "
        "more are worked on in overlapping tiles (default: 80% of the GPU's available "
        "memory, or a third of the computer's RAM)", "quality", minimum=0.1, maximum=1e5,
        metavar="GB", optional=True)
    seed: int = knob(
        0, int, "seed of anything random (the starting noise of init noise among it); on "
        "the CPU a run repeats bit for bit, on a GPU only nearly", "quality", minimum=0,
        maximum=MAX_SEED)
    converge: bool = knob(
        True, bool, "stop before the last iteration once the objective has stopped "
        "falling (docs/losses.md); off: always run every iteration", "quality")
    content_weight: float = knob(
        1.0, float, "alpha, the weight of the content loss", minimum=0.0, maximum=1e6,
        metavar="ALPHA")
    style_weight: float | None = knob(
        None, float, "beta, the weight of the style loss; overrides the style strength",
        minimum=0.0, maximum=1e9, metavar="BETA", optional=True)
    style_loss: str = knob(
        "gram", str, "the style term: gram (Gatys et al.: the features' Gram matrices) or "
        "w2 (the Wasserstein-2 distance between the features' means and covariances, as "
        "crowsonkb/style-transfer-pytorch; docs/losses.md)", choices=STYLE_LOSSES)
    content_layer: str = knob(CONTENT_LAYER, str, "VGG19 layer for content", metavar="LAYER")
    style_layers: tuple[str, ...] = knob(
        STYLE_LAYERS, tuple, "VGG19 layers for style", metavar="L1,L2,…")
    init: str = knob(
        "content", str, "start from the photo (content), from noise, or from an image file",
        metavar="content|noise|FILE")
    optimizer: str = knob(
        "lbfgs", str, "L-BFGS (best quality) or Adam (less memory)", choices=("lbfgs", "adam"))
    learning_rate: float = knob(
        0.02, float, "Adam's step size, in [0, 1] pixel units", minimum=1e-6, maximum=1.0)
    pooling: str = knob(
        "max", str, "VGG pooling; avg gives smoother results", choices=("max", "avg"))
    weights: str | None = knob(
        None, str, "network weights (default: $NST_WEIGHTS or original)",
        metavar="original|torchvision|random|FILE", optional=True)

    @classmethod
    def from_dict(cls, values: dict) -> Settings:
        """Builds settings from plain values (JSON or argparse); unknown keys are refused."""
        unknown = sorted(set(values) - set(KNOBS))
        if unknown:
            raise bad_input(f"unknown setting(s): {', '.join(unknown)}")
        values = {key: _coerce(key, value) for key, value in values.items()}
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Ranges, choices and cross-field rules; every failure is ``bad_input``."""
        for name, meta in KNOBS.items():
            value = getattr(self, name)
            if value is None:
                if not meta["optional"]:
                    raise bad_input(f"setting {name} cannot be empty")
                continue
            if meta["choices"] and value not in meta["choices"]:
                raise bad_input(f"{name} must be one of {', '.join(meta['choices'])}, "
                                f"got {value!r}")
            if meta["kind"] in (int, float):
                _check_range(name, value, meta["min"], meta["max"])
        if self.max_size not in (None, AUTO_SIZE) and self.max_size < MIN_WORK_SIDE:
            raise bad_input(f"max size must be 0 (automatic) or at least {MIN_WORK_SIDE} pixels")
        if not self.style_layers:
            raise bad_input("at least one style layer is needed")
        for name in (self.content_layer, *self.style_layers):
            if name not in LAYER_NAMES:
                raise bad_input(f"unknown VGG19 layer {name!r} (use e.g. relu4_2)")
        if self.style_blend is not None:
            for weight in self.style_blend:
                _check_range("style blend weight", weight, 0.0, 1e6)
            if sum(self.style_blend) <= 0:
                raise bad_input("style blend weights must not all be zero")
        if self.init not in ("content", "noise") and not Path(self.init).is_file():
            raise bad_input(f"init must be content, noise or an existing image file; "
                            f"{self.init!r} is none of these")

    @property
    def beta(self) -> float:
        if self.style_weight is not None:
            return self.style_weight
        return style_weight_for(self.style_strength)

    @property
    def auto_size(self) -> bool:
        return self.max_size in (None, AUTO_SIZE)

    def refines(self, device_type: str) -> bool:
        """Whether the run ends with the refinement at full size on this device."""
        return self.detail == "full" or (self.detail == "auto" and device_type != "cpu")

    def refinement_steps(self, device_type: str) -> int:
        return self.detail_steps or DETAIL_STEPS.get(device_type, DETAIL_STEPS["cuda"])


KNOBS: dict[str, dict] = {f.name: dict(f.metadata) for f in fields(Settings)}
DEFAULTS: dict[str, object] = {
    f.name: f.default for f in fields(Settings) if f.default is not MISSING}


def _check_range(name: str, value, minimum, maximum) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise bad_input(f"{name} must be a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise bad_input(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise bad_input(f"{name} must be at most {maximum}, got {value}")


def _coerce(key: str, value):
    meta = KNOBS[key]
    kind = meta["kind"]
    if value is None:
        if meta["optional"]:
            return None
        raise bad_input(f"setting {key} cannot be empty")
    if kind is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad_input(f"setting {key} must be a list")
        return tuple(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise bad_input(f"setting {key} must be of type {kind.__name__}, got {value!r}")
    return value
