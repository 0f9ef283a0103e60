"""The plug-in's reads and writes of the image: which layer may be stylised, its pixels
in a float format of its own model (no precision lost), and the result added as a new
layer in one undo step — above the photo and above the results made from it before,
named for the painting and the strength, with how it was made in a parasite
(docs/design.md, *Result layers*), and the photo left active for the next run."""

from __future__ import annotations

import json
import os

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402
from nst_messages import _, result_name  # noqa: E402

RESULT_PARASITE = "nst-result"  # on every result layer, saved in the .xcf
RESULT_FORMAT = 1  # of the parasite's JSON


class Failure(Exception):
    """Stops the run with a message for the user; the image is left unchanged."""


def pixel_format(drawable) -> tuple[str, int]:
    """A float format of the drawable's own model, and its channels."""
    gray = drawable.is_gray()
    base = "Y'" if gray else "R'G'B'"
    alpha = drawable.has_alpha()
    return f"{base}{'A' if alpha else ''} float", (1 if gray else 3) + (1 if alpha else 0)


def check_target(image, drawables):
    """The one pixel layer to stylise, or Failure."""
    if len(drawables) != 1:
        raise Failure(_("Select exactly one layer to stylise."))
    drawable = drawables[0]
    if not drawable.is_layer() or drawable.is_group():
        raise Failure(_("Select a pixel layer (not a mask, channel or layer group)."))
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        raise Failure(_("Indexed images are not supported: use Image ▸ Mode ▸ RGB first."))
    return drawable


def selected_region(drawable) -> tuple[int, int, int, int]:
    """The part of the layer the selection touches (all of it without one), as
    ``(x, y, width, height)`` in the layer's coordinates."""
    intersects, x, y, width, height = drawable.mask_intersect()
    if not intersects:
        raise Failure(_("The selection does not touch this layer."))
    return x, y, width, height


def read_pixels(drawable, region, fmt: str) -> bytes:
    x, y, width, height = region
    rect = Gegl.Rectangle.new(x, y, width, height)
    return bytes(drawable.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP))


def made_from(layer, source) -> bool:
    """Whether ``layer`` is a result the plug-in made from ``source``."""
    parasite = layer.get_parasite(RESULT_PARASITE)
    if parasite is None:
        return False
    try:
        recipe = json.loads(bytes(parasite.get_data()).decode("utf-8"))
        return recipe.get("source") == source.get_tattoo()
    except (ValueError, TypeError, AttributeError):  # not ours, or damaged
        return False


def result_position(image, source) -> int:
    """Where in the source's parent a new result goes: on top of the results already
    made from the source just above it, so that the newest is the one seen."""
    parent = source.get_parent()
    siblings = parent.get_children() if parent is not None else image.get_layers()
    position = image.get_item_position(source)
    while position > 0 and made_from(siblings[position - 1], source):
        position -= 1
    return position


def add_result_layer(image, source, style_path: str, region, fmt: str, data: bytes,
                     settings: dict) -> None:
    """One undo group: the new layer, its pixels, its recipe and the selection mask;
    then the source is the active layer again (not an undo step)."""
    x, y, width, height = region
    style = os.path.splitext(os.path.basename(style_path))[0] or _("Stylised")
    _visible, offset_x, offset_y = source.get_offsets()
    layer_type = source.type_with_alpha() if source.has_alpha() else source.type()
    recipe = {"format": RESULT_FORMAT, "source": source.get_tattoo(),
              "style": os.path.basename(style_path), "settings": settings}
    image.undo_group_start()
    try:
        layer = Gimp.Layer.new(image, result_name(style, settings), width, height,
                               layer_type, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, source.get_parent(), result_position(image, source))
        layer.attach_parasite(Gimp.Parasite.new(
            RESULT_PARASITE, Gimp.PARASITE_PERSISTENT, json.dumps(recipe).encode("utf-8")))
        layer.set_offsets(offset_x + x, offset_y + y)
        buffer = layer.get_buffer()
        buffer.set(Gegl.Rectangle.new(0, 0, width, height), fmt, data)
        buffer.flush()
        layer.update(0, 0, width, height)
        if not Gimp.Selection.is_empty(image):
            layer.add_mask(layer.create_mask(Gimp.AddMaskType.SELECTION))
    finally:
        image.undo_group_end()
    image.set_selected_layers([source])  # the next run paints the photo, not this result
    Gimp.displays_flush()
