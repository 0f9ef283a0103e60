"""The dialog's time estimates: each run measured from its events (``SpeedLog``), the
measurements kept across runs (the calibration file), and the next run's seconds from
the engine's own plan (``nst_contract.plan``); standard library only."""

from __future__ import annotations

import json
import math
import os
import stat
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nst_messages import ClientError

from nst_contract import plan
from nst_contract.errors import EngineError
from nst_contract.knobs import Settings


def timing(what: str, since: float) -> None:
    """With NST_PLUGIN_TIMINGS set: when ``what`` happened, in seconds after ``since``
    (the photographer's OK), for the benchmarks."""
    if os.environ.get("NST_PLUGIN_TIMINGS"):
        print(f"nst-timings: {what} {time.monotonic() - since:.2f} s after OK",
              file=sys.stderr, flush=True)


@dataclass
class ScaleMarks:
    """One scale's steps as measured: its pixels, and the run's elapsed seconds at its
    first and last step."""

    pixels: int
    first_s: float
    last_s: float = 0.0
    steps: int = 0


@dataclass
class RefinementMarks:
    """The refinement at full size as measured: the photo's pixels, its tiles, and
    the elapsed seconds at its last step."""

    pixels: int
    tiles: int
    last_s: float = 0.0
    steps: int = 0


class SpeedLog:
    """Measures a run from its events, for the next runs' time estimates: start-up,
    seconds per step as ``a + b × pixels``, and the share of the top scale's steps
    that runs with the convergence rule."""

    def __init__(self) -> None:
        self.launched = time.monotonic()
        self.device = None
        self.precision = None
        self.planned: list = []
        self.plans_refinement = False
        self.first_step_at = None
        self.marks: dict[int, ScaleMarks] = {}  # by scale, from 1
        self.working_end = 0.0  # elapsed at the working size's last step
        self.refinement: RefinementMarks | None = None
        self.result = None
        self.first_seen: dict[str, float] = {}  # event kind → seconds after launch

    def on_event(self, event: dict) -> None:
        kind = event["event"]
        self.first_seen.setdefault(kind, round(time.monotonic() - self.launched, 3))
        if kind == "started":
            self.device = event.get("device")
            self.precision = event.get("precision", "fp32")
            self.planned = event.get("scales", [])
            self.plans_refinement = bool(event.get("detail"))
        elif kind == "progress":
            p = event["progress"]
            if self.first_step_at is None:
                self.first_step_at = time.monotonic()
            elapsed = float(event.get("elapsed_s", 0))
            pixels = event.get("pixels") or event.get("width", 0) * event.get("height", 0)
            mark = self.marks.setdefault(p.scale, ScaleMarks(pixels, elapsed))
            mark.last_s = elapsed
            mark.steps += 1
            if not p.refining:
                self.working_end = elapsed
            else:
                self.refinement = self.refinement or RefinementMarks(
                    event.get("width", 0) * event.get("height", 0), p.tiles)
                self.refinement.last_s = elapsed
                self.refinement.steps += 1
        elif kind == "result":
            self.result = event

    def report(self) -> None:
        """Prints when each kind of event first came, with NST_PLUGIN_TIMINGS set."""
        if os.environ.get("NST_PLUGIN_TIMINGS"):
            text = ", ".join(f"{kind} {at:.2f} s" for kind, at in self.first_seen.items())
            print(f"nst-timings: {text}", file=sys.stderr, flush=True)

    def calibration(self) -> dict | None:
        points = [(m.pixels, (m.last_s - m.first_s) / (m.steps - 1))
                  for m in self.marks.values() if m.steps > 2]
        if not points or self.first_step_at is None or not self.device:
            return None
        a, b = _fit_line(points)
        first_pixels = self.marks[min(self.marks)].pixels
        startup = self.first_step_at - self.launched - (a + b * first_pixels)
        fractions = {}
        working = len(self.planned) - (1 if self.plans_refinement else 0)
        if self.result and self.result.get("stopped") in ("completed", "converged") \
                and working in self.marks:
            top = self.planned[working - 1]
            fractions[str(max(top[0], top[1]))] = round(
                self.marks[working].steps / max(1, top[2]), 3)
        calibration = {"device": self.device, "precision": self.precision,
                       "startup_s": round(max(0.0, startup), 3),
                       "step_s": round(a, 6), "step_s_per_megapixel": round(b * 1e6, 6),
                       "top_fractions": fractions,
                       "points": [[pixels, round(t, 6)] for pixels, t in points],
                       "startups": [round(max(0.0, startup), 3)]}
        if self.refinement:
            r = self.refinement
            calibration["detail_s_per_megapixel_step"] = round(
                (r.last_s - self.working_end) / (r.steps / r.tiles * r.pixels / 1e6), 6)
        return calibration

