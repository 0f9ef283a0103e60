import numpy as np
import png
import pytest
import tifffile
from PIL import Image

from nst_engine import EngineError, load_picture, save_picture
from nst_engine.pictures import Picture, keep_colors, picture_from_array, picture_to_array


def bad(path, match):
    with pytest.raises(EngineError) as info:
        load_picture(path)
    assert info.value.kind == "bad_input"
    assert match in info.value.message
    return info.value


def gradient16(width=40, height=30, channels=3):
    y, x = np.mgrid[0:height, 0:width]
    planes = [x * 1500 + y, y * 2000 + 7, (x * y * 37) % 65536, (x * 900 + 5)][:channels]
    return np.stack(planes, axis=2).astype(np.uint16)


def test_16_bit_png_round_trip(tmp_path):
    data = gradient16(channels=4)
    source = tmp_path / "deep.png"
    png.from_array(data.reshape(30, -1), "RGBA;16").save(str(source))
    picture = load_picture(source)
    assert picture.bits == 16 and picture.alpha.dtype == np.uint16
    assert len(np.unique(picture.rgb[..., 0])) > 256
    save_picture(picture, tmp_path / "out.png")
    _, _, rows, info = png.Reader(filename=str(tmp_path / "out.png")).asDirect()
    assert info["bitdepth"] == 16
    assert np.array_equal(np.vstack(list(rows)).reshape(30, 40, 4), data)


def test_16_bit_tiff_round_trip_with_icc(tmp_path):
    data = gradient16()
    source = tmp_path / "deep.tif"
    tifffile.imwrite(source, data, photometric="rgb")
    picture = load_picture(source)
    assert picture.bits == 16
    picture.icc = b"fake-icc-profile-bytes"
    save_picture(picture, tmp_path / "out.tif")
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert np.array_equal(tif.asarray(), data)
        assert tif.pages[0].tags["InterColorProfile"].value == b"fake-icc-profile-bytes"


def test_8_bit_alpha_exact_and_icc_kept(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    source = tmp_path / "in.png"
    Image.fromarray(rgba, "RGBA").save(source, icc_profile=b"icc!")
    picture = load_picture(source)
    save_picture(picture, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as out:
        assert np.array_equal(np.asarray(out), rgba)
        assert out.info.get("icc_profile") == b"icc!"


def test_exif_orientation_applied(tmp_path):
    image = Image.new("RGB", (40, 20), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert load_picture(tmp_path / "rot.jpg").size == (20, 40)


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "I;16", "1"])
def test_other_modes_are_converted(tmp_path, mode):
    image = Image.new("RGB", (32, 32), (200, 100, 50)).convert(mode)
    path = tmp_path / f"m.{'tif' if mode == 'CMYK' else 'png'}"
    image.save(path)
    picture = load_picture(path)
    assert picture.rgb.shape == (32, 32, 3)
    assert picture.gray == (mode in ("LA", "I;16", "1"))
    assert (picture.alpha is not None) == (mode == "LA")


def test_animated_image_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ("blue", "red")]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    picture = load_picture(tmp_path / "a.gif")
    assert picture.rgb[0, 0, 2] > 0.9 and picture.rgb[0, 0, 0] < 0.1


def test_bad_inputs(tmp_path, monkeypatch):
    bad(tmp_path / "missing.jpg", "not found")
    (tmp_path / "text.jpg").write_text("hello")
    bad(tmp_path / "text.jpg", "not an image")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    bad(tmp_path / "cut.png", "cut.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    bad(tmp_path / "dot.png", "at least")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    bad(tmp_path / "whole.png", "decompression bomb")


def test_output_problems_leave_nothing(tmp_path):
    picture = Picture(np.zeros((20, 20, 3), np.float32))
    for target, match in ((tmp_path / "no" / "x.png", "does not exist"),
                          (tmp_path / "x.bmp", "unsupported")):
        with pytest.raises(EngineError, match=match):
            save_picture(picture, target)
    assert list(tmp_path.iterdir()) == []


def test_jpeg_output_of_16_bit_warns(tmp_path):
    picture = Picture(np.full((20, 20, 3), 0.5, np.float32), bits=16)
    with pytest.warns(UserWarning, match="8 bits"):
        save_picture(picture, tmp_path / "x.jpg")


def test_protocol_arrays_keep_alpha_bits():
    rng = np.random.default_rng(2)
    data = rng.random((18, 20, 4), dtype=np.float32)
    picture = picture_from_array(data)
    assert np.array_equal(picture_to_array(picture)[..., 3], data[..., 3])
    gray = picture_from_array(data[..., :2].copy())
    assert gray.gray and picture_to_array(gray).shape == (18, 20, 2)
    with pytest.raises(EngineError):
        picture_from_array(np.full((18, 20, 3), np.nan, np.float32))


def test_a_received_layer_becomes_the_picture_without_a_copy():
    rng = np.random.default_rng(4)
    data = rng.uniform(-0.5, 1.5, (18, 20, 4)).astype(np.float32)
    data[0, 0, :3] = 3e38  # finite, but a float32 sum of them overflows
    alpha = data[..., 3].copy()
    expected = picture_from_array(data.copy())  # the copying path
    picture = picture_from_array(data, owned=True)
    assert np.shares_memory(picture.rgb, data) and np.shares_memory(picture.alpha, data)
    assert np.array_equal(picture.rgb, expected.rgb)  # clipped in place, as copied
    assert picture.rgb.min() == 0 and picture.rgb.max() == 1
    assert np.array_equal(picture.alpha, alpha) and picture.bits == 32
    assert np.array_equal(picture_to_array(picture), picture_to_array(expected))
    for bad in (np.nan, np.inf, -np.inf):
        broken = rng.random((18, 20, 3), dtype=np.float32)
        broken[5, 7, 1] = bad
        with pytest.raises(EngineError, match="NaN or infinite"):
            picture_from_array(broken, owned=True)
    gray = rng.random((18, 20, 2), dtype=np.float32)
    assert not np.shares_memory(picture_from_array(gray, owned=True).rgb, gray)


def test_keep_colors_is_exact_in_chroma():
    rng = np.random.default_rng(3)
    content = rng.uniform(0.3, 0.7, (8, 8, 3)).astype(np.float32)
    stylised = rng.uniform(0.3, 0.7, (8, 8, 3)).astype(np.float32)
    out = keep_colors(stylised, content)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    assert np.allclose(out @ luma, stylised @ luma, atol=1e-6)
    assert np.allclose(out - (out @ luma)[..., None], content - (content @ luma)[..., None],
                       atol=1e-6)
