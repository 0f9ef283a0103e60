"""The run window: the picture forming, the step, times and progress, *Keep this
result* and *Cancel*. A GTK view of ``nst_run_state.RunState``, kept over the image's
window (GimpUi); it changes nothing in GIMP: its progress bar is the caller's
``on_progress``."""

from __future__ import annotations

import time

import gi

gi.require_version("Gtk", "3.0")
gi.require_version("GdkPixbuf", "2.0")
gi.require_version("GimpUi", "3.0")
from gi.repository import GdkPixbuf, GimpUi, GLib, Gtk  # noqa: E402
from nst_client import Cancelled  # noqa: E402
from nst_estimates import timing  # noqa: E402
from nst_messages import ClientError, _  # noqa: E402
from nst_run_state import RunState  # noqa: E402

LOOK_MS = 500  # how often the window updates the elapsed time and looks for silence


class RunWindow:
    """The plug-in's own window: GIMP stays usable while it is open. It reads the
    engine's events from GLib's main loop; closing it cancels the run."""

    def __init__(self, run, speed, style_name: str, started: float, on_progress,
                 plugin_name: str, calibration: dict | None = None) -> None:
        GimpUi.init(plugin_name)  # once per process: the dialog may have done it
        self.speed = speed
        self.started = started
        self.on_progress = on_progress  # called with the state after each step
        self.pictures = 0
        self.state = RunState(run.where, calibration)
        self.engine_run = run
        run.on_event = self.on_event

        window = Gtk.Window(title=_("Neural Style Transfer — {style}").format(
            style=style_name))
        window.set_default_size(1000, 700)
        window.connect("delete-event", self.on_close)
        # Over the image's window, not lost behind it when GIMP is clicked.
        GimpUi.window_set_transient(window)
        self.window = window
        outer = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=12)
        outer.set_border_width(12)
        window.add(outer)
        frame = Gtk.Frame()
        self.picture = Gtk.Image()
        self.picture.set_size_request(640, 640)
        self.waiting = Gtk.Label(label=self.state.waiting)
        stack = Gtk.Overlay()
        stack.add(self.picture)
        stack.add_overlay(self.waiting)
        frame.add(stack)
        outer.pack_start(frame, True, True, 0)
        side = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
        side.set_size_request(260, -1)
        outer.pack_start(side, False, False, 0)
        self.labels = {}
        for key, title in (("step", _("Step")), ("scale", _("Scale")),
                           ("elapsed", _("Elapsed")), ("remaining", _("Remaining"))):
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
        self.keep = Gtk.Button(label=_("Keep this result"))
        self.keep.set_tooltip_text(_("Stop now and add the picture as it is as a new layer"))
        self.keep.connect("clicked", self.on_keep)
        self.cancel = Gtk.Button(label=_("Cancel"))
        self.cancel.set_tooltip_text(_("Stop and add nothing"))
        self.cancel.connect("clicked", self.on_cancel)
        side.pack_start(self.keep, False, False, 0)
        side.pack_start(self.cancel, False, False, 0)
        window.show_all()
        self.draw()

    def draw(self) -> None:
        """Shows the state: texts, the bar and which buttons can be pressed."""
        state = self.state
        if state.waiting is None:
            self.waiting.hide()
        else:
            self.waiting.set_text(state.waiting)
        self.status.set_text(state.status)
        for key in self.labels:
            self.labels[key].set_text(getattr(state, key))
        self.bar.set_fraction(state.fraction)
        self.keep.set_sensitive(state.keep_enabled)
        self.cancel.set_sensitive(state.cancel_enabled)

    def run(self) -> dict:
        """Runs until the engine ends; returns its ``result`` event, or raises."""
        engine_run = self.engine_run
        GLib.io_add_watch(engine_run.stdout_fd, GLib.PRIORITY_DEFAULT,
                          GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR,
                          self.on_output)
        GLib.timeout_add(LOOK_MS, self.on_tick)
        try:
            Gtk.main()
        finally:
            if engine_run.process.poll() is None and engine_run.result is None:
                engine_run.stop()
            self.window.destroy()
        if self.state.cancelled and engine_run.result is None:
            try:
                engine_run.outcome()  # reaps the engine; its "cancelled" is expected
            except ClientError:
                pass
            raise Cancelled()
        return engine_run.outcome()

    def on_output(self, fd, condition) -> bool:
        try:
            alive = self.engine_run.read_available()
        except OSError:
            alive = False
        if not alive:
            Gtk.main_quit()
        return alive

    def on_event(self, event: dict) -> None:
        self.speed.on_event(event)
        self.state.on_event(event)
        if event["event"] == "preview":
            self.show_preview(event["payload"], event.get("detail", False))
        self.draw()
        if event["event"] in ("progress", "queued"):  # GIMP's status bar says it too
            self.on_progress(self.state)

    def show_preview(self, png: bytes, at_100_percent: bool = False) -> None:
        """Fitted to the window; the refinement's tile at 100 %, its middle, where the
        detail it adds shows."""
        try:
            loader = GdkPixbuf.PixbufLoader.new_with_type("png")
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
                                             GdkPixbuf.InterpType.BILINEAR)
        except (GLib.Error, TypeError, AttributeError):
            return  # a preview is a nicety: the next one will do
        self.picture.set_from_pixbuf(pixbuf)
        self.state.picture_shown()
        self.pictures += 1
        if self.pictures == 1:
            timing("first picture shown", self.started)

    def on_tick(self) -> bool:
        # given_up() ends the engine's output now: on_output then ends the window
        self.state.tick(time.monotonic() - self.started, self.engine_run.given_up())
        self.draw()
        return self.engine_run.process.poll() is None

    def on_keep(self, button) -> None:
        self.engine_run.send("finish")
        self.state.keep()
        self.draw()

    def on_cancel(self, button) -> None:
        self.state.cancel()
        self.draw()
        self.engine_run.send("cancel")

    def on_close(self, window, event) -> bool:
        if not self.state.cancelled and self.engine_run.result is None:
            self.on_cancel(None)
        return True  # the window goes when the engine has stopped
