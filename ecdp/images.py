"""Image files and in-memory images: any common mode in, the same mode, depth and sample type out (docs/design.md section 3).

The model sees RGB in [0, 1]. Grayscale is replicated to RGB and written back as the mean of the
three channels; alpha is kept aside, upscaled with the bicubic ``upscale`` and re-attached.
Samples keep their type: 8-bit and 16-bit integers (gray, RGB, RGBA; 16-bit colour PNG and TIFF
included) and 32-bit float gray in [0, 1]. Palette images come back as true colour (RGB, or RGBA
when they have transparency), since super-resolution makes colours a palette cannot hold. The
EXIF orientation is applied on reading; a colour profile and EXIF are carried to the output only
where they still describe its pixels. Refused, each in one sentence: animations and multi-page
files, 16-bit gray with alpha, integer samples above 16 bits and float samples outside [0, 1],
and files whose decoding (and upscaling) needs more memory than is available, estimated from the
header before anything is decoded.
"""
import dataclasses
import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import ExifTags, Image, ImageOps

from ecdp.choices import MAX_PIXELS, QUALITY
from ecdp.errors import UserError
from ecdp.fileio import atomic_path
from ecdp.memory import memory_errors, require_memory
from ecdp.resize import upscale

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
SAME_COLORS = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "I", "F", *SIXTEEN_BIT)
LEVELS = {"uint8": 255, "uint16": 65535}   # float samples are stored as they are, in [0, 1]


@dataclass(frozen=True)
class ImageInfo:
    """What is needed to write a result like its input: channels, sample type, metadata, compression."""

    gray: bool = False
    dtype: str = "uint8"            # numpy name of the sample type: uint8, uint16, float32 or float64
    icc_profile: bytes | None = None
    exif: bytes | None = None
    lossless: bool = True           # False for JPEG and lossy WebP inputs


DECODE_BYTES = 48
"""Bytes per pixel of reading an image, at most: Pillow's decoded pixels (4), the samples' array (up
to 8 for 16-bit RGBA), one float32 copy of up to 4 channels (16), and the RGB and alpha planes (16)."""

RESULT_BYTES = 40
"""Bytes per result pixel of an upscale and its writing: the float32 RGB result (12), the clamped
copy that is quantized (up to 16 with alpha), its samples (up to 8) and Pillow's image (4)."""


def read_image(path, max_pixels=MAX_PIXELS, scale=1):
    """(rgb (3,H,W) float32 in [0, 1], alpha (1,H,W) or None, ImageInfo) of an image file, upright.

    scale: the factor of the upscale that follows (1: none); the memory of decoding the image and
    of that upscale's result (DECODE_BYTES per pixel, RESULT_BYTES per result pixel) is checked
    against what is available before anything is decoded. A file that is missing, unreadable,
    animated, larger than `max_pixels`, too large for the memory, or of a refused sample type
    raises a UserError naming it; so does running out of memory while decoding it anyway.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    try:
        with _open(path, max_pixels, scale) as img, memory_errors(f"{path}: not enough memory to decode it"):
            sixteen_bit_color = _is_sixteen_bit_color(img)
            img.load()
            low = _low_bytes(path) if sixteen_bit_color else None
            lossless = img.format not in ("JPEG", "MPO") and not (img.format == "WEBP" and not _webp_lossless(path))
            rgb, alpha, info = from_pil(img, low)
    except Image.UnidentifiedImageError:
        raise UserError(f"{path}: not a readable image (cannot identify image file)") from None
    except PixelError as e:
        raise UserError(f"{path}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UserError(f"{path}: not a readable image ({_reason(e)})") from None
    return rgb, alpha, dataclasses.replace(info, lossless=lossless)


class PixelError(ValueError):
    """Pixels of a kind that is refused (see the module docstring)."""


class TooLarge(UserError):
    """An image larger than the pixel limit it is read with, or than the memory can take (a service
    answers it 413, not 400)."""


def _open(path, max_pixels, scale=1):
    """Image.open with our size and memory limits (see read_image) in place of Pillow's
    decompression-bomb check; only the header is read."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        img = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    pixels = img.width * img.height
    try:   # first: a larger --max-pixels must not be suggested for an image the memory cannot take
        check_memory(img.width, img.height, scale)
        if pixels > max_pixels:
            raise UserError(f"{img.width}x{img.height} is {pixels:,} pixels, more than the limit of {max_pixels:,}; "
                            f"pass --max-pixels {pixels} to allow it (it is then upscaled in tiles)")
    except UserError as e:
        img.close()
        raise TooLarge(f"{path}: {e}") from None
    return img


