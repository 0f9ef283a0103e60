"""Image files in and out, without losing precision, alpha or colour profile (the
picture they become is ``pictures.Picture``).

Pillow reads and writes 8-bit files; it cannot hold 16 bits per channel for RGB,
so 16-bit PNG goes through pypng and 16-bit/float TIFF through tifffile
(``docs/design.md`` says why those two).
"""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import png
import tifffile
from PIL import Image, UnidentifiedImageError

from nst_contract.errors import EngineError, bad_input

from .files import atomic_path
from .pictures import Picture, check_size, from_channels

OUTPUT_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}


def _orient(data: np.ndarray, orientation: int) -> np.ndarray:
    """Applies an EXIF orientation (1–8) to an ``H×W×C`` array."""
    ops = {
        2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 1)[::-1], 8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](data)) if orientation in ops else data


def _read_png16(path: Path) -> Picture:
    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    channels = info["planes"]
    data = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    return from_channels(data.reshape(height, width, channels), 65535.0, 16)


TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def _read_tiff_deep(path: Path, what: str) -> Picture | None:
    """16-bit and float TIFFs through tifffile (Pillow cannot read float RGB at all);
    None for an 8-bit TIFF, which Pillow reads."""
    try:
        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages[0]
            if page.dtype is None or page.dtype.itemsize == 1:
                return None
            if page.imagewidth * page.imagelength > Image.MAX_IMAGE_PIXELS:
                raise _bomb(what, path.name)
            data = page.asarray()
            icc = page.tags.get(34675)
            orientation = page.tags.get(274)
    except EngineError:
        raise
    except Exception as exc:  # e.g. a compression that needs imagecodecs
        raise bad_input(f"cannot read the 16/32-bit TIFF {path.name}: {exc}") from None
    if data.dtype == np.uint16:
        picture = from_channels(data, 65535.0, 16)
    elif data.dtype.kind == "f":
        picture = from_channels(data.astype(np.float32), 1.0, 32)
    else:
        raise bad_input(f"TIFF sample type {data.dtype} is not supported")
    picture.icc = bytes(icc.value) if icc is not None else None
    picture.rgb = _orient(picture.rgb, orientation.value if orientation else 1)
    if picture.alpha is not None and orientation is not None:
        picture.alpha = _orient(picture.alpha[..., None], orientation.value)[..., 0]
    return picture


