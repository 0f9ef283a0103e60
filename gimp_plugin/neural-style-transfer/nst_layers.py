"""The plug-in's reads and writes of the image: which layer may be stylised, its pixels
in a float format of its own model (no precision lost), and the result added as a new
layer above it in one undo step."""

from __future__ import annotations

import os

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402
from nst_messages import _  # noqa: E402


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


def add_result_layer(image, source, style_path: str, region, fmt: str, data: bytes) -> None:
    """One undo group: the new layer above the source, its pixels, and the selection mask."""
    x, y, width, height = region
    name = os.path.splitext(os.path.basename(style_path))[0] or _("Stylised")
    _visible, offset_x, offset_y = source.get_offsets()
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
