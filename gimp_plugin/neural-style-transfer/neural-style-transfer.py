#!/usr/bin/env python3
"""Filters ▸ Artistic ▸ Neural Style Transfer… — paints the active layer in a painting's style.

The pixels go to the local engine (nst_engine, in its own Python with torch)
as float32 arrays; the result comes back as a new layer above the source, in
one undo step. An interactive run opens the session window: the picture forms
there (Keep this result, Cancel), other paintings and strengths can be tried
from it, and the results the photographer chooses are added as layers.

This file registers the procedure and holds the run (``stylize_layer``); its rooms
sit beside it, each importing only those below it:

* with GIMP or GTK: ``nst_dialog.py`` (the dialog and its estimate),
  ``nst_run_window.py`` (the session window, a view with no GIMP call) and
  ``nst_layers.py`` (the layer's pixels in, the result layer out, recipes back);
* standard library only, tested outside GIMP: ``nst_session.py`` (the takes of a
  session), ``nst_run_state.py`` (what the window shows of a run),
  ``nst_arguments.py`` (the arguments, from the shared knobs), ``nst_recipe.py``
  (a result's recipe), ``nst_recent.py`` (the paintings used last),
  ``nst_estimates.py`` (time estimates), ``nst_client.py`` (one run through the
  engine), ``nst_config.py`` (where the engine runs) and ``nst_messages.py`` (what
  the photographer reads, through ``_()``).
"""

import os
import signal
import sys
import time
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, Gio, GLib, GObject  # noqa: E402

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, PLUGIN_DIR)
import nst_arguments  # noqa: E402
import nst_client  # noqa: E402
import nst_config  # noqa: E402
import nst_estimates  # noqa: E402
import nst_layers  # noqa: E402
import nst_recent  # noqa: E402
import nst_session  # noqa: E402
from nst_client import Cancelled  # noqa: E402
from nst_layers import Failure  # noqa: E402
from nst_messages import ClientError, _, user_message  # noqa: E402
from nst_run_state import RunState  # noqa: E402

PROC_NAME = "python-fu-neural-style-transfer"
HELP_DOMAIN = "nst-gimp"  # help/en/gimp-help.xml maps PROC_NAME to the plug-in's page
CALIBRATION = os.path.join(PLUGIN_DIR, "nst-calibration.json")
RECENT = os.path.join(PLUGIN_DIR, "nst-recent.json")  # the paintings the dialog offers
PREVIEW_INTERVAL_S = 2.0  # a fresh picture at least this often, and at every scale's end


def chosen_style(style_file, style_layer):
    """The painting as the engine gets it (``nst_client.Style``) and as the result's
    recipe names it (``nst_recipe.Painting``): the layer of an open image when one is
    chosen, else the file."""
    if style_layer is not None:
        style = nst_layers.read_style(style_layer)
        return style, nst_layers.painting_of(style, layer=style_layer)
    if style_file is None or style_file.get_path() is None:
        raise Failure(_("Choose a style image (a painting) first."))
    style_path = style_file.get_path()
    if not os.path.isfile(style_path):
        raise Failure(_("The style image does not exist: {path}").format(path=style_path))
    style = nst_client.Style.from_file(style_path)
    return style, nst_layers.painting_of(style, path=style_path)


