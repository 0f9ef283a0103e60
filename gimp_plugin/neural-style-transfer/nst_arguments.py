"""The procedure's arguments: which knobs (``nst_contract.knobs``) it has, how the
dialog labels them, their names and defaults as GIMP holds them, and the engine
settings read back from them; standard library only."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nst_messages import N_, _

from nst_contract.knobs import AUTO_SIZE, DEFAULTS, KNOBS

# The knobs the procedure has as arguments, in their order; each argument is named
# for its knob (``style-strength`` for ``style_strength``) and takes its default,
# range, choices and help from ``nst_contract.knobs``.
ARGUMENT_KNOBS = ("style_strength", "iterations", "max_size", "preserve_colors", "seed",
                  "detail", "device")
# The style image's file types the dialog's chooser offers first: those the engine
# reads (nst_engine.images; tests/test_plugin_client.py reads one of each).
STYLE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
# How the dialog names them and their choices (the underscore: the mnemonic, none the
# same as another's or a dialog button's: _Help, _Load/_Save Settings, _Reset, _Cancel,
# _OK, nor the style's Style _image and …or a la_yer).
LABELS = {
    "style_strength": N_("Style stre_ngth"),
    "iterations": N_("Ste_ps, at most"),
    "max_size": N_("_Working size (0 = automatic)"),
    "preserve_colors": N_("_Keep the photo's colours"),
    "seed": N_("Vari_ation (seed)"),
    "detail": N_("De_tail"),
    "device": N_("De_vice"),
}
CHOICE_LABELS = {
    "detail": {"auto": N_("Automatic (refined on a GPU, enlarged on a processor)"),
               "working": N_("Working size, enlarged (fast)"),
               "full": N_("Refine at full size (sharp at 100 %)")},
    "device": {"auto": N_("Automatic (GPU if available)"), "cuda": N_("NVIDIA GPU (CUDA)"),
               "mps": N_("Apple GPU (Metal)"), "cpu": N_("Processor (CPU)")},
}


@dataclass(frozen=True)
class Argument:
    """One knob's argument, as GIMP declares it."""

    knob: str
    name: str
    label: str
    help: str
    kind: type
    default: object
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[tuple[str, str], ...] = ()  # (nick, label), in the knob's order


def argument_name(knob: str) -> str:
    return knob.replace("_", "-")


def argument_default(knob: str):
    """The knob's default as an argument: GIMP has no empty int, so an automatic
    working size is its own value, 0."""
    default = DEFAULTS[knob]
    return AUTO_SIZE if default is None and knob == "max_size" else default


def arguments() -> list[Argument]:
    """Every knob argument, in the procedure's order."""
    declared = []
    for knob in ARGUMENT_KNOBS:
        meta = KNOBS[knob]
        declared.append(Argument(
            knob, argument_name(knob), _(LABELS[knob]),
            _(meta["help"][:1].upper() + meta["help"][1:]), meta["kind"],
            argument_default(knob), meta["min"], meta["max"],
            tuple((nick, _(CHOICE_LABELS[knob][nick])) for nick in meta["choices"] or ())))
    return declared


def settings_from_config(value_of) -> dict:
    """Engine settings from the procedure's arguments, read by name (``value_of(name)``)."""
    return {knob: KNOBS[knob]["kind"](value_of(argument_name(knob)))
            for knob in ARGUMENT_KNOBS}


# A command-line option in an engine message, and the value after it when it has one
# (``--device cpu``, ``--max-size 362``; not the ``or`` of ``--max-size or``).
OPTION = re.compile(r"--([a-z][a-z-]*)(?: ([0-9][0-9.]*|[a-z]+))?")


def field_name(knob: str) -> str:
    """The dialog field's name as a message quotes it: no mnemonic, no note."""
    return re.sub(r"\s*\(.*\)$", "", _(LABELS[knob]).replace("_", ""))


def in_dialog_words(message: str) -> tuple[str, bool]:
    """An engine message in the dialog's words: its advice names command-line options
    (``use --device cpu``, ``try --max-size 362``), and the photographer sees the
    dialog's fields and choices instead (“Device: Processor (CPU)”, “Working size”
    362); an option the dialog has not is said to be the command line's. True as well
    when the message advised something this way (no generic hint is needed then)."""
    advised = False

    def words(match: re.Match) -> str:
        nonlocal advised
        advised = True
        knob, value = match.group(1).replace("-", "_"), match.group(2)
        if knob not in LABELS:
            return _("{option} (a command-line option)").format(option=match.group(0))
        choices = CHOICE_LABELS.get(knob, {})
        if value in choices:
            return _("“{field}: {choice}”").format(field=field_name(knob),
                                                   choice=_(choices[value]))
        text = _("“{field}”").format(field=field_name(knob))
        return f"{text} {value}" if value else text

    return OPTION.sub(words, message), advised
