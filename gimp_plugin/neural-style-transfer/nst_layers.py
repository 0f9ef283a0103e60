"""The plug-in's reads and writes of the image: which layer may be stylised, its pixels
in a float format of its own model (no precision lost), and the result added as a new
layer in one undo step — above the photo and above the results made from it before,
named for the painting and the strength, with how it was made in a parasite
(``nst_recipe``, docs/recipe.md), and the photo left active for the next run; and a
result's recipe taken back into a run."""

from __future__ import annotations

import os

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
gi.require_version("GdkPixbuf", "2.0")
import nst_recipe  # noqa: E402
from gi.repository import GdkPixbuf, Gegl, Gimp, Gio, GLib  # noqa: E402
from nst_client import Style  # noqa: E402
from nst_messages import ClientError, _, result_name  # noqa: E402

THUMBNAIL_PX = 64  # the painting's thumbnail in a result's recipe


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


def photo_thumbnail(drawable, region, side: int = 640):
    """The painted part of the layer as a pixbuf at most ``side`` pixels across (GEGL
    scales it down as it reads): the session window's before."""
    x, y, width, height = region
    scale = min(1.0, side / max(width, height))
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    rect = Gegl.Rectangle.new(int(x * scale), int(y * scale), w, h)
    data = drawable.get_buffer().get(rect, scale, "R'G'B'A u8", Gegl.AbyssPolicy.CLAMP)
    return GdkPixbuf.Pixbuf.new_from_bytes(GLib.Bytes.new(bytes(data)),
                                           GdkPixbuf.Colorspace.RGB, True, 8, w, h, w * 4)


def read_pixels(drawable, region, fmt: str) -> bytes:
    x, y, width, height = region
    rect = Gegl.Rectangle.new(x, y, width, height)
    return bytes(drawable.get_buffer().get(rect, 1.0, fmt, Gegl.AbyssPolicy.CLAMP))


def read_style(layer) -> Style:
    """A painting open in GIMP as the engine's style: the layer's colour as float32 in
    its own precision (a painting's alpha is not used), named for the layer."""
    if not layer.is_layer() or layer.is_group():
        raise Failure(_("The style must be a pixel layer, not a mask, channel or group."))
    width, height = layer.get_width(), layer.get_height()
    pixels = layer.get_buffer().get(Gegl.Rectangle.new(0, 0, width, height), 1.0,
                                    "R'G'B' float", Gegl.AbyssPolicy.CLAMP)
    return Style(painting_name(layer), bytes(pixels), (height, width, 3))


def painting_name(layer) -> str:
    """A style layer as a result's name says it: its image's file name when it is the
    image's only layer (an opened painting's layer is just "Background"), with the
    layer's name when there are others."""
    file = image_file(layer.get_image())
    stem = os.path.splitext(file.get_basename())[0] if file is not None else ""
    if not stem:
        return layer.get_name() or _("Style layer")
    if len(layer.get_image().get_layers()) == 1 and layer.get_parent() is None:
        return stem
    return f"{stem} – {layer.get_name()}"


def image_file(image):
    """The file an image came from: its .xcf, or the file it was imported from (GIMP
    3.0 gives only the latter for an opened JPEG or PNG); None for a new image."""
    return image.get_file() or image.get_imported_file()


def painting_of(style: Style, path: str | None = None, layer=None) -> nst_recipe.Painting:
    """The painting as a result's recipe names it, with a small thumbnail."""
    thumbnail = None
    try:
        if layer is not None:
            thumbnail = layer.get_thumbnail(THUMBNAIL_PX, THUMBNAIL_PX,
                                            Gimp.PixbufTransparency.KEEP_ALPHA)
        elif path:
            thumbnail = GdkPixbuf.Pixbuf.new_from_file_at_scale(path, THUMBNAIL_PX,
                                                                THUMBNAIL_PX, True)
    except GLib.Error:  # a file GTK cannot read (the engine could): no thumbnail
        pass
    png = thumbnail.save_to_bufferv("png", [], [])[1] if thumbnail is not None else None
    image = image_file(layer.get_image()) if layer is not None else None
    return nst_recipe.Painting(style.name, style.sha256, path,
                               layer.get_name() if layer is not None else None,
                               image.get_basename() if image is not None else None,
                               bytes(png) if png else None)