def stylize_layer(image, drawables, style, painting, settings, interactive):
    """The whole run: read the layer, call the engine, add the result as a new layer —
    or, interactive, the session window, where the photographer adds the results
    chosen. Cancelled when nothing was added."""
    ok_at = time.monotonic()
    drawable = nst_layers.check_target(image, drawables)
    region = nst_layers.selected_region(drawable)
    x, y, width, height = region
    command, host = nst_config.engine_command(PLUGIN_DIR)
    fmt, channels = nst_layers.pixel_format(drawable)
    shape = (height, width, channels)
    Gimp.progress_init(_("Neural style transfer: reading the layer"))
    try:
        # Started first: the engine (or its connection to the warm one) gets ready
        # while GIMP reads the layer, and the fork is of a process without it.
        first_run = nst_client.EngineRun(command, None, host)
        try:
            pixels = nst_layers.read_pixels(drawable, region, fmt)
        except BaseException:
            first_run.abandon()
            raise
        nst_estimates.timing("layer read", ok_at)
        calibration = nst_estimates.load_calibration(CALIBRATION)

        def add(take):
            data = take.result["payload"]
            if tuple(take.result["shape"]) != shape:
                raise ClientError("internal", _(
                    "The engine returned an array of shape {shape}, expected {expected}."
                ).format(shape=tuple(take.result["shape"]), expected=shape))
            Gimp.progress_set_text(_("Neural style transfer: adding the layer"))
            nst_layers.add_result_layer(image, drawable, take.painting, region, fmt, data,
                                        take.settings, take.started)
            if take.painting.file:
                nst_recent.remember_painting(RECENT, take.painting.file)
            nst_estimates.timing("layer added", ok_at)

        if not interactive:
            speed = nst_estimates.SpeedLog()
            first_run.send_request(settings, pixels, shape, style)
            del pixels
            result = run_with_progress_bar(first_run, speed, calibration)
            remember_speed(speed)
            take = nst_session.Take(1, settings, style, painting, result=result,
                                    started=first_run.started)
            add(take)
            return
        session = nst_session.Session()
        session.ask(settings, style, painting)
        prestarted = [first_run]

        def paint(take):
            run = prestarted.pop() if prestarted else nst_client.EngineRun(command, None, host)
            start = take.finishes
            run.send_request(take.settings, pixels, shape, take.style, PREVIEW_INTERVAL_S,
                             start.result["payload"] if start else None,
                             start.worked_to if start else 0)
            return run

        def take_ended(take, speed):
            remember_speed(speed)

        def style_from_file(path):
            try:
                return chosen_style(Gio.File.new_for_path(path), None)
            except Failure as failure:
                raise ClientError("bad_input", str(failure)) from None

        from nst_run_window import SessionWindow

        window = SessionWindow(
            session, paint, add, style_from_file, take_ended,
            show_step_in_gimp, nst_layers.photo_thumbnail(drawable, region),
            painting.file, PROC_NAME, calibration, first_run.where, ok_at)
        if not window.run():
            raise Cancelled()
    finally:
        Gimp.progress_end()


def remember_speed(speed) -> None:
    """A run's speed, measured, for the next estimates (``nst_estimates``)."""
    speed.report()
    measured = speed.calibration()
    if measured:
        nst_estimates.save_calibration(CALIBRATION, measured)


def show_step_in_gimp(state):
    """GIMP's progress bar beside the session window's (``nst_run_state.RunState``)."""
    Gimp.progress_update(state.fraction)
    Gimp.progress_set_text(state.progress_text)


def run_with_progress_bar(run, speed, calibration):
    """A run without a window (scripts, batches): GIMP's progress bar shows the step
    and the time left, worked out as the session window does (``RunState``)."""
    Gimp.progress_set_text(_("Neural style transfer: starting the engine"))
    state = RunState(run.where, calibration)

    def on_event(event):
        speed.on_event(event)
        state.on_event(event)
        if event["event"] == "queued":
            Gimp.progress_set_text(state.progress_text)
        if event["event"] != "progress":
            return
        p = event["progress"]
        Gimp.progress_update(p.fraction)
        Gimp.progress_set_text(_("Neural style transfer: step {step} of {total}, time left: "
                                 "{remaining}").format(step=p.step, total=p.total,
                                                       remaining=state.remaining))

    run.on_event = on_event
    # SIGUSR1 is "Keep this result" for runs without a window (docs/protocol.md)
    signal.signal(signal.SIGUSR1, lambda *_args: run.send("finish"))
    return run.read_to_end()


def declare_argument(procedure, argument):
    """Declares a knob's argument (``nst_arguments.Argument``) with GIMP."""
    a, flags = argument, GObject.ParamFlags.READWRITE
    if a.choices:
        choice = Gimp.Choice.new()
        for index, (nick, label) in enumerate(a.choices):
            choice.add(nick, index, label, "")
        procedure.add_choice_argument(a.name, a.label, a.help, choice, a.default, flags)
    elif a.kind is bool:
        procedure.add_boolean_argument(a.name, a.label, a.help, a.default, flags)
    elif a.kind is int:
        procedure.add_int_argument(a.name, a.label, a.help, a.minimum, a.maximum, a.default,
                                   flags)
    else:
        procedure.add_double_argument(a.name, a.label, a.help, a.minimum, a.maximum,
                                      a.default, flags)


