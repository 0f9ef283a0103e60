#!/usr/bin/env python3
"""Filters ▸ Artistic ▸ Neural Style Transfer… — paints the active layer in a painting's style.

The pixels go to the local engine (nst_engine, in its own Python with torch)
as float32 arrays; the result comes back as a new layer above the source, in
one undo step. An interactive run shows the picture forming in a window of its
own, with Keep this result and Cancel. All of the plug-in's GIMP calls are in
this file; the protocol is in nst_client.py.
"""

import os
import signal
import sys
import time
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: E402

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, PLUGIN_DIR)
import nst_client  # noqa: E402

PROC_NAME = "python-fu-neural-style-transfer"
CALIBRATION = os.path.join(PLUGIN_DIR, "nst-calibration.json")
PREVIEW_INTERVAL_S = 2.0  # a fresh picture at least this often, and at every scale's end
# How the dialog names the knobs it shows (nst_client.ARGUMENT_KNOBS) and their choices;
# everything else about an argument is the knob's (nst_contract.knobs).
LABELS = {
    "style_strength": "Style stre_ngth",
    "iterations": "It_erations",
    "max_size": "_Max size (0 = automatic)",
    "preserve_colors": "_Keep the photo's colours",
    "seed": "See_d",
    "detail": "De_tail",
    "device": "De_vice",
}
CHOICE_LABELS = {
    "detail": {"auto": "Automatic (full size on a GPU)",
               "working": "Working size, enlarged (fast)",
               "full": "Refine at full size (sharp at 100 %)"},
    "device": {"auto": "Automatic (GPU if available)", "cuda": "NVIDIA GPU (CUDA)",
               "mps": "Apple GPU (Metal)", "cpu": "Processor (CPU)"},
}


class Failure(Exception):
    """Stops the run with a message for the user; the image is left unchanged."""


class Cancelled(Exception):
    """The photographer cancelled in the run window; nothing is added."""


def pixel_format(drawable):
    """A float format of the drawable's own model, so no precision is lost."""
    gray = drawable.is_gray()
    base = "Y'" if gray else "R'G'B'"
    alpha = drawable.has_alpha()
    return f"{base}{'A' if alpha else ''} float", (1 if gray else 3) + (1 if alpha else 0)


def check_target(image, drawables):
    if len(drawables) != 1:
        raise Failure("Select exactly one layer to stylise.")
    drawable = drawables[0]
    if not drawable.is_layer() or drawable.is_group():
        raise Failure("Select a pixel layer (not a mask, channel or layer group).")
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        raise Failure("Indexed images are not supported: use Image ▸ Mode ▸ RGB first.")
    return drawable


def stylize_layer(image, drawables, style_file, settings, interactive):
    """The whole run: read the layer, call the engine, add the result as a new layer."""
    ok_at = time.monotonic()
    drawable = check_target(image, drawables)
    if style_file is None or style_file.get_path() is None:
        raise Failure("Choose a style image (a painting) first.")
    style_path = style_file.get_path()
    if not os.path.isfile(style_path):
        raise Failure(f"The style image does not exist: {style_path}")
    intersects, x, y, width, height = drawable.mask_intersect()
    if not intersects:
        raise Failure("The selection does not touch this layer.")
    command, where = nst_client.engine_command(PLUGIN_DIR)
    fmt, channels = pixel_format(drawable)
    Gimp.progress_init("Neural style transfer: reading the layer")
    try:
        speed = nst_client.SpeedLog()
        # Started first: the engine (or its connection to the warm one) gets ready
        # while GIMP reads the layer, and the fork is of a process without it.
        run = nst_client.EngineRun(command, None, where)
        try:
            rect = Gegl.Rectangle.new(x, y, width, height)
            pixels = bytes(drawable.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP))
        except BaseException:
            run.abandon()
            raise
        timing("layer read", ok_at)
        run.send_request(settings, pixels, (height, width, channels), style_path,
                         PREVIEW_INTERVAL_S if interactive else 0.0)
        del pixels
        if interactive:
            result = RunWindow(run, speed, os.path.basename(style_path), where, ok_at).run()
        else:
            result = run_with_progress_bar(run, speed)
        speed.report()
        calibration = speed.calibration()
        if calibration:
            nst_client.save_calibration(CALIBRATION, calibration)
        data, shape = result["payload"], tuple(result["shape"])
        if shape != (height, width, channels):
            raise Failure(f"The engine returned an array of shape {shape}, "
                          f"expected {(height, width, channels)}.")
        Gimp.progress_set_text("Neural style transfer: adding the layer")
        add_result_layer(image, drawable, style_path, (x, y, width, height), fmt, data)
        timing("layer added", ok_at)
    finally:
        Gimp.progress_end()


