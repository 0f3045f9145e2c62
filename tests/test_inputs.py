"""Real-world inputs to ``ecdp upscale`` and ``Upscaler.upscale``: depths, frames, metadata, encodings, values, sizes."""
import struct
import warnings
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import ExifTags, Image, ImageCms

from ecdp.errors import UserError
from ecdp.images import ImageInfo, _png16, read_image
from ecdp.upscaler import Upscaler
from helpers import SCALE, files_under, one_line, random_uint8, save_tiny_model, upscale


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("model"), steps=1))


@pytest.fixture(scope="module")
def upscaler(model):
    return Upscaler.from_pretrained(model)


def random_uint16(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)


def png_header_only(path, width, height):
    """A PNG that declares width x height and holds the first rows only: a small file of a huge image."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(bytes(2 * (1 + 3 * width)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows))


def exif_jpeg(path, orientation, w=12, h=8):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "ECDP test camera"
    Image.fromarray(random_uint8((h, w, 3))).save(path, exif=exif.tobytes(), quality=95)


def no_network(monkeypatch):
    """Make any sampling fail loudly, to show that an error came before the network ran."""
    def fail(*args, **kwargs):
        raise AssertionError("the network ran")
    monkeypatch.setattr("ecdp.upscaler.Upscaler.sample", fail)


# Pixel formats

@pytest.mark.parametrize("channels", [3, 4])
def test_sixteen_bit_color_png_stays_sixteen_bit(model, tmp_path, channels):
    src = tmp_path / "in.png"
    src.write_bytes(_png16(random_uint16((32, 48, channels)), ImageInfo()))
    assert upscale(model, src, "-o", tmp_path / "out.png") == 0
    data = (tmp_path / "out.png").read_bytes()
    assert data[24] == 16 and data[25] == (2 if channels == 3 else 6)   # IHDR: bit depth, colour type
    rgb, alpha, info = read_image(tmp_path / "out.png")
    assert info.dtype == "uint16" and rgb.shape == (3, SCALE * 32, SCALE * 48) and (alpha is not None) == (channels == 4)
    levels = (rgb * 65535).round().to(torch.int64)
    assert (levels % 257 != 0).float().mean() > 0.9   # real 16-bit levels, not 8-bit ones scaled up


def test_sixteen_bit_rgba_tiff_stays_sixteen_bit(model, tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", random_uint16((8, 12, 4)), photometric="rgb", extrasamples=("unassalpha",))
    assert upscale(model, tmp_path / "in.tif", "-o", tmp_path / "out/") == 0
    out = tifffile.imread(tmp_path / "out" / "in.tif")
    assert out.dtype == np.uint16 and out.shape == (SCALE * 8, SCALE * 12, 4) and np.any(out % 257)


def test_sixteen_bit_gray_with_alpha_is_refused(model, tmp_path, capsys):
    info = ImageInfo()
    data = bytearray(_png16(random_uint16((8, 8, 4)), info))
    # the same bytes read as 16-bit gray + alpha of twice the width: colour type 4
    ihdr = struct.pack(">IIBBBBB", 16, 8, 16, 4, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    (tmp_path / "la.png").write_bytes(bytes(data))
    assert upscale(model, tmp_path / "la.png", "-o", tmp_path / "out.png") == 1
    assert "16-bit samples of mode LA are not supported" in one_line(capsys)
    assert not (tmp_path / "out.png").exists()


def test_float_gray_tiff_stays_float(model, tmp_path):
    gray = np.random.default_rng(0).random((8, 12), dtype=np.float32)
    tifffile.imwrite(tmp_path / "in.tif", gray)
    assert upscale(model, tmp_path / "in.tif", "-o", tmp_path / "out.tif") == 0
    with Image.open(tmp_path / "out.tif") as out:
        assert out.mode == "F" and out.size == (SCALE * 12, SCALE * 8)
        values = np.asarray(out)
    assert abs(values.mean() - gray.mean()) < 0.1 and values.max() > 0.5


def test_float_tiff_outside_unit_range_is_refused(model, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "in.tif", np.full((8, 8), 200.0, np.float32))
    assert upscale(model, tmp_path / "in.tif", "-o", tmp_path / "out.tif") == 1
    assert "float samples must be finite and lie in [0, 1]; found 64 outside [0, 1] of 64 samples (the finite ones from 200 to 200)" in one_line(capsys)


def test_a_nan_sample_is_counted_not_hidden(model, tmp_path, capsys):
    array = np.full((8, 8), 0.5, np.float32)
    array[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "in.tif", array)
    assert upscale(model, tmp_path / "in.tif", "-o", tmp_path / "out.tif") == 1
    assert one_line(capsys).endswith("float samples must be finite and lie in [0, 1]; found 1 NaN of 64 samples "
                                     "(the finite ones from 0.5 to 0.5)")
    assert files_under(tmp_path) == ["in.tif"]


@pytest.mark.parametrize("value, found", [(np.nan, "64 NaN"), (np.inf, "64 infinite")])
def test_an_image_without_a_finite_sample_is_one_sentence_and_no_warning(model, tmp_path, capsys, value, found):
    tifffile.imwrite(tmp_path / "in.tif", np.full((8, 8), value, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # numpy's "All-NaN slice" and the like would fail here
        assert upscale(model, tmp_path / "in.tif", "-o", tmp_path / "out.tif") == 1
    assert one_line(capsys).endswith(f"float samples must be finite and lie in [0, 1]; found {found} of 64 samples")


# Frames

def test_animated_gif_is_refused(model, tmp_path, capsys):
    frames = [Image.fromarray(random_uint8((8, 8, 3), seed=i)).convert("P") for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert upscale(model, tmp_path / "anim.gif", "-o", tmp_path / "out") == 1
    assert "anim.gif: has 3 frames; ECDP upscales single images" in one_line(capsys)
    assert files_under(tmp_path / "out") == []


def test_the_api_refuses_animations_as_the_cli_does(upscaler, tmp_path):
    frames = [Image.fromarray(random_uint8((8, 8, 3), seed=i)).convert("P") for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    tifffile.imwrite(tmp_path / "pages.tif", random_uint8((2, 8, 8)), photometric="minisblack", metadata=None)
    for name, frames in (("anim.gif", 3), ("pages.tif", 2)):
        with Image.open(tmp_path / name) as image, pytest.raises(ValueError, match=f"^has {frames} frames; "):
            upscaler.upscale(image)


def test_multi_page_tiff_is_refused(model, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "pages.tif", random_uint8((3, 8, 8)), photometric="minisblack", metadata=None)
    assert upscale(model, tmp_path / "pages.tif", "-o", tmp_path / "out.tif") == 1
    assert "has 3 frames" in one_line(capsys)


def test_animated_png_is_refused(model, tmp_path, capsys):
    frames = [Image.fromarray(random_uint8((8, 8, 3), seed=i)) for i in range(2)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:], duration=50)
    assert upscale(model, tmp_path / "anim.png", "-o", tmp_path / "out.png") == 1
    assert "has 2 frames" in one_line(capsys)


# Metadata

@pytest.mark.parametrize("orientation", [6, 3])
def test_orientation_is_applied_by_the_api_as_by_the_cli(model, upscaler, tmp_path, orientation):
    exif_jpeg(tmp_path / "in.jpg", orientation)
    with Image.open(tmp_path / "in.jpg") as image:
        api = upscaler.upscale(image)
    assert upscale(model, tmp_path / "in.jpg", "-o", tmp_path / "out.png") == 0
    with Image.open(tmp_path / "out.png") as cli:
        assert api.size == cli.size == ((SCALE * 8, SCALE * 12) if orientation == 6 else (SCALE * 12, SCALE * 8))
        np.testing.assert_array_equal(np.asarray(api), np.asarray(cli))
        assert ExifTags.Base.Orientation not in cli.getexif()


def test_exif_is_kept_without_the_orientation(model, tmp_path):
    exif_jpeg(tmp_path / "in.jpg", 6)
    assert upscale(model, tmp_path / "in.jpg", "-o", tmp_path / "out/") == 0
    with Image.open(tmp_path / "out" / "in.jpg") as out:
        exif = out.getexif()
    assert exif[ExifTags.Base.Make] == "ECDP test camera" and ExifTags.Base.Orientation not in exif


def test_profile_of_a_converted_mode_is_dropped(model, tmp_path):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(random_uint8((8, 8, 3))).save(tmp_path / "rgb.png", icc_profile=srgb)
    Image.fromarray(random_uint8((8, 8, 4))).convert("CMYK").save(tmp_path / "cmyk.jpg", icc_profile=srgb)
    assert upscale(model, tmp_path / "rgb.png", tmp_path / "cmyk.jpg", "-o", tmp_path / "out") == 0
    with Image.open(tmp_path / "out" / "rgb.png") as rgb, Image.open(tmp_path / "out" / "cmyk.jpg") as cmyk:
        assert rgb.info.get("icc_profile") == srgb and cmyk.mode == "RGB" and "icc_profile" not in cmyk.info


def test_the_api_keeps_the_colour_profile_and_exif_as_the_cli_does(model, upscaler, tmp_path):
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "ECDP test camera"
    Image.fromarray(random_uint8((8, 12, 3))).save(tmp_path / "in.jpg", icc_profile=profile, exif=exif)
    with Image.open(tmp_path / "in.jpg") as image:
        api = upscaler.upscale(image)
    assert api.info["icc_profile"] == profile and api.getexif()[ExifTags.Base.Make] == "ECDP test camera"
    api.save(tmp_path / "api.png")
    assert upscale(model, tmp_path / "in.jpg", "-o", tmp_path / "cli.png") == 0
    with Image.open(tmp_path / "api.png") as saved, Image.open(tmp_path / "cli.png") as cli:
        assert saved.info["icc_profile"] == cli.info["icc_profile"] == profile


# Output encoding

def test_rgba_to_jpeg_is_refused_before_the_network_runs(model, tmp_path, capsys, monkeypatch):
    no_network(monkeypatch)
    Image.fromarray(random_uint8((8, 8, 4))).save(tmp_path / "in.png")
    assert upscale(model, tmp_path / "in.png", "-o", tmp_path / "out.jpg") == 1
    assert "cannot be written as JPEG (cannot write mode RGBA as JPEG)" in one_line(capsys)
    assert not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize("mode, out", [("I;16", "out.jpg"), ("F", "out.png")])
def test_depths_a_format_cannot_hold_are_refused_before_the_network_runs(model, tmp_path, capsys, monkeypatch,
                                                                        mode, out):
    no_network(monkeypatch)
    array = random_uint16((8, 8)) if mode == "I;16" else np.random.default_rng(0).random((8, 8), dtype=np.float32)
    Image.fromarray(array).save(tmp_path / "in.tif")
    assert upscale(model, tmp_path / "in.tif", "-o", tmp_path / out) == 1
    assert f"{out}: cannot be written as" in one_line(capsys)


def test_output_folder_that_cannot_be_made_is_refused_first(model, tmp_path, capsys, monkeypatch):
    no_network(monkeypatch)
    Image.fromarray(random_uint8((8, 8, 3))).save(tmp_path / "in.png")
    (tmp_path / "file").write_text("")
    assert upscale(model, tmp_path / "in.png", "-o", tmp_path / "file" / "sub" / "out.png") == 1
    assert "is a file, not a folder" in one_line(capsys)


def test_lossless_and_lossy_inputs_keep_their_nature(model, tmp_path):
    image = Image.fromarray(random_uint8((8, 8, 3)))
    image.save(tmp_path / "lossless.webp", lossless=True)
    image.save(tmp_path / "lossy.webp", quality=80)
    image.save(tmp_path / "photo.jpg")
    assert upscale(model, tmp_path / "lossless.webp", tmp_path / "lossy.webp", tmp_path / "photo.jpg",
                   "-o", tmp_path / "out") == 0
    assert (tmp_path / "out" / "lossless.webp").read_bytes()[12:16] == b"VP8L"
    assert (tmp_path / "out" / "lossy.webp").read_bytes()[12:16] == b"VP8 "
    with Image.open(tmp_path / "out" / "photo.jpg") as out:
        assert out.format == "JPEG"


def test_quality_option_reaches_the_encoder(model, tmp_path):
    Image.fromarray(random_uint8((16, 16, 3))).save(tmp_path / "in.png")
    assert upscale(model, tmp_path / "in.png", "-o", tmp_path / "q20.jpg", "--quality", 20) == 0
    assert upscale(model, tmp_path / "in.png", "-o", tmp_path / "q95.jpg") == 0
    assert (tmp_path / "q20.jpg").stat().st_size < 0.6 * (tmp_path / "q95.jpg").stat().st_size


def test_palette_gif_becomes_true_color_png_unless_a_palette_format_is_asked(model, tmp_path):
    Image.fromarray(random_uint8((8, 8, 3))).quantize(16).save(tmp_path / "pal.gif")
    assert upscale(model, tmp_path / "pal.gif", "-o", tmp_path / "out/") == 0
    assert files_under(tmp_path / "out") == ["pal.png"]
    with Image.open(tmp_path / "out" / "pal.png") as out:
        assert out.mode == "RGB"
    assert upscale(model, tmp_path / "pal.gif", "-o", tmp_path / "asked.gif") == 0
    with Image.open(tmp_path / "asked.gif") as out:
        assert out.mode == "P" and out.size == (SCALE * 8, SCALE * 8)


# Values

def test_nan_pixel_is_a_value_error(upscaler):
    y = torch.rand(1, 3, 16, 16)
    y[0, 1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="holds 1 non-finite values"):
        upscaler.upscale(y)


def test_infinite_float_array_is_a_value_error(upscaler):
    array = np.random.default_rng(0).random((8, 8, 3), dtype=np.float32)
    array[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        upscaler.upscale(array)


def test_float_tensor_of_0_to_255_is_a_value_error(upscaler):
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], found 0 to 255 \(divide 0..255 values by 255\)"):
        upscaler.upscale(torch.linspace(0, 255, 3 * 64).reshape(1, 3, 8, 8))


def test_negative_float_array_is_a_value_error(upscaler):
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], found -0.5"):
        upscaler.upscale(np.full((8, 8), -0.5, np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_arrays_keep_their_layout_and_dtype(upscaler, dtype):
    array = np.random.default_rng(0).random((8, 10, 4)).astype(dtype)
    out = upscaler.upscale(array)
    assert out.dtype == dtype and out.shape == (SCALE * 8, SCALE * 10, 4) and 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("image", [torch.rand(1, 3, 0, 0), torch.rand(0, 3, 8, 8), Image.new("RGB", (0, 0)),
                                   np.zeros((0, 5, 3), np.uint8)], ids=["no-pixels", "empty-batch", "pil-0x0", "array"])
def test_empty_inputs_are_value_errors(upscaler, image):
    with pytest.raises(ValueError, match="empty"):
        upscaler.upscale(image)


# Size limits

def test_huge_png_is_refused_in_our_words(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ecdp.memory.available_memory", lambda device=None: 10**15)
    png_header_only(tmp_path / "huge.png", 13500, 13500)
    assert upscale(model, tmp_path / "huge.png", "--tile", 64, "-o", tmp_path / "out.png") == 1
    assert one_line(capsys).endswith("huge.png: 13500x13500 is 182,250,000 pixels, more than the limit of 16,777,216; "
                                     "pass --max-pixels 182250000 to allow it (it is then upscaled in tiles)")
    assert not (tmp_path / "out.png").exists()


def test_max_pixels_sets_the_limit(model, tmp_path, capsys):
    Image.fromarray(random_uint8((10, 12, 3))).save(tmp_path / "in.png")
    assert upscale(model, tmp_path / "in.png", "--max-pixels", 119, "-o", tmp_path / "out.png") == 1
    assert "12x10 is 120 pixels, more than the limit of 119; pass --max-pixels 120" in one_line(capsys)
    assert upscale(model, tmp_path / "in.png", "--max-pixels", 120, "-o", tmp_path / "out.png") == 0


def test_no_larger_limit_is_suggested_for_an_image_the_memory_cannot_take(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ecdp.memory.available_memory", lambda device=None: 10**9)
    png_header_only(tmp_path / "huge.png", 13500, 13500)
    assert upscale(model, tmp_path / "huge.png", "-o", tmp_path / "out.png") == 1
    assert one_line(capsys).endswith("huge.png: upscaling its 13500x13500 pixels needs 125.4 GB of memory and 1.0 GB "
                                     "are available")
    assert not (tmp_path / "out.png").exists()


def test_12000_square_png_is_refused_by_default(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("ecdp.memory.available_memory", lambda device=None: 10**15)
    png_header_only(tmp_path / "big.png", 12000, 12000)
    assert upscale(model, tmp_path / "big.png", "--tile", 64, "-o", tmp_path / "out.png") == 1
    assert "big.png: 12000x12000 is 144,000,000 pixels, more than the limit" in one_line(capsys)


def test_the_api_checks_the_memory_of_a_lazily_opened_image_before_decoding_it(upscaler, tmp_path, monkeypatch):
    monkeypatch.setattr("ecdp.memory.available_memory", lambda device=None: 10**9)
    png_header_only(tmp_path / "huge.png", 13500, 13500)
    Image.MAX_IMAGE_PIXELS, limit = None, Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(tmp_path / "huge.png") as image, pytest.raises(
                UserError, match=r"^upscaling its 13500x13500 pixels needs 125.4 GB of memory and 1.0 GB are available$"):
            upscaler.upscale(image)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
