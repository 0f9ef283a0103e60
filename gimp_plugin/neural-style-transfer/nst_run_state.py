"""What the session window shows of one run, worked out from its events and the
photographer's clicks; standard library only (no GTK, no GIMP), so that it is tested
outside GIMP. ``nst_run_window.SessionWindow`` draws it."""

from __future__ import annotations

from dataclasses import dataclass, field

from nst_estimates import typical_remaining_s, typical_top_fraction
from nst_messages import _, device_name, format_eta, ngettext


@dataclass
class RunState:
    """The session window's texts and buttons for one run; ``where`` names the
    engine's machine, and ``calibration`` (``nst_estimates``) what runs here measured:
    with it, the remaining time is what a run typically takes, not the step cap's."""

    where: str
    calibration: dict | None = None
    waiting: str | None = field(default_factory=lambda: _("Starting the engine…"))
    status: str = ""
    step: str = "–"
    scale: str = "–"
    elapsed: str = "–"
    remaining: str = "–"
    fraction: float = 0.0
    keep_enabled: bool = False
    cancel_enabled: bool = True
    cancelled: bool = False
    kept: bool = False  # Keep this result was pressed
    progress_text: str | None = None  # for GIMP's progress bar, at each step
    refining: bool = False  # the last step was of the refinement at full size
    started: dict = field(default_factory=dict)  # the run's ``started`` event
    top_fraction: float | None = None  # of the top scale's steps, as runs here took

    def on_event(self, event: dict) -> None:
        kind = event["event"]
        if kind == "started":
            self.started = event
            self.top_fraction = typical_top_fraction(self.calibration, event)
            self.waiting = _("Working out the style…")
            device = device_name(event.get("device"))
            arithmetic = _(" (fast bf16 arithmetic)") if event.get("precision") == "bf16" \
                else ""
            self.status = _("{width}×{height} px, worked out at up to {size} px on the "
                            "{device} of {where}{arithmetic}").format(
                width=event.get("width"), height=event.get("height"),
                size=event.get("max_size"), device=device, where=self.where,
                arithmetic=arithmetic)
        elif kind == "queued":  # again whenever the queue moves
            ahead = event.get("ahead", 1)
            ahead = ahead if isinstance(ahead, int) and ahead > 0 else 1
            self.waiting = _("Waiting for the engine: another picture is being painted") \
                if ahead == 1 else ngettext(
                    "Waiting for the engine: {count} picture is ahead of this one",
                    "Waiting for the engine: {count} pictures are ahead of this one",
                    ahead).format(count=ahead)
            self.progress_text = ngettext(
                "Neural style transfer: waiting, {count} picture ahead",
                "Neural style transfer: waiting, {count} pictures ahead", ahead).format(
                count=ahead)
        elif kind == "progress":
            p = event["progress"]
            self.refining = p.refining
            self.keep_enabled = not (self.cancelled or self.kept)
            self.step = _("{step} of {total}").format(step=p.step, total=p.total)
            if p.refining:
                self.scale = _("full size, tile {tile} of {tiles}").format(
                    tile=p.tile, tiles=p.tiles)
            else:
                tiles = _(", tile {tile} of {tiles}").format(tile=p.tile, tiles=p.tiles) \
                    if p.tiles > 1 else ""
                self.scale = _("{scale} of {scales} ({width}×{height}{tiles})").format(
                    scale=p.scale, scales=p.scales, width=event.get("width"),
                    height=event.get("height"), tiles=tiles)
            self.remaining = self.remaining_time(p)
            self.fraction = min(1.0, p.fraction)
            self.progress_text = _("Neural style transfer: step {step} of {total}").format(
                step=p.step, total=p.total)
        elif kind == "result":
            self.status = _("Adding the layer…")

    def remaining_time(self, p) -> str:
        """The time left as an estimate when runs here were measured (the convergence
        rule ends most runs well before the step cap), else the cap's "at most"."""
        at_most = format_eta(p.eta_s)
        if self.top_fraction is None:
            return _("at most {time}").format(time=at_most)
        seconds = typical_remaining_s(p.eta_s, p.step, self.started, self.top_fraction)
        if seconds < 1.0:  # past where runs here stopped: it stops any step now
            return _("any moment now (at most {time})").format(time=at_most)
        if seconds > 0.95 * p.eta_s:  # runs here went (nearly) to the cap
            return _("about {time}").format(time=at_most)
        return _("about {time} (at most {at_most})").format(time=format_eta(seconds),
                                                           at_most=at_most)

    def picture_shown(self) -> None:
        self.waiting = None

    def tick(self, elapsed_s: float, engine_silent: bool) -> None:
        self.elapsed = format_eta(elapsed_s)
        if engine_silent:
            self.status = _("The engine stopped answering.")

    def keep(self) -> None:
        """Keep this result: the engine finishes with the picture as it is."""
        self.kept = True
        self.keep_enabled = self.cancel_enabled = False
        self.status = _("Keeping the picture as it was before the full-size pass…") \
            if self.refining else _("Finishing: enlarging the picture to the layer's size…")

    def cancel(self) -> None:
        self.cancelled = True
        self.keep_enabled = self.cancel_enabled = False
        self.status = _("Cancelling…")