def timing(what, ok_at):
    """With NST_PLUGIN_TIMINGS set: when ``what`` happened, for the benchmarks."""
    if os.environ.get("NST_PLUGIN_TIMINGS"):
        print(f"nst-timings: {what} {time.monotonic() - ok_at:.2f} s after OK",
              file=sys.stderr, flush=True)


def run_with_progress_bar(run, speed):
    """A run without a window (scripts, batches): GIMP's progress bar shows the step."""
    Gimp.progress_set_text("Neural style transfer: starting the engine")

    def on_event(event):
        speed.on_event(event)
        if event["event"] != "progress":
            return
        p = event["progress"]
        Gimp.progress_update(p.fraction)
        Gimp.progress_set_text(
            f"Neural style transfer: step {p.step} of {p.total}, "
            f"about {nst_client.format_eta(p.eta_s)} left")

    run.on_event = on_event
    # SIGUSR1 is "Keep this result" for runs without a window (docs/protocol.md)
    signal.signal(signal.SIGUSR1, lambda *_: run.send("finish"))
    return run.read_to_end()


class RunWindow:
    """The picture forming, the step, times and progress, Keep this result and Cancel.

    The plug-in's own window: GIMP stays usable while it is open. It reads the
    engine's events from GLib's main loop; closing it cancels the run.
    """

    def __init__(self, run, speed, style_name, where, ok_at):
        gi.require_version("Gtk", "3.0")
        gi.require_version("GdkPixbuf", "2.0")
        from gi.repository import GdkPixbuf, Gtk

        self.Gtk, self.GdkPixbuf = Gtk, GdkPixbuf
        self.speed = speed
        self.started = ok_at
        self.pictures = 0
        self.last = None  # the last progress
        self.cancelled = False
        self.where = where
        self.run_ = run
        run.on_event = self.on_event

        window = Gtk.Window(title=f"Neural Style Transfer — {style_name}")
        window.set_default_size(1000, 700)
        window.connect("delete-event", self.on_close)
        self.window = window
        outer = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=12)
        outer.set_border_width(12)
        window.add(outer)
        frame = Gtk.Frame()
        self.picture = Gtk.Image()
        self.picture.set_size_request(640, 640)
        self.waiting = Gtk.Label(label="Starting the engine…")
        stack = Gtk.Overlay()
        stack.add(self.picture)
        stack.add_overlay(self.waiting)
        frame.add(stack)
        outer.pack_start(frame, True, True, 0)
        side = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
        side.set_size_request(260, -1)
        outer.pack_start(side, False, False, 0)
        self.labels = {}
        for key, title in (("step", "Step"), ("scale", "Scale"), ("elapsed", "Elapsed"),
                           ("remaining", "Remaining")):
            row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
            name = Gtk.Label(label=title, xalign=0)
            value = Gtk.Label(label="–", xalign=1)
            row.pack_start(name, True, True, 0)
            row.pack_start(value, False, False, 0)
            side.pack_start(row, False, False, 0)
            self.labels[key] = value
        self.bar = Gtk.ProgressBar()
        side.pack_start(self.bar, False, False, 6)
        self.status = Gtk.Label(label="", xalign=0)
        self.status.set_line_wrap(True)
        side.pack_start(self.status, False, False, 0)
        side.pack_start(Gtk.Box(), True, True, 0)
        self.keep = Gtk.Button(label="Keep this result")
        self.keep.set_tooltip_text("Stop now and add the picture as it is as a new layer")
        self.keep.set_sensitive(False)
        self.keep.connect("clicked", self.on_keep)
        self.cancel = Gtk.Button(label="Cancel")
        self.cancel.set_tooltip_text("Stop and add nothing")
        self.cancel.connect("clicked", self.on_cancel)
        side.pack_start(self.keep, False, False, 0)
        side.pack_start(self.cancel, False, False, 0)
        window.show_all()

    def run(self):
        """Runs until the engine ends; returns its ``result`` event, or raises."""
        GLib.io_add_watch(self.run_.stdout_fd, GLib.PRIORITY_DEFAULT,
                          GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR,
                          self.on_output)
        GLib.timeout_add(500, self.on_tick)
        try:
            self.Gtk.main()
        finally:
            if self.run_.process.poll() is None and self.run_.result is None:
                self.run_.stop()
            self.window.destroy()
        if self.cancelled and self.run_.result is None:
            try:
                self.run_.outcome()  # reaps the engine; its "cancelled" is expected
            except nst_client.ClientError:
                pass
            raise Cancelled()
        return self.run_.outcome()

    def on_output(self, fd, condition):
        try:
            alive = self.run_.read_available()
        except OSError:
            alive = False
        if not alive:
            self.Gtk.main_quit()
        return alive

    def on_event(self, event):
        self.speed.on_event(event)
        kind = event["event"]
        if kind == "started":
            self.waiting.set_text("Working out the style…")
            device = {"cpu": "processor", "cuda": "GPU", "mps": "GPU"}.get(
                event.get("device"), "GPU")
            arithmetic = " (fast bf16 arithmetic)" if event.get("precision") == "bf16" else ""
            self.status.set_text(
                f"{event.get('width')}×{event.get('height')} px, worked out at up to "
                f"{event.get('max_size')} px on the {device} of {self.where}{arithmetic}")
        elif kind == "queued":
            self.waiting.set_text("Waiting for the engine: another picture is being painted")
        elif kind == "progress":
            p = event["progress"]
            self.last = p
            self.keep.set_sensitive(not self.cancelled)
            self.labels["step"].set_text(f"{p.step} of {p.total}")
            if p.detail:
                self.labels["scale"].set_text(f"full size, tile {p.tile} of {p.tiles}")
            else:
                tiles = f", tile {p.tile} of {p.tiles}" if p.tiles > 1 else ""
                self.labels["scale"].set_text(
                    f"{p.scale} of {p.scales} ({event.get('width')}×{event.get('height')}"
                    f"{tiles})")
            self.labels["remaining"].set_text(f"at most {nst_client.format_eta(p.eta_s)}")
            self.bar.set_fraction(min(1.0, p.fraction))
            Gimp.progress_update(p.fraction)
            Gimp.progress_set_text(f"Neural style transfer: step {p.step} of {p.total}")
        elif kind == "preview":
            self.show_preview(event["payload"], event.get("detail", False))
        elif kind == "result":
            self.status.set_text("Adding the layer…")

    def show_preview(self, png, at_100_percent=False):
        """Fitted to the window; the refinement's tile at 100 %, its middle, where the
        detail it adds shows."""
        try:
            loader = self.GdkPixbuf.PixbufLoader.new_with_type("png")
            loader.write(png)
            loader.close()
            pixbuf = loader.get_pixbuf()
            allocation = self.picture.get_allocation()
            width, height = pixbuf.get_width(), pixbuf.get_height()
            if at_100_percent:
                w, h = min(width, allocation.width), min(height, allocation.height)
                pixbuf = pixbuf.new_subpixbuf((width - w) // 2, (height - h) // 2, w, h)
            else:
                side = max(64, min(allocation.width, allocation.height))
                scale = side / max(width, height)
                pixbuf = pixbuf.scale_simple(max(1, round(width * scale)),
                                             max(1, round(height * scale)),
                                             self.GdkPixbuf.InterpType.BILINEAR)
        except (GLib.Error, TypeError, AttributeError):
            return  # a preview is a nicety: the next one will do
        self.picture.set_from_pixbuf(pixbuf)
        self.waiting.hide()
        self.pictures += 1
        if self.pictures == 1:
            timing("first picture shown", self.started)

    def on_tick(self):
        elapsed = time.monotonic() - self.started
        self.labels["elapsed"].set_text(nst_client.format_eta(elapsed))
        if self.run_.given_up():  # its output ends now: on_output ends the window
            self.status.set_text("The engine stopped answering.")
        return self.run_.process.poll() is None

    def on_keep(self, button):
        self.run_.send("finish")
        self.keep.set_sensitive(False)
        self.cancel.set_sensitive(False)
        self.status.set_text(
            "Keeping the picture as it was before the full-size pass…"
            if self.last is not None and self.last.detail
            else "Finishing: enlarging the picture to the layer's size…")

    def on_cancel(self, button):
        self.cancelled = True
        self.keep.set_sensitive(False)
        self.cancel.set_sensitive(False)
        self.status.set_text("Cancelling…")
        self.run_.send("cancel")

    def on_close(self, window, event):
        if not self.cancelled and self.run_.result is None:
            self.on_cancel(None)
        return True  # the window goes when the engine has stopped


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


def show_dialog(procedure, config, image, drawables):
    """The procedure's own dialog, with the run's estimated time under the options,
    updated whenever an option changes."""
    gi.require_version("GimpUi", "3.0")
    gi.require_version("Gtk", "3.0")
    from gi.repository import GimpUi, Gtk

    GimpUi.init(PROC_NAME)
    dialog = GimpUi.ProcedureDialog.new(procedure, config, "Neural Style Transfer")
    dialog.fill(None)
    estimate = Gtk.Label(xalign=0)
    estimate.set_line_wrap(True)
    estimate.set_margin_start(12)
    estimate.set_margin_end(12)
    dialog.get_content_area().pack_end(estimate, False, False, 6)
    calibration = nst_client.load_calibration(CALIBRATION)
    ok, _, _, width, height = drawables[0].mask_intersect() if len(drawables) == 1 else (
        False, 0, 0, 0, 0)

    def update(*_):
        if not ok:
            estimate.set_text("")
            return
        settings = nst_client.settings_from_config(config.get_property)
        try:
            seconds = nst_client.estimate_seconds(calibration, width, height, settings)
        except nst_client.ClientError as refused:  # the engine would refuse this run
            estimate.set_text(refused.message)
            return
        estimate.set_text(nst_client.format_estimate(
            seconds, calibration and calibration.get("device")))

    config.connect("notify", update)
    update()
    estimate.show()
    accepted = dialog.run()
    dialog.destroy()
    return accepted


def add_knob_argument(procedure, knob):
    """Declares the argument of engine knob ``knob`` with the knob's own default,
    range, choices and help text (``nst_contract.knobs``)."""
    meta = nst_client.KNOBS[knob]
    name, label = nst_client.argument_name(knob), LABELS[knob]
    default = nst_client.argument_default(knob)
    help_text = meta["help"][:1].upper() + meta["help"][1:]
    flags = GObject.ParamFlags.READWRITE
    if meta["choices"]:
        choice = Gimp.Choice.new()
        for index, nick in enumerate(meta["choices"]):
            choice.add(nick, index, CHOICE_LABELS[knob][nick], "")
        procedure.add_choice_argument(name, label, help_text, choice, default, flags)
    elif meta["kind"] is bool:
        procedure.add_boolean_argument(name, label, help_text, default, flags)
    elif meta["kind"] is int:
        procedure.add_int_argument(name, label, help_text, meta["min"], meta["max"], default,
                                   flags)
    else:
        procedure.add_double_argument(name, label, help_text, meta["min"], meta["max"],
                                      default, flags)


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
        for knob in nst_client.ARGUMENT_KNOBS:
            add_knob_argument(procedure, knob)
        return procedure

    def run(self, procedure, run_mode, image, drawables, config, data):
        interactive = run_mode == Gimp.RunMode.INTERACTIVE
        try:
            if interactive and not show_dialog(procedure, config, image, drawables):
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
            Gegl.init(None)
            settings = nst_client.settings_from_config(config.get_property)
            stylize_layer(image, drawables, config.get_property("style-file"), settings,
                          interactive)
        except Cancelled:
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        except nst_client.ClientError as error:
            return self.failed(procedure, nst_client.user_message(error))
        except Failure as failure:
            return self.failed(procedure, str(failure))
        except Exception as exc:  # never a traceback for the photographer
            traceback.print_exc()
            return self.failed(procedure, f"The plug-in failed unexpectedly ({exc}); the "
                               "image is unchanged. Please report this.")
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())

    @staticmethod
    def failed(procedure, message):
        return procedure.new_return_values(
            Gimp.PDBStatusType.EXECUTION_ERROR,
            GLib.Error.new_literal(Gimp.PlugIn.error_quark(), message, 0))


Gimp.main(NeuralStyleTransfer.__gtype__, sys.argv)
