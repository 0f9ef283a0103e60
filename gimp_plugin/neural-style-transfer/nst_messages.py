"""What the photographer reads: errors and their hints, times, devices and estimates as
words; standard library only.

Every user-facing string of the plug-in goes through :func:`_`, gettext in the text
domain ``nst-gimp`` with catalogues in the plug-in's ``locale/`` folder (none ship
yet: English is the fallback). Strings with values are ``_("… {name} …").format()``,
so that a translation can move the values.
"""

from __future__ import annotations

import gettext
import os

TEXT_DOMAIN = "nst-gimp"
LOCALE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "locale")
_translation = gettext.translation(TEXT_DOMAIN, LOCALE_DIR, fallback=True)
_ = _translation.gettext
ngettext = _translation.ngettext


def N_(message: str) -> str:
    """Marks a string for translation where it is defined; ``_()`` translates it where
    it is shown."""
    return message


HINTS = {
    "not_installed": N_("See the README's installation section; 'install.sh --check' tells "
                        "what is missing."),
    "no_weights": N_("Install the network weights: run install.sh again, or "
                     "'<the engine's Python> -m nst_engine weights download'."),
    "out_of_memory": N_("Lower the working size, select a smaller area, or close other "
                        "GPU programs."),
    "bad_input": N_("Check the style image and the options."),
    "bad_config": N_("Correct that entry in nst-engine.json, in the plug-in's folder, or "
                     "run install.sh again: it writes the file anew."),
    "internal": N_("Run 'install.sh --check'; if it reports no problem, please report "
                   "this."),
    "connection": N_("Check that 'ssh HOST' logs in without a password prompt, and that "
                     "install.sh ran on that machine; 'install.sh --check' tests the "
                     "connection."),
    "temp_folder": N_("Free some space in the temporary folder (or point TMPDIR at another "
                      "one) and run the filter again."),
    "engine_silent": N_("The next run starts the engine afresh; if this happens again, "
                        "'install.sh --check' tells whether the engine works."),
}
DEVICE_NAMES = {"cpu": N_("processor"), "cuda": N_("GPU"), "mps": N_("GPU")}


class ClientError(Exception):
    """A failure to show the user: ``kind`` as in the protocol, plus a human message;
    ``advised``: the message says what to do itself (the kind's hint is left out)."""

    def __init__(self, kind: str, message: str, advised: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.advised = advised


def user_message(error: ClientError) -> str:
    hint = _(HINTS[error.kind]) if error.kind in HINTS and not error.advised else ""
    return f"{error.message}\n\n{hint}".strip()


def log_note(path: str | None) -> str:
    if not path:
        return ""
    return "\n\n" + _("The engine's log is saved in {path}; please attach it to a "
                      "report.").format(path=path)


def device_name(device: str | None) -> str:
    """``processor`` or ``GPU``, as the session window and the estimate name a device."""
    return _(DEVICE_NAMES.get(device, N_("GPU")))


def result_name(style: str, settings: dict) -> str:
    """A result layer's name: the painting, the strength, and colours kept if so."""
    details = [_("strength {strength:g}").format(strength=settings["style_strength"])]
    if settings.get("preserve_colors"):
        details.append(_("photo's colours"))
    return f"{style} ({', '.join(details)})"


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return _("{hours} h {minutes:02d} min").format(hours=seconds // 3600,
                                                       minutes=seconds % 3600 // 60)
    if seconds >= 60:
        return _("{minutes} min {seconds:02d} s").format(minutes=seconds // 60,
                                                         seconds=seconds % 60)
    return _("{seconds} s").format(seconds=seconds)


def format_estimate(seconds: float | None, device: str | None,
                    from_installer: bool = False) -> str:
    """The dialog's estimate; ``from_installer``: only the installer's speed test has
    measured this computer so far (generated pictures, so runs may end sooner)."""
    if seconds is None:
        return _("Time: measured on the first run, then estimated here before each run.")
    if seconds < 60:
        text = _("about {seconds} s").format(seconds=max(5, int(round(seconds / 5.0)) * 5))
    elif seconds < 3600:
        text = _("about {minutes} min").format(minutes=int(round(seconds / 60.0)))
    else:
        text = _("about {hours:.1f} h").format(hours=seconds / 3600)
    if from_installer:
        return _("Estimated time: {time} on the {device} (from the installer's speed "
                 "test; your first run makes it exact)").format(time=text,
                                                                device=device_name(device))
    return _("Estimated time: {time} on the {device}").format(time=text,
                                                             device=device_name(device))


def format_refinement(extra_s: float | None) -> str:
    """What *Refine at full size* would do and cost, for a run that does not refine:
    the working size's result is soft at 100 % on a large photo."""
    if extra_s is None:
        return _("Detail: “Refine at full size” makes the result sharp at 100 %; on a "
                 "processor it takes several times as long.")
    if extra_s < 1.0:
        return ""
    return _("Detail: “Refine at full size” would make it sharp at 100 %, for about "
             "{time} more here.").format(time=format_eta(extra_s))


def format_style_layer(name: str) -> str:
    """The dialog's word that the painting is a layer, not the file."""
    return _("The painting: the open image's layer “{name}” (choosing a file uses the file "
             "instead)."
             ).format(name=name)


def format_area(width: int, height: int, layer_width: int, layer_height: int) -> str:
    """Says that a selection limits what is painted (nothing when it is all of the
    layer): the result layer then covers the selection's bounds, masked by it."""
    if (width, height) == (layer_width, layer_height):
        return ""
    return _("Only the selection is painted: {width}×{height} px of the layer's "
             "{layer_width}×{layer_height}.").format(width=width, height=height,
                                                     layer_width=layer_width,
                                                     layer_height=layer_height)