def check_memory(width: int, height: int, scale: int = 1) -> None:
    """Raise a UserError when reading a width x height image (and an upscale of it by `scale`, 1:
    none) needs more memory than is available: DECODE_BYTES per pixel, RESULT_BYTES per result pixel."""
    work = "upscaling" if scale > 1 else "decoding"
    require_memory(width * height * (DECODE_BYTES + scale**2 * RESULT_BYTES), f"{work} its {width}x{height} pixels")


def _is_sixteen_bit_color(img):
    """Whether Pillow decodes `img` (RGB or RGBA) from 16-bit samples, of which it keeps the high byte only."""
    raw = [t.args if isinstance(t.args, str) else t.args[0] for t in img.tile or []]
    return img.mode in ("RGB", "RGBA") and any(";16" in r for r in raw)


def _low_bytes(path):
    """The low bytes of the 16-bit samples of a colour image file, as an 8-bit PIL image.

    Pillow's decoder keeps the high byte of each 16-bit sample; decoding the same data with the
    byte order of the raw mode swapped keeps the low byte instead.
    """
    img = _open(path, float("inf"))
    swapped = {";16B": ";16L", ";16L": ";16B"}
    tiles = []
    for tile in img.tile:
        raw = tile.args if isinstance(tile.args, str) else tile.args[0]
        if raw[-4:] not in swapped or raw[:-4] not in ("RGB", "RGBA"):
            img.close()
            raise PixelError(f"16-bit samples of mode {raw[:-4] or img.mode} are not supported (write them as "
                             "8-bit, or as 16-bit gray, RGB or RGBA)")
        raw = raw[:-4] + swapped[raw[-4:]]
        tiles.append(tile._replace(args=raw if isinstance(tile.args, str) else (raw, *tile.args[1:])))
    img.tile = tiles
    with img:
        img.load()
        return img.copy()


def _webp_lossless(path):
    with open(path, "rb") as f:
        return b"VP8L" in f.read(64)


def from_pil(img, low=None):
    """(rgb (3,H,W), alpha (1,H,W) or None, ImageInfo) of a PIL image of any common mode, upright.

    low: the low bytes of 16-bit colour samples (see read_image), or None. Raises ValueError for an
    empty image and PixelError for refused samples and for animations and multi-page images (the
    second picture of a camera's MPO JPEG is ignored).
    """
    if img.width == 0 or img.height == 0:
        raise ValueError(f"the image is empty ({img.width}x{img.height})")
    frames = getattr(img, "n_frames", 1)
    if frames > 1 and img.format != "MPO":
        raise PixelError(f"has {frames} frames; ECDP upscales single images (each frame would get its own noise "
                         "and flicker), so save the frames as separate files first")
    upright = ImageOps.exif_transpose(img)
    array = _samples(upright)
    if low is not None:
        array = array.astype(np.uint16) * 256 + _samples(ImageOps.exif_transpose(low))
    same_colors = img.mode in SAME_COLORS
    info = ImageInfo(gray=array.ndim == 2 or array.shape[-1] < 3, dtype=array.dtype.name,
                     icc_profile=img.info.get("icc_profile") if same_colors else None, exif=_exif(upright))
    return from_array(array, info)


def from_array(array, info=None):
    """(rgb (3,H,W) float32 in [0, 1], alpha (1,H,W) or None, ImageInfo) of an HxW or HxWxC array.

    C is 1 to 4 (gray, gray + alpha, RGB, RGBA); integer samples are scaled by their largest
    value, float samples taken as they are.
    """
    pixels = array.reshape(*array.shape[:2], -1)
    info = info or ImageInfo(gray=pixels.shape[-1] < 3, dtype=array.dtype.name)
    samples = pixels.astype(np.float32)
    samples /= LEVELS.get(array.dtype.name, 1)
    pixels = torch.from_numpy(samples).permute(2, 0, 1)
    color = pixels[:1].expand(3, -1, -1).contiguous() if pixels.shape[0] < 3 else pixels[:3].contiguous()
    alpha = pixels[-1:].contiguous() if pixels.shape[0] in (2, 4) else None
    return color, alpha, info


