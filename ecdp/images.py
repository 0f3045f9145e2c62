"""Image files for the CLI: any common mode in, the same mode out (DESIGN section 3).

The model sees RGB in [0, 1]. Grayscale is replicated to RGB and written back as the mean of the
three channels; alpha is kept aside, upscaled with the bicubic ``upscale`` and re-attached; 16-bit
grayscale is scaled by 65535 and written back in 16 bits; palette images come back as RGB (RGBA
when they have transparency), since super-resolution makes colors a palette cannot hold.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ecdp.errors import UserError
from ecdp.fileio import atomic_path
from ecdp.resize import upscale

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I")
SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}


@dataclass(frozen=True)
class ImageInfo:
    """What is needed to write a result in the mode of its input."""

    gray: bool = False
    bits: int = 8
    icc_profile: bytes | None = None


def read_image(path):
    """(rgb (3,H,W) float32 in [0, 1], alpha (1,H,W) or None, ImageInfo) of an image file, upright."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty")
    try:
        with Image.open(path) as img:
            img.load()
            return from_pil(ImageOps.exif_transpose(img))
    except Image.UnidentifiedImageError:
        raise UserError(f"{path}: not a readable image (cannot identify image file)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: not a readable image ({_reason(e)})") from None


def write_image(path, rgb, alpha, info):
    """Quantize rgb (3,H,W) (clamp, round) and write it atomically in the mode `info` records."""
    path = Path(path)
    fmt = save_format(path)
    img = to_pil(rgb, alpha, info)
    extra = {"icc_profile": info.icc_profile} if info.icc_profile else {}
    try:
        with atomic_path(path) as tmp:
            img.save(tmp, format=fmt, **SAVE_OPTIONS.get(fmt, {}), **extra)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: cannot be written as {fmt} ({_reason(e)})") from None


def from_pil(img):
    """(rgb (3,H,W), alpha (1,H,W) or None, ImageInfo) of a PIL image of any common mode."""
    info = ImageInfo(gray=img.mode in SIXTEEN_BIT or img.mode in ("1", "L", "LA"),
                     bits=16 if img.mode in SIXTEEN_BIT else 8, icc_profile=img.info.get("icc_profile"))
    if info.bits == 16:
        array = np.asarray(img).astype(np.float32)[..., None] / 65535
    else:
        array = np.asarray(_standard_mode(img), dtype=np.float32).reshape(img.height, img.width, -1) / 255
    pixels = torch.from_numpy(np.clip(array, 0, 1)).permute(2, 0, 1).contiguous()
    color = pixels[:1].expand(3, -1, -1).contiguous() if info.gray else pixels[:3]
    alpha = pixels[-1:] if pixels.shape[0] in (2, 4) else None
    return color, alpha, info


def to_pil(rgb, alpha, info):
    """The PIL image of rgb (3,H,W) in [0, 1], with alpha upscaled to its size, in the mode of `info`."""
    channels = rgb.mean(0, keepdim=True) if info.gray else rgb
    if alpha is not None:
        channels = torch.cat([channels, _fit(alpha, rgb.shape[-2:])])
    levels = 2**info.bits - 1
    array = (channels.float().clamp(0, 1) * levels).round().permute(1, 2, 0).cpu().numpy()
    array = array.astype(np.uint16 if info.bits == 16 else np.uint8)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_format(path):
    """The PIL format that writes `path`, from its extension."""
    fmt = _format(Path(path).suffix)
    if fmt is None:
        raise UserError(f"{path}: cannot write images with extension {Path(path).suffix or '(none)'!r}")
    return fmt


def output_suffix(path):
    """The extension of `path` if images can be written with it, else ".png"."""
    suffix = Path(path).suffix
    return suffix if _format(suffix) else ".png"


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