def _fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``t = a + b·x`` through the points (through 0 for a single one)."""
    if len(points) == 1:
        x, t = points[0]
        return 0.0, t / x
    n = len(points)
    mx = sum(x for x, _ in points) / n
    mt = sum(t for _, t in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (t - mt) for x, t in points) / sxx if sxx else mt / mx
    a = mt - b * mx
    if a < 0:  # not physical: a step cannot take negative time
        return 0.0, sum(t for _, t in points) / sum(x for x, _ in points)
    return a, max(b, 0.0)

def load_calibration(path: str | os.PathLike) -> dict | None:
    """The speed measured by earlier runs, or None. A damaged one (a missing or
    mistyped field, a number that is not finite, not a regular file) is set aside
    as ``*.bad``: the dialog opens without an estimate and the next run measures
    anew, instead of every run failing until the file is deleted by hand."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError("not a regular file")
        data = json.loads(path.read_text(encoding="utf-8"))
        _check_calibration(data)
        return data
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        try:
            os.replace(path, f"{path}.bad")
        except OSError:
            pass
        return None

def _check_calibration(data) -> None:
    """Raises ValueError unless ``data`` is a calibration the estimate can use."""
    def number(value, positive: bool = False) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueError(f"not a usable number: {value!r}")

    if not isinstance(data, dict) or data.get("device") not in ("cpu", "cuda", "mps"):
        raise ValueError("no device")
    if not isinstance(data.get("precision", "fp32"), (str, type(None))):
        raise ValueError("precision is not a name")
    for key in ("startup_s", "step_s", "step_s_per_megapixel"):
        number(data[key])
    fractions = data.get("top_fractions", {})
    if not isinstance(fractions, dict) or not all(isinstance(key, str) for key in fractions):
        raise ValueError("top_fractions is not a table")
    for value in fractions.values():
        number(value, positive=True)
    if "detail_s_per_megapixel_step" in data:
        number(data["detail_s_per_megapixel_step"], positive=True)
    points = data.get("points", [])
    if not isinstance(points, list) or not all(
            isinstance(point, list) and len(point) == 2 for point in points):
        raise ValueError("points is not a list of [pixels, seconds per step]")
    for pixels, seconds in points:
        number(pixels, positive=True)
        number(seconds)
    startups = data.get("startups", [])
    if not isinstance(startups, list):
        raise ValueError("startups is not a list")
    for seconds in startups:
        number(seconds)

# The estimate learns from this many of the latest runs' steps (each a working scale's
# pixels and seconds per step) and start-ups, on one device in one precision.
KEPT_POINTS = 32
KEPT_STARTUPS = 8


def save_calibration(path: str | os.PathLike, new: dict) -> None:
    """Stores ``new`` (from :meth:`SpeedLog.calibration`) learnt together with the
    runs before it on the same device in the same precision (bf16 halves the time of
    a step): the speed is fitted through the latest runs' steps at every size they
    worked at, the start-up is their median, a share of top-scale steps is averaged
    with the one measured before at that size, and what was not measured this time
    (other sizes, the refinement's speed) is kept. One run alone made the estimate
    jump with every run (12, 4, 11, 6 min); quiet on failure."""
    old = load_calibration(path) or {}
    if (old.get("device"), old.get("precision")) == (new["device"], new.get("precision")):
        points = (old.get("points", []) + new.get("points", []))[-KEPT_POINTS:]
        startups = (old.get("startups", []) + new.get("startups", []))[-KEPT_STARTUPS:]
        if points:
            a, b = _fit_line([tuple(point) for point in points])
            new.update(step_s=round(a, 6), step_s_per_megapixel=round(b * 1e6, 6),
                       points=points)
        if startups:
            new.update(startup_s=round(statistics.median(startups), 3), startups=startups)
        fractions = dict(old.get("top_fractions", {}))
        for size, fraction in new.get("top_fractions", {}).items():
            fractions[size] = round((fractions[size] + fraction) / 2, 3) \
                if size in fractions else fraction
        new["top_fractions"] = fractions
        if "detail_s_per_megapixel_step" in old:
            new.setdefault("detail_s_per_megapixel_step", old["detail_s_per_megapixel_step"])
    try:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(new, handle)
        os.replace(tmp, path)
    except OSError:
        pass

# Share of the top scale's steps a run takes before the convergence rule stops it,
# where none was measured at that size yet: 0.67 at 256 px, 0.90 at 512 px and 1.0 at
# 1024 px here (benchmarks/RESULTS.md); erring long is kinder than erring short.
DEFAULT_TOP_FRACTION = 1.0

# The refinement at full size works in overlapping tiles: pixel-steps per photo pixel
# and step, about, until a refinement has been measured here.
DETAIL_OVERLAP = 1.3

def planned_run(width: int, height: int, settings: dict, device: str):
    """The engine's own plan of a run of ``settings`` on ``device``: its settings and
    working scales (the refinement at full size comes after them). A run the engine
    would refuse (a setting out of range, an image too thin for its max size) is the
    engine's message, as ClientError ``bad_input``."""
    try:
        knobs = Settings.from_dict(settings)
        max_size = knobs.max_size or plan.auto_max_size(device)
        return knobs, plan.plan_scales(width, height, max_size, knobs.iterations)
    except EngineError as error:
        raise ClientError(error.kind, error.message[:1].upper() + error.message[1:] + ".") \
            from None