def recipe_of(layer) -> nst_recipe.Recipe | None:
    """The recipe on a result layer; None on any other layer (or a damaged one)."""
    parasite = layer.get_parasite(nst_recipe.PARASITE)
    return nst_recipe.decode(bytes(parasite.get_data())) if parasite is not None else None


def from_recipe(image, result, recipe: nst_recipe.Recipe, config) -> tuple[list, str]:
    """Sets ``config`` to a result's recipe — its settings, and its painting where it
    can still be found (the file, unchanged; or the layer, in an open image) — and
    returns the layers to paint (the photo it was made from when it is still in the
    image, else the result itself) and a line for the dialog."""
    for name, value in recipe.arguments().items():
        config.set_property(name, value)
    painting = recipe.painting
    found = None
    if painting.file and os.path.isfile(painting.file) and \
            _same_file(painting.file, painting.sha256):
        config.set_property("style-file", Gio.File.new_for_path(painting.file))
        config.set_property("style-layer", None)
        found = painting.file
    elif painting.layer:
        for other in Gimp.get_images():
            file = image_file(other)
            if (file.get_basename() if file else None) != painting.image:
                continue
            layer = next((item for item in other.get_layers()
                          if item.get_name() == painting.layer), None)
            if layer is not None and read_style(layer).sha256 == painting.sha256:
                config.set_property("style-layer", layer)
                found = painting.layer
                break
    source = image.get_layer_by_tattoo(recipe.source) if recipe.source is not None else None
    targets = [source] if source is not None else [result]
    if found is None:
        missing = _("its painting “{name}” was not found: choose it again").format(
            name=painting.name)
    else:
        missing = ""
    note = _("Settings of the result “{result}”{missing}; OK paints “{target}”.").format(
        result=result.get_name(), missing=f" ({missing})" if missing else "",
        target=targets[0].get_name())
    return targets, note


def _same_file(path: str, sha256: str | None) -> bool:
    try:
        return Style.from_file(path).sha256 == sha256
    except ClientError:  # unreadable now: as if it were gone
        return False


def made_from(layer, source) -> bool:
    """Whether ``layer`` is a result the plug-in made from ``source``."""
    recipe = recipe_of(layer)
    return recipe is not None and recipe.source == source.get_tattoo()


def result_position(image, source) -> int:
    """Where in the source's parent a new result goes: on top of the results already
    made from the source just above it, so that the newest is the one seen."""
    parent = source.get_parent()
    siblings = parent.get_children() if parent is not None else image.get_layers()
    position = image.get_item_position(source)
    while position > 0 and made_from(siblings[position - 1], source):
        position -= 1
    return position


def add_result_layer(image, source, painting: nst_recipe.Painting, region, fmt: str,
                     data: bytes, settings: dict, started: dict) -> None:
    """One undo group: the new layer, its pixels, its recipe and the selection mask;
    then the source is the active layer again (not an undo step). ``started``: the
    run's ``started`` event (which engine painted it)."""
    x, y, width, height = region
    name = os.path.splitext(painting.name)[0] or _("Stylised")
    _visible, offset_x, offset_y = source.get_offsets()
    layer_type = source.type_with_alpha() if source.has_alpha() else source.type()
    recipe = nst_recipe.encode(source.get_tattoo(), source.get_name(), painting, settings,
                               started)
    image.undo_group_start()
    try:
        layer = Gimp.Layer.new(image, result_name(name, settings), width, height,
                               layer_type, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(layer, source.get_parent(), result_position(image, source))
        layer.attach_parasite(Gimp.Parasite.new(nst_recipe.PARASITE,
                                                Gimp.PARASITE_PERSISTENT, recipe))
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