def to_array(rgb, alpha, info):
    """The HxW or HxWxC numpy array of rgb (3,H,W) in [0, 1] (alpha upscaled to its size) in the mode of `info`."""
    channels = rgb.mean(0, keepdim=True) if info.gray else rgb
    if alpha is not None:
        channels = torch.cat([channels, _fit(alpha, rgb.shape[-2:])])
    channels = channels.float().clamp(0, 1)   # the one copy: scaled and rounded in place
    levels = LEVELS.get(info.dtype)
    if levels:
        channels.mul_(levels).round_()
    array = channels.permute(1, 2, 0).cpu().numpy().astype(info.dtype)
    return array[..., 0] if array.shape[-1] == 1 else array


def to_pil(rgb, alpha, info):
    """The PIL image of rgb (3,H,W) in [0, 1], with alpha upscaled to its size, in the mode of `info`,
    carrying the colour profile and EXIF that `info` keeps (in ``.info``, which Pillow's writers read)."""
    array = to_array(rgb, alpha, info)
    if not _pil_holds(array):
        raise PixelError(f"PIL cannot hold {_depth(array)} colour images; pass an array instead")
    img = Image.fromarray(array)
    img.info.update({k: v for k, v in (("icc_profile", info.icc_profile), ("exif", info.exif)) if v})
    return img


def write_image(path, rgb, alpha, info, quality=QUALITY):
    """Quantize rgb (3,H,W) (clamp, round) and write it atomically in the mode `info` records."""
    path = Path(path)
    fmt = save_format(path)
    with memory_errors(f"{path}: not enough memory to write it"):
        array = to_array(rgb, alpha, info)
        try:
            with atomic_path(path) as tmp:
                _encode(tmp, array, fmt, info, quality)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: cannot be written as {fmt} ({_reason(e)})") from None


def encode_image(rgb, alpha, info, fmt, quality=QUALITY) -> bytes:
    """The bytes of the file write_image would write in PIL format `fmt` (e.g. "PNG"), made in memory.

    rgb (3,H,W) in [0, 1], alpha (1,h,w) or None, as for write_image. Raises UserError when the
    format cannot hold the image.
    """
    buffer = io.BytesIO()
    try:
        _encode(buffer, to_array(rgb, alpha, info), fmt, info, quality)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot be written as {fmt} ({_reason(e)})") from None
    return buffer.getvalue()


def check_encodable(path, info, has_alpha, quality=QUALITY):
    """Raise the UserError write_image would raise for an image of this kind, by encoding a 2x2 one in memory."""
    fmt = save_format(path)
    probe = to_array(torch.zeros(3, 2, 2), torch.zeros(1, 2, 2) if has_alpha else None, info)
    try:
        _encode(io.BytesIO(), probe, fmt, info, quality)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: cannot be written as {fmt} ({_reason(e)})") from None


def save_format(path):
    """The PIL format that writes `path`, from its extension."""
    fmt = _format(Path(path).suffix)
    if fmt is None:
        raise UserError(f"{path}: cannot write images with extension {Path(path).suffix or '(none)'!r}")
    return fmt


def output_suffix(path):
    """The extension of `path` if its format writes true-colour RGB as it is, else ".png" (e.g. for GIF)."""
    suffix = Path(path).suffix
    fmt = _format(suffix)
    if fmt is None:
        return ".png"
    buffer = io.BytesIO()
    try:
        Image.new("RGB", (2, 2)).save(buffer, format=fmt)
        with Image.open(buffer) as back:
            keeps = back.mode == "RGB"
    except (OSError, ValueError, KeyError):
        keeps = False
    return suffix if keeps else ".png"


def _encode(target, array, fmt, info, quality):
    """Write `array` (from to_array) to a path or a file object in format `fmt`."""
    if not _pil_holds(array):
        if fmt == "PNG" and array.dtype == np.uint16:
            data = _png16(array, info)
            return target.write(data) if hasattr(target, "write") else Path(target).write_bytes(data)
        if fmt == "TIFF":
            return tifffile.imwrite(target, array, photometric="rgb", iccprofile=info.icc_profile,
                                    extrasamples=("unassalpha",) if array.shape[-1] == 4 else None)
        raise ValueError(f"{fmt} cannot hold {_depth(array)} colour; write PNG or TIFF")
    metadata = {k: v for k, v in (("icc_profile", info.icc_profile), ("exif", info.exif)) if v}
    Image.fromarray(array).save(target, format=fmt, **_save_options(fmt, info, quality), **metadata)