def estimate_seconds(calibration: dict | None, width: int, height: int,
                     settings: dict) -> float | None:
    """Seconds a run of these settings should take here, or None before the first run;
    ClientError for a run the engine would refuse (:func:`planned_run`)."""
    device = _device(calibration, settings)
    knobs, scales = planned_run(width, height, settings, device)
    if not calibration:
        return None
    top = scales[-1]
    fractions = calibration.get("top_fractions") or {}
    fraction = fractions.get(str(max(top.width, top.height)), DEFAULT_TOP_FRACTION)
    seconds = float(calibration["startup_s"])
    for scale in scales:
        steps = max(1, scale.steps * min(1.0, fraction)) if scale is top else scale.steps
        per_step = calibration["step_s"] + \
            calibration["step_s_per_megapixel"] * scale.width * scale.height / 1e6
        seconds += steps * per_step
    if knobs.refines(device) and (top.width, top.height) != (width, height):
        rate = calibration.get("detail_s_per_megapixel_step") or \
            DETAIL_OVERLAP * calibration["step_s_per_megapixel"]
        seconds += knobs.refinement_steps(device) * width * height / 1e6 * rate
    return seconds


def _device(calibration: dict | None, settings: dict) -> str:
    """The device the run will use: where runs here were measured, else the one asked
    for (the processor for Automatic, until a run has said otherwise)."""
    asked = settings.get("device", "auto")
    return (calibration or {}).get("device") or ("cpu" if asked in ("auto", "cpu") else asked)


def refinement_cost_s(calibration: dict | None, width: int, height: int,
                      settings: dict) -> float | None:
    """The seconds *Refine at full size* would add to this run here: 0 when the run
    refines already or works at the layer's full size anyway, None before the first
    run (nothing measured). ClientError as for :func:`estimate_seconds`."""
    device = _device(calibration, settings)
    knobs, scales = planned_run(width, height, settings, device)
    top = scales[-1]
    if knobs.refines(device) or (top.width, top.height) == (width, height):
        return 0.0
    now = estimate_seconds(calibration, width, height, settings)
    if now is None:
        return None
    refined = estimate_seconds(calibration, width, height, {**settings, "detail": "full"})
    return max(0.0, refined - now)


def typical_top_fraction(calibration: dict | None, started: dict) -> float | None:
    """The share of the top working scale's steps that runs here took at this run's
    size before the convergence rule stopped them, from the calibration when it was
    measured on the device and in the precision of this run (``started``: the run's
    first event); None where none was measured."""
    if not calibration or (calibration.get("device"), calibration.get("precision")) != \
            (started.get("device"), started.get("precision", "fp32")):
        return None
    planned = started.get("scales") or []
    working = planned[:-1] if started.get("detail") else planned
    if not working:
        return None
    fraction = (calibration.get("top_fractions") or {}).get(str(max(working[-1][:2])))
    return min(1.0, float(fraction)) if fraction else None


def typical_remaining_s(eta_s: float, step: int, started: dict, fraction: float) -> float:
    """The seconds a run should still take after progress step ``step``: the engine's
    ``eta_s`` counts every step up to the cap, and the top working scale is taken to
    stop after ``fraction`` of its steps, as the runs here did (each step weighted by
    the pixels it works on)."""
    planned = started.get("scales") or []
    top = len(planned) - (2 if started.get("detail") else 1)
    at_cap = expected = 0.0
    start = 0
    for index, (width, height, steps, tiles) in enumerate(planned):
        count = steps * max(1, tiles)
        typical = math.ceil(count * fraction) if index == top else count
        pixels = width * height / max(1, tiles)
        at_cap += max(0, start + count - max(step, start)) * pixels
        expected += max(0, start + typical - max(step, start)) * pixels
        start += count
    return eta_s * expected / at_cap if at_cap else 0.0


def calibrate_from_events(lines, path: str | os.PathLike) -> bool:
    """The installer's speed test: the events of an engine run (``nst-engine stylize
    --progress json``, one JSON line each, read as they come) measured as a run of
    the plug-in would be, and stored as the calibration unless runs here have
    measured one already. Its pictures are generated, so how soon the convergence rule
    stops a run is not taken from it. True when a calibration was written."""
    from nst_client import parse_event  # the events as the plug-in reads them

    log = SpeedLog()
    for line in lines:
        event = parse_event(line.encode() if isinstance(line, str) else line)
        if event is not None:
            log.on_event(event)
    measured = log.calibration()
    if measured is None or load_calibration(path) is not None:
        return False
    measured["top_fractions"] = {}
    measured["measured_by"] = "installer"
    save_calibration(path, measured)
    return True


if __name__ == "__main__":  # install.sh: python nst_estimates.py CALIBRATION < events
    sys.exit(0 if calibrate_from_events(sys.stdin, sys.argv[1]) else 1)
