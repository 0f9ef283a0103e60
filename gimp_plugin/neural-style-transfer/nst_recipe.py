"""How a result was made — its recipe, kept on the result layer as the persistent
parasite ``nst-result`` (saved in the .xcf) — and what a later run takes from it:
the photo it was made from, the painting and the settings. Standard library only;
the format is docs/recipe.md's."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from nst_arguments import ARGUMENT_KNOBS, argument_name

from nst_contract.errors import EngineError
from nst_contract.knobs import Settings

PARASITE = "nst-result"
FORMAT = 2  # 1: source, style (a file name) and settings only


@dataclass(frozen=True)
class Painting:
    """The painting as a recipe names it: ``file`` (its path) or ``layer`` (its name and
    its image's file name), with its sha256 to know it again, and a small thumbnail."""

    name: str
    sha256: str | None = None
    file: str | None = None
    layer: str | None = None
    image: str | None = None  # the file name of the image the layer was in
    thumbnail_png: bytes | None = None


def encode(source_tattoo: int, source_name: str, painting: Painting, settings: dict,
           started: dict) -> bytes:
    """The parasite's bytes: UTF-8 JSON of format 2 (docs/recipe.md). ``started``: the
    run's ``started`` event (which engine painted it, on what, in what arithmetic)."""
    style = {"name": painting.name, "sha256": painting.sha256}
    if painting.file:
        style["file"] = painting.file
    if painting.layer:
        style["layer"] = {"name": painting.layer, "image": painting.image}
    if painting.thumbnail_png:
        style["thumbnail_png"] = base64.b64encode(painting.thumbnail_png).decode("ascii")
    recipe = {"format": FORMAT, "source": source_tattoo, "source_name": source_name,
              "style": style, "settings": settings,
              "engine": {"version": started.get("engine_version"),
                         "device": started.get("device"),
                         "precision": started.get("precision"),
                         "weights": started.get("weights")}}
    # ASCII: PyGObject hands a parasite's data to GIMP as signed chars (bytes over 127
    # fail), so names with accents go as JSON escapes.
    return json.dumps(recipe).encode("ascii")


@dataclass(frozen=True)
class Recipe:
    """A parasite as read: what a later run needs of it."""

    source: int | None  # the photo's tattoo
    source_name: str
    painting: Painting
    settings: dict  # the engine settings, checked (``Settings.from_dict``)

    def arguments(self) -> dict:
        """The procedure's arguments as the recipe sets them (by argument name)."""
        return {argument_name(knob): self.settings[knob] for knob in ARGUMENT_KNOBS
                if knob in self.settings}


def decode(data: bytes) -> Recipe | None:
    """The recipe in a parasite's bytes, format 1 or 2 (fields a later format adds are
    ignored); None for anything else — not ours, damaged, or settings this engine
    would refuse."""
    try:
        recipe = json.loads(bytes(data).decode("utf-8"))
        if not isinstance(recipe, dict) or not isinstance(recipe.get("format"), int):
            return None
        source = recipe.get("source")
        settings = recipe.get("settings")
        if not isinstance(settings, dict):
            return None
        Settings.from_dict({k: v for k, v in settings.items() if k in ARGUMENT_KNOBS})
        style = recipe.get("style")
        if recipe["format"] == 1:  # the style was a file name
            painting = Painting(str(style))
        else:
            layer = style.get("layer") or {}
            thumbnail = style.get("thumbnail_png")
            painting = Painting(str(style["name"]), style.get("sha256"), style.get("file"),
                                layer.get("name"), layer.get("image"),
                                base64.b64decode(thumbnail) if thumbnail else None)
        return Recipe(source if isinstance(source, int) else None,
                      str(recipe.get("source_name", "")), painting,
                      {k: v for k, v in settings.items() if k in ARGUMENT_KNOBS})
    except (ValueError, TypeError, AttributeError, KeyError, EngineError):
        return None
