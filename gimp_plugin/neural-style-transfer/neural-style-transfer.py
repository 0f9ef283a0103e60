#!/usr/bin/env python3
"""Filters ▸ Artistic ▸ Neural Style Transfer… — paints the active layer in a painting's style.

The pixels go to the local engine (nst_engine, in its own Python with torch)
as float32 arrays; the result comes back as a new layer above the source, in
one undo step. All of the plug-in's GIMP calls are in this file.
"""

import os
import shutil
import sys
import time

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nst_client  # noqa: E402

PROC_NAME = "python-fu-neural-style-transfer"
DEVICES = (
    ("auto", "Automatic (GPU if available)"),
    ("cuda", "NVIDIA GPU (CUDA)"),
    ("mps", "Apple GPU (Metal)"),
    ("cpu", "Processor (CPU)"),
)


class Failure(Exception):
    """Stops the run with a message for the user; the image is left unchanged."""


def pixel_format(drawable):
    """A float format of the drawable's own model, so no precision is lost."""
    gray = drawable.is_gray()
    base = "Y'" if gray else "R'G'B'"
    alpha = drawable.has_alpha()
    return f"{base}{'A' if alpha else ''} float", (1 if gray else 3) + (1 if alpha else 0)


class Timings:
    """Wall-clock marks of a run, printed to stderr when NST_PLUGIN_TIMINGS is set."""

    def __init__(self):
        self.marks = [("start", time.monotonic())]

    def mark(self, name):
        self.marks.append((name, time.monotonic()))

    def report(self):
        if os.environ.get("NST_PLUGIN_TIMINGS"):
            start = self.marks[0][1]
            text = ", ".join(f"{name} {at - start:.2f} s" for name, at in self.marks[1:])
            print(f"nst-timings: {text}", file=sys.stderr, flush=True)


def check_target(image, drawables):
    if len(drawables) != 1:
        raise Failure("Select exactly one layer to stylise.")
    drawable = drawables[0]
    if not drawable.is_layer() or drawable.is_group():
        raise Failure("Select a pixel layer (not a mask, channel or layer group).")
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        raise Failure("Indexed images are not supported: use Image ▸ Mode ▸ RGB first.")
    return drawable


def stylize_layer(image, drawables, style_file, settings):
    """The whole run: read the layer, call the engine, add the result as a new layer."""
    drawable = check_target(image, drawables)
    if style_file is None or style_file.get_path() is None:
        raise Failure("Choose a style image (a painting) first.")
    style_path = style_file.get_path()
    if not os.path.isfile(style_path):
        raise Failure(f"The style image does not exist: {style_path}")
    intersects, x, y, width, height = drawable.mask_intersect()
    if not intersects:
        raise Failure("The selection does not touch this layer.")
    try:
        engine = nst_client.find_engine(os.path.dirname(os.path.abspath(__file__)))
    except nst_client.ClientError as error:
        raise Failure(nst_client.user_message(error)) from None

    clock = Timings()
    fmt, channels = pixel_format(drawable)
    rect = Gegl.Rectangle.new(x, y, width, height)
    # Behind flatpak-spawn the engine runs on the host: use a folder it can see.
    shared = os.path.join(GLib.get_user_cache_dir(), "nst-gimp") if len(engine) > 1 else None
    workdir = nst_client.make_workdir(shared)
    try:
        Gimp.progress_init("Neural style transfer: reading the layer")
        pixels = drawable.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP)
        content = os.path.join(workdir, "content.npy")
        nst_client.write_npy(content, bytes(pixels), (height, width, channels))
        del pixels
        request = nst_client.write_request(workdir, "content.npy", style_path, settings)

        Gimp.progress_set_text("Neural style transfer: starting the engine")

        clock.mark("request written")

        def on_progress(p):
            if p.step == 1:
                clock.mark("first step")
            Gimp.progress_update(p.fraction)
            Gimp.progress_set_text(
                f"Neural style transfer: step {p.step} of {p.total}, "
                f"about {nst_client.format_eta(p.eta_s)} left"
            )

        result_path = nst_client.run_engine(engine, request, on_progress)
        clock.mark("engine result")
        data, shape = nst_client.read_npy(result_path)
        if shape != (height, width, channels):
            raise Failure(f"The engine returned an array of shape {shape}, "
                          f"expected {(height, width, channels)}.")
        Gimp.progress_set_text("Neural style transfer: adding the layer")
        add_result_layer(image, drawable, style_path, (x, y, width, height), fmt, data)
        Gimp.progress_end()
        clock.mark("layer added")
        clock.report()
    except nst_client.ClientError as error:
        raise Failure(nst_client.user_message(error, engine[-1])) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def add_result_layer(image, source, style_path, region, fmt, data):
    """One undo group: the new layer above the source, its pixels, and the selection mask."""
    x, y, width, height = region
    name = os.path.splitext(os.path.basename(style_path))[0] or "Stylised"
    _, offset_x, offset_y = source.get_offsets()
    layer_type = source.type_with_alpha() if source.has_alpha() else source.type()
    image.undo_group_start()
    try:
        layer = Gimp.Layer.new(image, name, width, height, layer_type, 100.0,
                               Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, source.get_parent(), image.get_item_position(source))
        layer.set_offsets(offset_x + x, offset_y + y)
        buffer = layer.get_buffer()
        buffer.set(Gegl.Rectangle.new(0, 0, width, height), fmt, data)
        buffer.flush()
        layer.update(0, 0, width, height)
        if not Gimp.Selection.is_empty(image):
            layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
    finally:
        image.undo_group_end()
    Gimp.displays_flush()