def _from_pillow(image: Image.Image) -> Picture:
    mode = image.mode
    if mode in ("P", "PA"):
        image = image.convert("RGBA" if "transparency" in image.info or mode == "PA" else "RGB")
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        return from_channels(np.asarray(image, dtype=np.float64).clip(0, 65535), 65535.0, 16)
    elif mode == "F":
        return from_channels(np.asarray(image, dtype=np.float32), 1.0, 32)
    elif mode == "1":
        image = image.convert("L")
    elif mode == "La":
        image = image.convert("LA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in mode else "RGB")  # CMYK, YCbCr, LAB, …
    return from_channels(np.asarray(image), 255.0, 8)


def load_picture(path: str | os.PathLike, what: str = "image") -> Picture:
    """Reads PNG, JPEG, TIFF or WebP (first frame), EXIF orientation applied, ICC kept."""
    path = Path(path)
    if not path.is_file():
        raise bad_input(f"{what} not found: {path}")
    try:
        with open(path, "rb") as handle:
            deep_tiff = handle.read(4) in TIFF_SIGNATURES and _read_tiff_deep(path, what)
    except OSError as exc:
        raise bad_input(f"cannot read {what} {path.name}: {exc}") from None
    except MemoryError:
        raise _too_big(what, path) from None
    if deep_tiff:
        return check_size(deep_tiff, f"{what} {path.name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.seek(0)
                icc = image.info.get("icc_profile")
                orientation = image.getexif().get(0x0112, 1)
                deep = _is_deep(image, path)
                if deep == "png":
                    picture = _read_png16(path)
                else:
                    image.load()
                    picture = _from_pillow(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb(what, path.name) from None
    except UnidentifiedImageError:
        raise bad_input(f"{what} {path.name} is not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise bad_input(f"cannot read {what} {path.name}: {exc}") from None
    except MemoryError:
        raise _too_big(what, path) from None
    picture.rgb = _orient(picture.rgb, orientation)
    if picture.alpha is not None:
        picture.alpha = _orient(picture.alpha[..., None], orientation)[..., 0]
    picture.icc = icc
    return check_size(picture, f"{what} {path.name}")


def _is_deep(image: Image.Image, path: Path) -> str | None:
    """'png' when the file holds 16 bits per channel (TIFFs are sorted out before)."""
    if image.format == "PNG":
        with open(path, "rb") as handle:
            header = handle.read(26)
        return "png" if len(header) == 26 and header[24] == 16 else None
    return None


def _bomb(what: str, name: str) -> EngineError:
    """Every decoder's pixel ceiling (Pillow's, which tifffile does not apply; 16-bit
    PNGs pass Pillow's check first): a file that unpacks to more is refused before
    it is decoded."""
    return bad_input(f"{what} {name} is larger than the {Image.MAX_IMAGE_PIXELS:,}-pixel "
                     "safety limit (possible decompression bomb)")


def _too_big(what: str, path: Path) -> EngineError:
    return EngineError("out_of_memory", f"{what} {path.name} is too large to load into "
                       "memory; use a smaller image")


def check_output_path(path: str | os.PathLike) -> Path:
    """Fails early, before any work, if the output cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise bad_input(
            f"unsupported output type {path.suffix or '(none)'}; use .png, .tif, .tiff or .jpg"
        )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise bad_input(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise bad_input(f"output folder is not writable: {folder}")
    if path.is_dir():
        raise bad_input(f"output path is a folder: {path}")
    return path


def _channels_for_output(picture: Picture, bits: int) -> np.ndarray:
    color = picture.rgb[..., :1] if picture.gray else picture.rgb
    if bits == 32:
        color = color.astype(np.float32)
    else:
        top = 65535 if bits == 16 else 255
        color = np.round(np.clip(color, 0.0, 1.0) * top).astype(_dtype_for(bits))
    if picture.alpha is not None:
        color = np.concatenate([color, picture.alpha.astype(color.dtype)[..., None]], axis=2)
    return color[..., 0] if color.shape[2] == 1 else color


def _write_png16(data: np.ndarray, target: str, icc: bytes | None) -> None:
    height, width = data.shape[:2]
    planes = 1 if data.ndim == 2 else data.shape[2]
    writer = png.Writer(width, height, bitdepth=16, greyscale=planes <= 2, alpha=planes in (2, 4))
    with open(target, "wb") as handle:
        writer.write(handle, data.reshape(height, width * planes))
    if icc:
        chunks = list(png.Reader(filename=target).chunks())
        iccp = b"ICC Profile\0\0" + zlib.compress(icc)
        chunks.insert(1, (b"iCCP", iccp))  # right after IHDR, before IDAT
        with open(target, "wb") as handle:
            png.write_chunks(handle, chunks)


def save_picture(picture: Picture, path: str | os.PathLike) -> None:
    """Writes atomically: a partial file never appears under ``path``."""
    path = check_output_path(path)
    kind = OUTPUT_FORMATS[path.suffix.lower()]
    bits = picture.bits
    if kind == "JPEG" and (bits > 8 or picture.alpha is not None):
        warnings.warn(
            f"JPEG holds 8 bits and no alpha: writing {path.name} drops "
            f"{'the extra precision' if bits > 8 else ''}"
            f"{' and ' if bits > 8 and picture.alpha is not None else ''}"
            f"{'the alpha channel' if picture.alpha is not None else ''}; use .png or .tif",
            stacklevel=2,
        )
        picture = replace(picture, alpha=None)
        bits = 8
    if kind == "PNG" and bits == 32:
        bits = 16  # PNG has no float samples; 16 bits keep far more than 256 levels
    if picture.alpha is not None and picture.alpha.dtype != _dtype_for(bits):
        picture = replace(picture, alpha=_convert_alpha(picture.alpha, bits))
    data = _channels_for_output(picture, bits)
    try:
        with atomic_path(path, lambda tmp: _verify(tmp, kind, data.shape)) as tmp:
            if kind == "TIFF" and bits > 8:
                photometric = "minisblack" if picture.gray else "rgb"
                extra = ["unassalpha"] if picture.alpha is not None else None
                tifffile.imwrite(
                    tmp, data, photometric=photometric, extrasamples=extra,
                    compression="zlib", iccprofile=picture.icc,
                )
            elif kind == "PNG" and bits == 16:
                _write_png16(data, tmp, picture.icc)
            else:
                options = {"icc_profile": picture.icc} if picture.icc else {}
                if kind == "JPEG":
                    options["quality"] = 95
                Image.fromarray(data).save(tmp, format=kind, **options)
    except OSError as exc:
        raise bad_input(f"cannot write {path}: {exc}") from None


def _verify(path: str, kind: str, shape: tuple) -> None:
    """Reads a written file back whole: a short write (a full disk that the encoder did
    not notice) must fail here, before the file replaces anything."""
    height, width = shape[:2]
    try:
        if kind == "TIFF":
            size = tifffile.imread(path, key=0).shape[:2]
        elif kind == "PNG" and _png_bit_depth(path) == 16:
            reader_width, reader_height, rows, _ = png.Reader(filename=path).read()
            count = sum(1 for _ in rows)
            size = (reader_height, reader_width) if count == reader_height else (count, -1)
        else:
            with Image.open(path) as image:
                image.load()
                size = image.size[::-1]
    except Exception as exc:  # any decoder's complaint means the file is not whole
        raise OSError(f"the written file does not read back ({exc}); is the disk full?") \
            from None
    if tuple(size) != (height, width):
        raise OSError("the written file is incomplete; is the disk full?")


def _png_bit_depth(path: str) -> int:
    with open(path, "rb") as handle:
        header = handle.read(26)
    return header[24] if len(header) == 26 else 0


def _dtype_for(bits: int) -> np.dtype:
    return np.dtype({8: np.uint8, 16: np.uint16, 32: np.float32}[bits])


def _convert_alpha(alpha: np.ndarray, bits: int) -> np.ndarray:
    """Re-scales alpha only when the output format cannot hold its dtype."""
    top = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(alpha.dtype, 1.0)
    unit = alpha.astype(np.float64) / top
    if bits == 32:
        return unit.astype(np.float32)
    scale = 65535 if bits == 16 else 255
    return np.round(np.clip(unit, 0, 1) * scale).astype(_dtype_for(bits))
