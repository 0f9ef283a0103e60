"""A photographer's session in the session window: every painting and strength tried
on one photo (a *take* each), quick looks or full runs, painted one after another,
the results kept in a strip, compared, and the chosen ones added as layers. Standard
library only (no GTK, no GIMP), tested outside GIMP; ``nst_run_window`` draws it and
the plug-in's main file paints and adds (``stylize_layer``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nst_messages import _

from nst_contract.knobs import QUICK_LOOK

WAITING, PAINTING, DONE, FAILED, CANCELLED = "waiting", "painting", "done", "failed", "cancelled"
COMPARED = 2  # results seen side by side at most


@dataclass
class Take:
    """One run of the session: what was asked, and what came of it."""

    number: int  # 1, 2, … in the order asked
    settings: dict  # the engine settings it runs with
    style: object  # nst_client.Style: what the engine gets
    painting: object  # nst_recipe.Painting: what the result's recipe names
    quick: bool = False  # a quick look (``QUICK_LOOK``)
    state: str = WAITING
    picture_png: bytes | None = None  # the last picture the engine showed of it
    result: dict | None = None  # the engine's ``result`` event, with its payload
    started: dict = field(default_factory=dict)  # the engine's ``started`` event
    error: str = ""
    added: bool = False  # added to the image as a layer
    finishes: Take | None = None  # the quick look this full run starts from

    @property
    def worked_to(self) -> int:
        """The working size a result was worked out at (the engine's ``started``)."""
        return int(self.started.get("max_size") or 0)

    @property
    def label(self) -> str:
        """How the strip names it: painting, strength, colours, and a quick look's mark."""
        name = os.path.splitext(getattr(self.painting, "name", "") or "")[0]
        text = _("{painting} {strength:g}").format(painting=name,
                                                   strength=self.settings["style_strength"])
        if self.settings.get("preserve_colors"):
            text += " " + _("(photo's colours)")
        if self.quick:
            text += " · " + _("quick look")
        elif self.finishes is not None:
            text += " · " + _("finished")
        return text


class Session:
    """The takes of one photo, in order. Only one paints at a time: the others wait
    their turn here (a take waiting can still be dropped)."""

    def __init__(self) -> None:
        self.takes: list[Take] = []
        self.chosen: list[int] = []  # numbers of the results shown, at most ``COMPARED``

    def ask(self, settings: dict, style, painting, quick: bool = False) -> Take:
        """A new take at the end of the queue; a quick look takes ``QUICK_LOOK`` over
        the settings."""
        if quick:
            settings = {**settings, **QUICK_LOOK}
        take = Take(len(self.takes) + 1, dict(settings), style, painting, quick)
        self.takes.append(take)
        return take

    def finish(self, quick: Take, full_settings: dict) -> Take:
        """*Finish this one*: a full run of a quick look's painting, strength and
        colours (the rest from ``full_settings``, the dialog's), starting from its
        result instead of from the photo."""
        settings = {**full_settings, "style_strength": quick.settings["style_strength"],
                    "preserve_colors": quick.settings.get("preserve_colors", False)}
        take = self.ask(settings, quick.style, quick.painting)
        take.finishes = quick
        return take

    @property
    def painting_now(self) -> Take | None:
        return next((t for t in self.takes if t.state == PAINTING), None)

    def next_to_paint(self) -> Take | None:
        """The take to start now: the first waiting one, when none is painting."""
        if self.painting_now is not None:
            return None
        return next((t for t in self.takes if t.state == WAITING), None)

    @property
    def waiting(self) -> int:
        return sum(t.state == WAITING for t in self.takes)

    def ended(self, take: Take, result: dict | None = None, error: str = "",
              cancelled: bool = False) -> None:
        """A take's run ended: with a result, an error, or cancelled. A result is shown
        at once (on its own)."""
        if result is not None:
            take.state, take.result = DONE, result
            self.chosen = [take.number]
        else:
            take.state, take.error = (CANCELLED, "") if cancelled else (FAILED, error)

    def results(self) -> list[Take]:
        return [t for t in self.takes if t.state == DONE]

    def choose(self, number: int, compare: bool = False) -> None:
        """Shows a result (a click in the strip); ``compare`` (Ctrl+click) shows it beside
        the one shown, the older of two making way."""
        if number not in {t.number for t in self.results()}:
            return
        if not compare:
            self.chosen = [number]
        elif number in self.chosen:
            if len(self.chosen) > 1:
                self.chosen.remove(number)
        else:
            self.chosen = (self.chosen + [number])[-COMPARED:]

    def shown(self) -> list[Take]:
        by_number = {t.number: t for t in self.takes}
        return [by_number[n] for n in self.chosen]

    def to_add(self) -> list[Take]:
        """What *Add as layer* adds: the results shown that are not added yet."""
        return [t for t in self.shown() if not t.added]

    def unadded(self) -> int:
        return sum(not t.added for t in self.results())
