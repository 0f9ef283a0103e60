"""The session window: the picture forming (the step, times, *Keep this result*,
*Cancel*), then the session around it — another painting, strength or colours tried
without the menu (a quick look or a full run, or a quick look finished), every result
in a strip, one shown large or two side by side, the photo under it, and *Add as
layer* for the chosen ones.

A GTK view of ``nst_session.Session`` and of each run's ``nst_run_state.RunState``,
kept over the image's window (GimpUi). It changes nothing in GIMP itself: the caller
paints a take (``paint``), adds one (``add``) and feeds GIMP's progress bar
(``on_progress``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import gi

gi.require_version("Gtk", "3.0")
gi.require_version("Gdk", "3.0")
gi.require_version("GdkPixbuf", "2.0")
gi.require_version("GimpUi", "3.0")
from gi.repository import Gdk, GdkPixbuf, GimpUi, GLib, Gtk  # noqa: E402
from nst_arguments import STYLE_IMAGE_SUFFIXES  # noqa: E402
from nst_estimates import SpeedLog, timing  # noqa: E402
from nst_messages import ClientError, _, ngettext, user_message  # noqa: E402
from nst_run_state import RunState  # noqa: E402
from nst_session import (  # noqa: E402
    CANCELLED,
    DONE,
    FAILED,
    PAINTING,
    WAITING,
    Session,
    Take,
)

LOOK_MS = 500  # how often the window updates the elapsed time and looks for silence
VIEW_PX = 640  # the large picture's side
STRIP_PX = 72  # a result's thumbnail in the strip
CHOOSER_PREVIEW_PX = 160  # the painting under the pointer in a file chooser


class SessionWindow:
    """The plug-in's own window: GIMP stays usable while it is open. It reads the
    engine's events from GLib's main loop; closing it cancels a run still painting
    and adds nothing more.

    ``paint(take)`` starts a take's run (an ``nst_client.EngineRun`` with the request
    sent); ``add(take)`` adds its result as a layer (one undo step); ``style_from_file``
    makes a take's painting from a file chosen here (``(Style, Painting)``);
    ``on_take_ended(take, speed)`` hears of every result (calibration, recent
    paintings); ``photo`` is the photo as a pixbuf (the before of before/after)."""

    def __init__(self, session: Session, paint: Callable, add: Callable,
                 style_from_file: Callable, on_take_ended: Callable, on_progress: Callable,
                 photo, style_path: str | None, plugin_name: str,
                 calibration: dict | None, where: str, started: float) -> None:
        GimpUi.init(plugin_name)  # once per process: the dialog may have done it
        self.session = session
        self.paint, self.add, self.style_from_file = paint, add, style_from_file
        self.on_take_ended, self.on_progress = on_take_ended, on_progress
        self.photo, self.calibration, self.where = photo, calibration, where
        self.asked_at = started  # when the take now painting was asked for
        self.engine_run = None  # the EngineRun of the take painting
        self.speed: SpeedLog | None = None
        self.state = RunState(where, calibration)
        self.following = True  # the large view shows the take painting
        self.closing = False
        self.pictures = 0
        self.added = 0

        window = Gtk.Window(title=_("Neural Style Transfer"))
        window.set_default_size(1100, 820)
        window.connect("delete-event", self.on_close)
        # Over the image's window, not lost behind it when GIMP is clicked.
        GimpUi.window_set_transient(window)
        self.window = window
        outer = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
        outer.set_border_width(12)
        window.add(outer)
        top = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=12)
        outer.pack_start(top, True, True, 0)
        frame = Gtk.Frame()
        self.view = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=4,
                            halign=Gtk.Align.CENTER, valign=Gtk.Align.CENTER)
        self.view.set_size_request(VIEW_PX, VIEW_PX)
        self.waiting = Gtk.Label(label=self.state.waiting)
        overlay = Gtk.Overlay()
        overlay.add(self.view)
        overlay.add_overlay(self.waiting)
        frame.add(overlay)
        top.pack_start(frame, True, True, 0)
        top.pack_start(self._side(style_path), False, False, 0)
        outer.pack_start(self._strip(), False, False, 0)
        outer.pack_start(self._footer(), False, False, 0)
        window.show_all()
        self.draw()

    # --- building -----------------------------------------------------------------

    def _side(self, style_path: str | None) -> Gtk.Widget:
        side = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
        side.set_size_request(300, -1)
        self.labels = {}
        for key, title in (("step", _("Step")), ("scale", _("Scale")),
                           ("elapsed", _("Elapsed")), ("remaining", _("Remaining"))):
            row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
            row.pack_start(Gtk.Label(label=title, xalign=0), True, True, 0)
            value = Gtk.Label(label="–", xalign=1)
            row.pack_start(value, False, False, 0)
            side.pack_start(row, False, False, 0)
            self.labels[key] = value
        self.bar = Gtk.ProgressBar()
        side.pack_start(self.bar, False, False, 6)
        self.status = Gtk.Label(label="", xalign=0)
        self.status.set_line_wrap(True)
        side.pack_start(self.status, False, False, 0)
        self.keep = Gtk.Button.new_with_mnemonic(_("_Keep this result"))
        self.keep.set_tooltip_text(_("Stop this run now and keep the picture as it is"))
        self.keep.connect("clicked", self.on_keep)
        self.cancel = Gtk.Button.new_with_mnemonic(_("Cancel this _run"))
        self.cancel.set_tooltip_text(_("Stop this run and keep nothing of it"))
        self.cancel.connect("clicked", self.on_cancel)
        side.pack_start(self.keep, False, False, 0)
        side.pack_start(self.cancel, False, False, 0)
        side.pack_start(Gtk.Separator(), False, False, 8)
        side.pack_start(Gtk.Label(label=_("Try another:"), xalign=0), False, False, 0)
        self.style_button = Gtk.FileChooserButton(title=_("Style image"))
        add_image_filters(self.style_button)
        if style_path:
            self.style_button.set_filename(style_path)
        side.pack_start(self.style_button, False, False, 0)
        row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        row.pack_start(Gtk.Label(label=_("Style strength"), xalign=0), True, True, 0)
        first = self.session.takes[0].settings if self.session.takes else {}
        self.strength = Gtk.SpinButton.new_with_range(0.0, 1.0, 0.05)
        self.strength.set_digits(2)
        self.strength.set_value(first.get("style_strength", 0.5))
        row.pack_start(self.strength, False, False, 0)
        side.pack_start(row, False, False, 0)
        self.colours = Gtk.CheckButton(label=_("Keep the photo's colours"))
        self.colours.set_active(bool(first.get("preserve_colors")))
        side.pack_start(self.colours, False, False, 0)
        row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6, homogeneous=True)
        quick = Gtk.Button.new_with_mnemonic(_("_Quick look"))
        quick.set_tooltip_text(_("A small, short run: enough to compare paintings"))
        quick.connect("clicked", self.on_ask, True)
        full = Gtk.Button.new_with_mnemonic(_("_Paint"))
        full.set_tooltip_text(_("A full run with the dialog's other settings"))
        full.connect("clicked", self.on_ask, False)
        row.pack_start(quick, True, True, 0)
        row.pack_start(full, True, True, 0)
        side.pack_start(row, False, False, 0)
        self.finish = Gtk.Button.new_with_mnemonic(_("_Finish this one"))
        self.finish.set_tooltip_text(_("A full run of the quick look shown, starting from "
                                       "it rather than from the photo"))
        self.finish.connect("clicked", self.on_finish)
        side.pack_start(self.finish, False, False, 0)
        self.asked = Gtk.Label(label="", xalign=0)
        self.asked.set_line_wrap(True)
        side.pack_start(self.asked, False, False, 0)
        return side

    def _strip(self) -> Gtk.Widget:
        scrolled = Gtk.ScrolledWindow()
        scrolled.set_policy(Gtk.PolicyType.AUTOMATIC, Gtk.PolicyType.NEVER)
        scrolled.set_size_request(-1, STRIP_PX + 80)  # room for a three-line label
        self.strip = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
        scrolled.add(self.strip)
        self.strip_items: dict[int, tuple] = {}  # take number → (button, image, label)
        return scrolled

    def _footer(self) -> Gtk.Widget:
        footer = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=8)
        self.before = Gtk.ToggleButton.new_with_mnemonic(_("_Show the photo"))
        self.before.set_tooltip_text(_("The photo in place of the result (before/after)"))
        self.before.connect("toggled", lambda _button: self.draw())
        footer.pack_start(self.before, False, False, 0)
        hint = Gtk.Label(label=_("Click a result to see it; Ctrl+click a second to compare."),
                         xalign=0)
        footer.pack_start(hint, True, True, 0)
        self.add_button = Gtk.Button.new_with_mnemonic(_("_Add as layer"))
        self.add_button.set_tooltip_text(_("Each result shown becomes a layer of its own"))
        self.add_button.connect("clicked", self.on_add)
        close = Gtk.Button.new_with_mnemonic(_("C_lose"))
        close.connect("clicked", lambda _button: self.on_close(self.window, None))
        footer.pack_end(close, False, False, 0)
        footer.pack_end(self.add_button, False, False, 0)
        return footer

    # --- drawing ------------------------------------------------------------------

    def draw(self) -> None:
        """Shows the state: texts, the bar, the strip, the large view, the buttons."""
        state = self.state
        if state.waiting is None or not self.following:
            self.waiting.hide()
        else:
            self.waiting.set_text(state.waiting)
            self.waiting.show()
        for key in self.labels:
            self.labels[key].set_text(getattr(state, key))
        self.bar.set_fraction(state.fraction)
        painting = self.session.painting_now
        self.keep.set_sensitive(painting is not None and state.keep_enabled)
        self.cancel.set_sensitive(painting is not None and state.cancel_enabled)
        self.status.set_text(self._status_text())
        waiting = self.session.waiting
        self.asked.set_text(_("{count} more waiting their turn").format(count=waiting)
                            if waiting else "")
        self._draw_strip()
        self._draw_view()
        self.add_button.set_sensitive(bool(self.session.to_add()))
        self.finish.set_sensitive(self._quick_look_shown() is not None)

    def _quick_look_shown(self) -> Take | None:
        shown = self.session.shown()
        if len(shown) == 1 and shown[0].quick and not self.following:
            return shown[0]
        return None

    def _status_text(self) -> str:
        take = self.session.painting_now
        if take is not None:
            return f"{take.label}\n{self.state.status}".strip()
        failed = [t for t in self.session.takes if t.state == FAILED]
        if failed and failed[-1] is self.session.takes[-1]:
            return failed[-1].error
        unadded = self.session.unadded()
        if unadded:
            return ngettext("{count} result not in the image: choose it and press Add as "
                            "layer, or close the window to leave it out.",
                            "{count} results not in the image: choose one or two and press "
                            "Add as layer; closing the window leaves them out.",
                            unadded).format(count=unadded)
        return _("Every result is in the image.") if self.added else ""

    def _draw_strip(self) -> None:
        for take in self.session.takes:
            if take.number not in self.strip_items and take.state != CANCELLED:
                button = Gtk.ToggleButton()
                box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=2)
                image = Gtk.Image()
                image.set_size_request(STRIP_PX, STRIP_PX)
                label = Gtk.Label(label="", max_width_chars=16, wrap=True,
                                  justify=Gtk.Justification.CENTER)
                box.pack_start(image, False, False, 0)
                box.pack_start(label, False, False, 0)
                button.add(box)
                button.connect("clicked", self.on_strip_click, take.number)
                self.strip.pack_start(button, False, False, 0)
                button.show_all()
                self.strip_items[take.number] = (button, image, label)
        shown = {t.number for t in self.session.shown()}
        for take in self.session.takes:
            if take.number not in self.strip_items:
                continue
            button, image, label = self.strip_items[take.number]
            if take.state == CANCELLED:
                button.destroy()
                del self.strip_items[take.number]
                continue
            suffix = {WAITING: _("waiting"), PAINTING: _("painting…"), FAILED: _("failed")}
            label.set_text(take.label + (f"\n{suffix[take.state]}" if take.state in suffix
                                         else ("\n" + _("added") if take.added else "")))
            button.set_tooltip_text(take.label)
            picture = fitted(take.picture_png, STRIP_PX)
            if picture is not None:
                image.set_from_pixbuf(picture)
            button.handler_block_by_func(self.on_strip_click)
            button.set_active(take.number in shown and not self.following)
            button.handler_unblock_by_func(self.on_strip_click)

    def _draw_view(self) -> None:
        for child in self.view.get_children():
            self.view.remove(child)
        if self.before.get_active() and self.photo is not None:
            pictures = [scaled(self.photo, VIEW_PX)]
        elif self.following and self.session.painting_now is not None:
            pictures = [fitted(self.session.painting_now.picture_png, VIEW_PX)]
        else:
            shown = self.session.shown()
            side = VIEW_PX // max(1, len(shown)) - 4
            pictures = [fitted(take.picture_png, side) for take in shown]
        for pixbuf in pictures:
            image = Gtk.Image()
            if pixbuf is not None:
                image.set_from_pixbuf(pixbuf)
            self.view.pack_start(image, False, False, 0)
            image.show()

    # --- running ------------------------------------------------------------------

    def run(self) -> int:
        """Paints the first take and serves the window until it is closed; returns how
        many results were added."""
        GLib.timeout_add(LOOK_MS, self.on_tick)
        self.start_next()
        try:
            Gtk.main()
        finally:
            if self.engine_run is not None and self.engine_run.process.poll() is None:
                self.engine_run.stop()
            self.window.destroy()
        return self.added

    def start_next(self) -> None:
        take = self.session.next_to_paint()
        if take is None or self.closing:
            return
        take.state = PAINTING
        if take.number > 1:  # the first was asked for with the dialog's OK
            self.asked_at = time.monotonic()
        self.state = RunState(self.where, self.calibration)
        self.speed = SpeedLog()
        self.following = True
        self.pictures = 0
        try:
            self.engine_run = self.paint(take)
        except ClientError as error:
            self.session.ended(take, error=user_message(error))
            self.engine_run = None
            self.draw()
            self.start_next()
            return
        self.engine_run.on_event = lambda event: self.on_event(take, event)
        GLib.io_add_watch(self.engine_run.stdout_fd, GLib.PRIORITY_DEFAULT,
                          GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR,
                          self.on_output)
        self.draw()

    def on_output(self, fd, condition) -> bool:
        try:
            alive = self.engine_run.read_available()
        except OSError:
            alive = False
        if not alive:
            self.take_ended()
        return alive

    def take_ended(self) -> None:
        run, take, state = self.engine_run, self.session.painting_now, self.state
        self.engine_run = None
        try:
            if state.cancelled and run.result is None:
                try:
                    run.outcome()  # reaps the engine; its "cancelled" is expected
                except ClientError:
                    pass
                self.session.ended(take, cancelled=True)
            else:
                result = run.outcome()
                take.started = run.started
                self.session.ended(take, result=result)
                self.following = False
                self.on_take_ended(take, self.speed)
        except ClientError as error:
            self.session.ended(take, error=user_message(error))
        if self.closing:
            Gtk.main_quit()
            return
        self.state = RunState(self.where, self.calibration)  # nothing painting: blank
        self.state.waiting = None
        self.start_next()
        self.draw()

    def on_event(self, take: Take, event: dict) -> None:
        self.speed.on_event(event)
        self.state.on_event(event)
        if event["event"] == "preview" and not event.get("detail", False):
            take.picture_png = event["payload"]  # the refinement's tiles are not the picture
            self.state.picture_shown()
            self.pictures += 1
            if self.pictures == 1:
                timing("first picture shown", self.asked_at)
        self.draw()
        if event["event"] in ("progress", "queued"):  # GIMP's status bar says it too
            self.on_progress(self.state)

    def on_tick(self) -> bool:
        if self.engine_run is not None:
            # given_up() ends the engine's output now: on_output then ends the take
            self.state.tick(time.monotonic() - self.asked_at, self.engine_run.given_up())
            for key in self.labels:
                self.labels[key].set_text(getattr(self.state, key))
        return True

    # --- the photographer's clicks --------------------------------------------------

    def on_keep(self, button) -> None:
        if self.engine_run is not None:
            self.engine_run.send("finish")
            self.state.keep()
            self.draw()

    def on_cancel(self, button) -> None:
        if self.engine_run is not None:
            self.state.cancel()
            self.draw()
            self.engine_run.send("cancel")

    def on_ask(self, button, quick: bool) -> None:
        """Another take with the painting, strength and colours chosen here."""
        path = self.style_button.get_filename()
        last = self.session.takes[-1]
        try:
            style, painting = self.style_from_file(path) if path else (last.style,
                                                                       last.painting)
        except ClientError as error:
            self.asked.set_text(user_message(error))
            return
        settings = {**self.session.takes[0].settings,
                    "style_strength": round(self.strength.get_value(), 3),
                    "preserve_colors": self.colours.get_active()}
        self.session.ask(settings, style, painting, quick)
        if self.session.painting_now is None:
            self.start_next()
        self.draw()

    def on_finish(self, button) -> None:
        quick = self._quick_look_shown()
        if quick is not None:
            self.session.finish(quick, self.session.takes[0].settings)
            if self.session.painting_now is None:
                self.start_next()
            self.draw()

    def on_strip_click(self, button, number: int) -> None:
        take = next(t for t in self.session.takes if t.number == number)
        if take.state == PAINTING:
            self.following = True
        elif take.state == DONE:
            compare = bool(Gtk.get_current_event_state()[1] & Gdk.ModifierType.CONTROL_MASK)
            self.following = False
            self.session.choose(number, compare)
        self.draw()

    def on_add(self, button) -> None:
        for take in self.session.to_add():
            try:
                self.add(take)
            except ClientError as error:
                self.asked.set_text(user_message(error))
                break
            take.added = True
            self.added += 1
        self.draw()

    def on_close(self, window, event) -> bool:
        self.closing = True
        for take in self.session.takes:  # the waiting ones are dropped
            if take.state == WAITING:
                take.state = CANCELLED
        if self.engine_run is None:
            Gtk.main_quit()
        else:
            self.on_cancel(None)  # the window goes when the engine has stopped
        return True


def fitted(png: bytes | None, side: int):
    """A PNG picture fitted into ``side`` pixels, or None."""
    if not png:
        return None
    try:
        loader = GdkPixbuf.PixbufLoader.new_with_type("png")
        loader.write(png)
        loader.close()
        return scaled(loader.get_pixbuf(), side)
    except (GLib.Error, TypeError, AttributeError):
        return None  # a picture is a nicety: the next one will do


def scaled(pixbuf, side: int):
    width, height = pixbuf.get_width(), pixbuf.get_height()
    scale = max(16, side) / max(width, height)
    return pixbuf.scale_simple(max(1, round(width * scale)), max(1, round(height * scale)),
                               GdkPixbuf.InterpType.BILINEAR)


def load_thumbnail(path: str | None, size: int):
    """The image at ``path`` fitted into ``size`` pixels, or None where GTK cannot read
    it (no file, a folder, a 16-bit TIFF its loaders refuse): then none is shown."""
    if not path:
        return None
    try:
        return GdkPixbuf.Pixbuf.new_from_file_at_scale(path, size, size, True)
    except GLib.Error:
        return None


def add_image_filters(chooser) -> None:
    """A file chooser (``Gtk.FileChooser``) that lists the images the engine reads first
    (all files a click away) and shows the painting under the pointer."""
    images = Gtk.FileFilter()
    images.set_name(_("Images ({types})").format(
        types=", ".join(f"*{suffix}" for suffix in STYLE_IMAGE_SUFFIXES)))
    for suffix in STYLE_IMAGE_SUFFIXES:
        images.add_pattern(f"*{suffix}")
        images.add_pattern(f"*{suffix.upper()}")
    everything = Gtk.FileFilter()
    everything.set_name(_("All files"))
    everything.add_pattern("*")
    chooser.add_filter(images)
    chooser.add_filter(everything)
    chooser.set_filter(images)
    preview = Gtk.Image()
    chooser.set_preview_widget(preview)

    def show_pointed(*_args) -> None:
        shown = load_thumbnail(chooser.get_preview_filename(), CHOOSER_PREVIEW_PX)
        preview.set_from_pixbuf(shown)
        chooser.set_preview_widget_active(shown is not None)

    chooser.connect("update-preview", show_pointed)
