"""The procedure's dialog: GIMP's own, filled from the arguments, with a chooser that
offers images and shows the painting (or a layer of an open image as the painting: the
one chosen last is used), and the run's estimated time under the options
(the selection's area, and what *Refine at full size* would cost), updated whenever an
option changes. Its Help button opens the plug-in's own page (``help/``, registered
as the plug-in's help domain)."""

from __future__ import annotations

import os

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
import nst_estimates  # noqa: E402
from gi.repository import Gimp, GimpUi, Gio, GObject, Gtk  # noqa: E402
from nst_arguments import arguments, settings_from_config  # noqa: E402
from nst_config import DEVICES  # noqa: E402
from nst_layers import painting_name  # noqa: E402
from nst_messages import (  # noqa: E402
    ClientError,
    _,
    format_area,
    format_estimate,
    format_refinement,
    format_style_layer,
)
from nst_run_window import add_image_filters, load_thumbnail  # noqa: E402

THUMBNAIL_PX = 96  # the chosen painting under its chooser
RECENT_PX = 40  # each of the paintings used last


def show_dialog(procedure, config, drawables, plugin_name: str,
                calibration_path: str, devices: list[str] | None = None,
                note: str = "", recent: list[str] = ()) -> bool:
    """True when the photographer pressed OK. ``devices``: those this computer has
    (``nst_config.available_devices``); the others are greyed out in the Device list,
    as GIMP's own export dialogs grey out what does not apply. ``note``: a line above
    the estimate (the recipe the dialog opened with). ``recent``: the paintings used
    last (``nst_recent``), offered as thumbnails under the chooser."""
    GimpUi.init(plugin_name)
    if devices:
        try:
            choice = Gimp.param_spec_choice_get_choice(config.find_property("device"))
            for nick in DEVICES:
                choice.set_sensitive(nick, nick in devices)
        except (AttributeError, TypeError):  # a GIMP without choice sensitivity: all shown
            pass
    dialog = GimpUi.ProcedureDialog.new(procedure, config, _("Neural Style Transfer"))
    chooser = dialog.get_widget("style-file", GObject.TYPE_NONE)
    chooser.set_valign(Gtk.Align.CENTER)
    offer_images(chooser)
    # A list, not GIMP's radio buttons for three choices: those have no mnemonic.
    dialog.get_widget("detail", Gtk.ComboBox)
    style_row = dialog.fill_box("style-row", ["style-file"])
    pictures = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=12)
    thumbnail = Gtk.Image()
    pictures.pack_start(thumbnail, False, False, 0)
    pictures.pack_start(recent_strip(config, recent), False, False, 0)
    style_row.pack_start(pictures, False, False, 0)
    pictures.show_all()
    dialog.fill(["style-row", "style-layer", *(argument.name for argument in arguments())])
    estimate = Gtk.Label(xalign=0)
    estimate.set_line_wrap(True)
    estimate.set_margin_start(12)
    estimate.set_margin_end(12)
    dialog.get_content_area().pack_end(estimate, False, False, 6)
    calibration = nst_estimates.load_calibration(calibration_path)
    layer = drawables[0] if len(drawables) == 1 else None
    ok, _x, _y, width, height = layer.mask_intersect() if layer else (False, 0, 0, 0, 0)

    def show_style(*_args) -> None:
        style = config.get_property("style-file")
        shown = load_thumbnail(style.get_path() if style else None, THUMBNAIL_PX)
        thumbnail.set_from_pixbuf(shown)
        thumbnail.set_visible(shown is not None and config.get_property("style-layer") is None)

    def file_chosen(*_args) -> None:  # the painting chosen last is the one used
        if config.get_property("style-file") is not None:
            config.set_property("style-layer", None)
        show_style()

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
        style_layer = config.get_property("style-layer")
        lines = [note, format_style_layer(painting_name(style_layer)) if style_layer else "",
                 format_area(width, height, layer.get_width(), layer.get_height()),
                 format_estimate(seconds, measured.get("device"),
                                 measured.get("measured_by") == "installer"),
                 format_refinement(extra)]
        estimate.set_text("\n".join(line for line in lines if line))

    config.connect("notify", update)
    config.connect("notify::style-file", file_chosen)
    config.connect("notify::style-layer", show_style)
    update()
    show_style()
    estimate.show()
    accepted = dialog.run()
    dialog.destroy()
    return accepted


def recent_strip(config, recent: list[str]) -> Gtk.Widget:
    """The paintings used last as small buttons: a click makes one the style image."""
    strip = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=4,
                    valign=Gtk.Align.CENTER)
    if not recent:
        return strip
    strip.pack_start(Gtk.Label(label=_("Recent paintings:"), xalign=0), False, False, 0)
    buttons = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=2)
    for path in recent:
        shown = load_thumbnail(path, RECENT_PX)
        if shown is None:
            continue
        button = Gtk.Button(image=Gtk.Image.new_from_pixbuf(shown), relief=Gtk.ReliefStyle.NONE)
        button.set_tooltip_text(os.path.basename(path))
        button.connect("clicked", lambda _button, chosen=path: config.set_property(
            "style-file", Gio.File.new_for_path(chosen)))
        buttons.pack_start(button, False, False, 0)
    strip.pack_start(buttons, False, False, 0)
    return strip


def offer_images(chooser) -> None:
    """The style chooser's dialog lists the images the engine reads first and shows the
    painting under the pointer. GIMP's file chooser holds a ``Gtk.FileChooserButton``
    (GIMP 3.0 and 3.2); should a later GIMP hold something else, the chooser stays as
    GIMP made it."""
    button = next((child for child in chooser.get_children()
                   if isinstance(child, Gtk.FileChooserButton)), None)
    if button is not None:
        add_image_filters(button)
