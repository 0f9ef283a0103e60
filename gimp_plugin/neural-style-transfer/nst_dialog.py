"""The procedure's dialog: GIMP's own, filled from the arguments, with the run's
estimated time under the options (the selection's area, and what *Refine at full
size* would cost), updated whenever an option changes."""

from __future__ import annotations

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
import nst_estimates  # noqa: E402
from gi.repository import Gimp, GimpUi, Gtk  # noqa: E402
from nst_arguments import settings_from_config  # noqa: E402
from nst_config import DEVICES  # noqa: E402
from nst_messages import (  # noqa: E402
    ClientError,
    _,
    format_area,
    format_estimate,
    format_refinement,
)


def show_dialog(procedure, config, drawables, plugin_name: str,
                calibration_path: str, devices: list[str] | None = None) -> bool:
    """True when the photographer pressed OK. ``devices``: those this computer has
    (``nst_config.available_devices``); the others are greyed out in the Device list,
    as GIMP's own export dialogs grey out what does not apply."""
    GimpUi.init(plugin_name)
    if devices:
        try:
            choice = Gimp.param_spec_choice_get_choice(config.find_property("device"))
            for nick in DEVICES:
                choice.set_sensitive(nick, nick in devices)
        except (AttributeError, TypeError):  # a GIMP without choice sensitivity: all shown
            pass
    dialog = GimpUi.ProcedureDialog.new(procedure, config, _("Neural Style Transfer"))
    dialog.fill(None)
    estimate = Gtk.Label(xalign=0)
    estimate.set_line_wrap(True)
    estimate.set_margin_start(12)
    estimate.set_margin_end(12)
    dialog.get_content_area().pack_end(estimate, False, False, 6)
    calibration = nst_estimates.load_calibration(calibration_path)
    layer = drawables[0] if len(drawables) == 1 else None
    ok, _x, _y, width, height = layer.mask_intersect() if layer else (False, 0, 0, 0, 0)

    def update(*_args) -> None:
        if not ok:
            estimate.set_text(_("The selection does not touch this layer: select part of "
                                "it, or Select ▸ None.") if layer else "")
            return
        settings = settings_from_config(config.get_property)
        try:
            seconds = nst_estimates.estimate_seconds(calibration, width, height, settings)
            extra = nst_estimates.refinement_cost_s(calibration, width, height, settings)
        except ClientError as refused:  # the engine would refuse this run
            estimate.set_text(refused.message)
            return
        measured = calibration or {}
        lines = [format_area(width, height, layer.get_width(), layer.get_height()),
                 format_estimate(seconds, measured.get("device"),
                                 measured.get("measured_by") == "installer"),
                 format_refinement(extra)]
        estimate.set_text("\n".join(line for line in lines if line))

    config.connect("notify", update)
    update()
    estimate.show()
    accepted = dialog.run()
    dialog.destroy()
    return accepted