def show_dialog(procedure, config):
    gi.require_version("GimpUi", "3.0")
    from gi.repository import GimpUi

    GimpUi.init(PROC_NAME)
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "Neural Style Transfer")
    dialog.fill(None)
    accepted = dialog.run()
    dialog.destroy()
    return accepted


class NeuralStyleTransfer(Gimp.PlugIn):
    def do_set_i18n(self, name):
        return False  # no translations shipped yet

    def do_query_procedures(self):
        return [PROC_NAME]

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(
            self, name, Gimp.PDBProcType.PLUGIN, self.run, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_menu_label("_Neural Style Transfer...")
        procedure.add_menu_path("<Image>/Filters/Artistic")
        procedure.set_documentation(
            "Paint the layer in the style of a painting",
            "Repaints the selected layer (or the selected part of it) with the brush "
            "strokes, textures and colours of a style image, using neural style transfer "
            "(Gatys et al.) on this computer. The result is added as a new layer.",
            name)
        procedure.set_attribution("nst-gimp contributors", "nst-gimp contributors", "2026")
        flags = GObject.ParamFlags.READWRITE
        procedure.add_file_argument(
            "style-file", "Style _image", "The painting whose style is applied",
            Gimp.FileChooserAction.OPEN, False, None, flags)
        procedure.add_double_argument(
            "style-strength", "Style stre_ngth",
            "0 keeps the photo nearly unchanged, 1 lets the painting take over",
            0.0, 1.0, 0.5, flags)
        procedure.add_int_argument(
            "iterations", "It_erations", "More steps give a cleaner result but take longer",
            1, 5000, 200, flags)
        procedure.add_int_argument(
            "max-size", "_Max size",
            "Longest side (pixels) at which the style is worked out; larger shows finer "
            "detail but needs more time and memory", 64, 16384, 1024, flags)
        procedure.add_boolean_argument(
            "preserve-colors", "_Keep the photo's colours",
            "Take only the painting's textures, not its colours", False, flags)
        procedure.add_int_argument(
            "seed", "See_d", "The same seed gives the same result again", 0, 2147483647, 0,
            flags)
        choice = Gimp.Choice.new()
        for index, (nick, label) in enumerate(DEVICES):
            choice.add(nick, index, label, "")
        procedure.add_choice_argument(
            "device", "De_vice", "Where to compute", choice, "auto", flags)
        return procedure

    def run(self, procedure, run_mode, image, drawables, config, data):
        if run_mode == Gimp.RunMode.INTERACTIVE and not show_dialog(procedure, config):
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        Gegl.init(None)
        settings = nst_client.settings_from_arguments(
            config.get_property("style-strength"), config.get_property("iterations"),
            config.get_property("max-size"), config.get_property("preserve-colors"),
            config.get_property("seed"), config.get_property("device"))
        try:
            stylize_layer(image, drawables, config.get_property("style-file"), settings)
        except Failure as failure:
            return procedure.new_return_values(
                Gimp.PDBStatusType.EXECUTION_ERROR,
                GLib.Error.new_literal(Gimp.PlugIn.error_quark(), str(failure), 0))
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


Gimp.main(NeuralStyleTransfer.__gtype__, sys.argv)