class NeuralStyleTransfer(Gimp.PlugIn):
    def do_set_i18n(self, name):
        return False  # the plug-in translates its own strings (nst_messages._)

    def do_query_procedures(self):
        # The dialog's Help button opens the plug-in's own page, not GIMP's manual.
        self.set_help_domain(HELP_DOMAIN, Gio.File.new_for_path(os.path.join(PLUGIN_DIR,
                                                                              "help")))
        return [PROC_NAME]

    def do_create_procedure(self, name):
        procedure = Gimp.ImageProcedure.new(
            self, name, Gimp.PDBProcType.PLUGIN, self.run, None)
        procedure.set_image_types("RGB*, GRAY*")
        procedure.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        procedure.set_menu_label(_("_Neural Style Transfer..."))
        procedure.add_menu_path("<Image>/Filters/Artistic")
        procedure.set_documentation(
            _("Paint the layer in the style of a painting"),
            _("Repaints the selected layer (or the selected part of it) with the brush "
              "strokes, textures and colours of a style image, using neural style transfer "
              "(Gatys et al.) on this computer. The result is added as a new layer."),
            name)
        procedure.set_attribution("nst-gimp contributors", "nst-gimp contributors", "2026")
        flags = GObject.ParamFlags.READWRITE
        procedure.add_file_argument(
            "style-file", _("Style _image"), _("The painting whose style is applied"),
            Gimp.FileChooserAction.OPEN, False, None, flags)
        for argument in nst_arguments.arguments():
            declare_argument(procedure, argument)
        # Last, so that scripts written before it keep working.
        procedure.add_layer_argument(
            "style-layer", _("…or a la_yer of an open image"),
            _("A layer of any open image to take the style from instead of the file "
              "(none: the file)"), True, flags)
        return procedure

    def run(self, procedure, run_mode, image, drawables, config, data):
        # Repeat Last (WITH_LAST_VALS) skips the dialog, not the session window: a person
        # started it and may want to Keep or Cancel.
        interactive = run_mode != Gimp.RunMode.NONINTERACTIVE
        try:
            Gegl.init(None)
            if run_mode == Gimp.RunMode.INTERACTIVE:
                from nst_dialog import show_dialog

                # On a result layer the dialog opens with its recipe, to paint its
                # photo again ("the same, a bit stronger").
                recipe = nst_layers.recipe_of(drawables[0]) if len(drawables) == 1 else None
                note = ""
                if recipe is not None:
                    drawables, note = nst_layers.from_recipe(image, drawables[0], recipe,
                                                             config)
                if not show_dialog(procedure, config, drawables, PROC_NAME, CALIBRATION,
                                   nst_config.available_devices(PLUGIN_DIR), note,
                                   nst_recent.recent_paintings(RECENT)):
                    return procedure.new_return_values(Gimp.PDBStatusType.CANCEL,
                                                       GLib.Error())
            settings = nst_arguments.settings_from_config(config.get_property)
            style, painting = chosen_style(config.get_property("style-file"),
                                           config.get_property("style-layer"))
            stylize_layer(image, drawables, style, painting, settings, interactive)
        except Cancelled:  # the session window closed with nothing added
            return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        except ClientError as error:
            return self.failed(procedure, user_message(error))
        except Failure as failure:
            return self.failed(procedure, str(failure))
        except Exception as exc:  # never a traceback for the photographer
            traceback.print_exc()
            return self.failed(procedure, _("The plug-in failed unexpectedly ({error}); the "
                                            "image is unchanged. Please report this.").format(
                                                error=exc))
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())

    @staticmethod
    def failed(procedure, message):
        return procedure.new_return_values(
            Gimp.PDBStatusType.EXECUTION_ERROR,
            GLib.Error.new_literal(Gimp.PlugIn.error_quark(), message, 0))


Gimp.main(NeuralStyleTransfer.__gtype__, sys.argv)
