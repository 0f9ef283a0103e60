"""The optimisation loop: one region's steps (L-BFGS or Adam on the pixels), the
convergence rule, the clock, and every step reported as an :class:`Iterate`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch

from nst_contract import plan
from nst_contract.errors import EngineError
from nst_contract.knobs import Settings
from nst_contract.plan import Scale, Tile

from .control import Control
from .losses import Objective

CONVERGE_MIN_STEPS = 30  # top-scale steps before the convergence rule may stop a run ...
CONVERGE_WINDOW = 10  # ... when the objective fell by less than CONVERGE_TOLERANCE
CONVERGE_TOLERANCE = 0.0125  # ... (relative) over the last CONVERGE_WINDOW steps
# A step that lowers the objective by less than this (relative) is L-BFGS stuck.
STALLED = 1e-6


class Stop(str, Enum):
    """How a run ended; its value is what the wire's ``result`` event says."""

    COMPLETED = "completed"  # every planned step
    CONVERGED = "converged"  # the top scale stopped improving (``converge``)
    FINISHED = "finished"  # the client's Keep this result

    def __str__(self) -> str:
        return self.value


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
    refining: bool = False  # a step of the refinement at full size (the events' `detail`)
    tile: int = 1  # 1-based, of ``tiles`` regions at this scale
    tiles: int = 1
    pixels: int = 0  # of the region (tile or whole image) this step worked on
    image: torch.Tensor | None = None  # the current image at this scale (for previews)
    photo: torch.Tensor | None = None  # the photo under ``image`` (previews keep its colours)


Features = Callable[[torch.Tensor], dict]


class Loop:
    """One run's optimisation across its planned scales: the steps done, the clock,
    and how it stopped (``Stop``); ``at`` is the scale being worked on."""

    def __init__(self, settings: Settings, features: Features, scales: list[Scale],
                 callback: Callable[[Iterate], None] | None, control: Control) -> None:
        self.settings = settings
        self.features = features
        self.scales = scales
        self.callback = callback
        self.control = control
        self.clock = Clock(scales)
        self.top = [scale for scale in scales if not scale.refining][-1]
        self.at: Scale | None = None
        self.steps = 0
        self.stopped = Stop.COMPLETED

    def optimise(self, start: torch.Tensor, objective: Objective, scale: Scale,
                 tile: Tile, photo: torch.Tensor | None = None) -> torch.Tensor:
        """Optimises ``start`` (the pixels of one tile, or of the whole image, at
        ``scale``) against ``objective`` for the scale's steps, or until Keep or the
        convergence rule stops it; returns the result in [0, 1]. ``photo``, the photo's
        pixels there, travels with each step's report."""
        region = start.requires_grad_(True)
        optimizer = self._optimizer(region)
        last = Evaluation()

        def closure() -> torch.Tensor:
            # L-BFGS (one iteration per step) re-evaluates at the start of each step
            # the point its line search just accepted: answer from the last
            # evaluation when it was that point, which halves the cost of a step.
            if last.image is not None and torch.equal(last.image, region):
                region.grad = last.grad
                return last.tensor
            optimizer.zero_grad(set_to_none=True)
            loss, parts = objective(region, self.features)
            loss.backward()
            last.update(loss, parts, region)
            return loss

        index = next(i for i, s in enumerate(self.scales, start=1) if s is scale)
        last_region = tile == scale.regions()[-1]
        history: list[float] = []
        for step in range(1, scale.steps + 1):
            self.control.check()
            if self.control.finish.is_set() and self.steps:
                self.stopped = Stop.FINISHED
                break
            optimizer.step(closure)
            self.steps += 1
            if not math.isfinite(last.loss):
                raise EngineError(
                    "internal",
                    "the optimisation diverged (the loss became NaN or infinite); "
                    "try a lower style strength or --optimizer adam",
                )
            if isinstance(optimizer, torch.optim.LBFGS) and history \
                    and last.loss >= history[-1] * (1 - STALLED):
                # When its line search fails torch's L-BFGS takes a zero step and then
                # repeats the same direction for good: restart its memory.
                optimizer.state.clear()
            history.append(last.loss)
            converged = scale is self.top and self.settings.converge and converged_by(history)
            if self.control.finish.is_set():
                self.stopped = Stop.FINISHED
            elif converged:  # this region; the next tile (or the refinement) goes on
                self.stopped = Stop.CONVERGED
            finishing = self.stopped is Stop.FINISHED
            done = step == scale.steps or finishing or converged
            if self.callback is not None:
                iterate = self.clock.tick(scale, index, tile, last.loss, last.parts)
                iterate.scale_done = done and (last_region or finishing)
                iterate.image, iterate.photo = region.detach(), photo
                self.callback(iterate)
            if done:
                break
        with torch.no_grad():
            region.clamp_(0, 1)  # the range penalty leaves at most tiny excursions
        return region.detach()

    def _optimizer(self, region: torch.Tensor) -> torch.optim.Optimizer:
        if self.settings.optimizer == "lbfgs":
            return torch.optim.LBFGS(
                [region], lr=1.0, max_iter=1,
                history_size=plan.lbfgs_history(region.numel()),
                line_search_fn="strong_wolfe",
            )
        return torch.optim.Adam([region], lr=self.settings.learning_rate)


def converged_by(history: Sequence[float]) -> bool:
    """The top scale's objective fell by less than ``CONVERGE_TOLERANCE`` (relative) over
    the last ``CONVERGE_WINDOW`` steps, after at least ``CONVERGE_MIN_STEPS`` there."""
    if len(history) < max(CONVERGE_MIN_STEPS, CONVERGE_WINDOW + 1):
        return False
    before, now = history[-1 - CONVERGE_WINDOW], history[-1]
    return before - now < CONVERGE_TOLERANCE * now


@dataclass
class Evaluation:
    """The last objective evaluation, to answer L-BFGS's repeated one."""

    loss: float = math.nan
    parts: dict = field(default_factory=dict)
    tensor: torch.Tensor | None = None
    image: torch.Tensor | None = None
    grad: torch.Tensor | None = None

    def update(self, loss: torch.Tensor, parts: dict, region: torch.Tensor) -> None:
        self.loss, self.parts, self.tensor = loss.item(), parts, loss.detach()
        self.image, self.grad = region.detach().clone(), region.grad


class Clock:
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
            refining=scale.refining, tile=scale.regions().index(tile) + 1,
            tiles=len(scale.regions()), pixels=pixels,
        )