def _save_options(fmt, info, quality):
    if fmt == "JPEG":
        return {"quality": quality, "subsampling": 0}
    if fmt == "WEBP":
        return {"lossless": True} if info.lossless else {"quality": quality}
    if fmt == "AVIF":
        return {"quality": quality}
    return {}


def _pil_holds(array):
    """Whether a PIL image can hold this array's layout and type (not 16-bit or float colour)."""
    return array.dtype == np.uint8 or array.ndim == 2 and array.dtype in (np.uint16, np.float32)


def _depth(array):
    return "16-bit" if array.dtype == np.uint16 else f"{array.dtype.name} float"


def _png16(array, info):
    """A 16-bit RGB or RGBA PNG (no filtering; the zlib stream compresses it), with iCCP and eXIf chunks."""
    height, width, channels = array.shape
    rows = np.concatenate([np.zeros((height, 1), np.uint8),
                           array.astype(">u2").reshape(height, -1).view(np.uint8)], axis=1)
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2 if channels == 3 else 6, 0, 0, 0))]
    if info.icc_profile:
        chunks.append((b"iCCP", b"ICC profile\0\0" + zlib.compress(info.icc_profile)))
    if info.exif:
        chunks.append((b"eXIf", info.exif[6:] if info.exif.startswith(b"Exif\0\0") else info.exif))
    chunks += [(b"IDAT", zlib.compress(rows.tobytes(), 6)), (b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)) for kind, data in chunks)


def _samples(img):
    """The samples of a PIL image as an HxW or HxWxC array: uint8, uint16 (16-bit gray) or float32 (F)."""
    if img.mode in SIXTEEN_BIT:
        return np.asarray(img).astype(np.uint16)
    if img.mode == "I":
        array = np.asarray(img)
        if array.min() < 0 or array.max() > 65535:
            raise PixelError("32-bit integer samples outside 0..65535 are not supported (write 8 or 16 bits)")
        return array.astype(np.uint16)
    if img.mode == "F":
        return _unit_floats(np.asarray(img, dtype=np.float32))
    return np.asarray(_standard_mode(img), dtype=np.uint8)


def _unit_floats(array):
    """`array` if its samples are finite and in [0, 1], else a PixelError counting what is not."""
    finite = np.isfinite(array)
    outside = np.count_nonzero(finite & ((array < 0) | (array > 1)))
    if finite.all() and not outside:
        return array
    nan = np.count_nonzero(np.isnan(array))
    found = [f"{n:,} {what}" for n, what in ((nan, "NaN"), (array.size - np.count_nonzero(finite) - nan, "infinite"),
                                             (outside, "outside [0, 1]")) if n]
    values = array[finite]
    spread = f" (the finite ones from {values.min():g} to {values.max():g})" if values.size else ""
    raise PixelError(f"float samples must be finite and lie in [0, 1]; found {', '.join(found)} of "
                     f"{array.size:,} samples{spread}")


def _exif(img):
    """EXIF bytes of an upright image without the tags that describe the input's pixels, or None."""
    exif = img.getexif()
    if not exif:
        return None
    exif.pop(ExifTags.Base.Orientation, None)
    exif_ifd = exif.get_ifd(ExifTags.IFD.Exif)
    for tag in (ExifTags.Base.ExifImageWidth, ExifTags.Base.ExifImageHeight):
        exif_ifd.pop(tag, None)
    return exif.tobytes()


def _format(suffix):
    fmt = Image.registered_extensions().get(suffix.lower())
    return fmt if fmt in Image.SAVE else None


def _standard_mode(img):
    """`img` as L, LA, RGB or RGBA."""
    if img.mode in ("L", "LA", "RGB", "RGBA"):
        return img
    if img.mode == "1":
        return img.convert("L")
    if img.mode in ("P", "PA"):
        return img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    return img.convert("RGBA" if "A" in img.mode else "RGB")


def _fit(alpha, size):
    """`alpha` brought to `size` by the bicubic upscale of an integer factor."""
    scale = size[0] // alpha.shape[-2]
    if scale < 1 or alpha.shape[-2] * scale != size[0] or alpha.shape[-1] * scale != size[1]:
        raise ValueError(f"alpha of size {tuple(alpha.shape[-2:])} does not scale to {tuple(size)}")
    return upscale(alpha.to(torch.float32), scale) if scale > 1 else alpha


def _reason(e):
    """A short reason from an exception, without a repeated file name."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text.splitlines()[0].rstrip(".")
