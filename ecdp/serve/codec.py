"""What a request carries and what its answer holds: query options, the image in the body, the image out.

The body is read exactly as ``ecdp upscale`` reads a file (``ecdp.images.read_image``: every mode,
depth, orientation and refusal of the CLI) and the answer is encoded as it writes one
(``ecdp.images.encode_image``), so that the same file and seed give the same pixels and metadata.
"""
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from PIL import Image

from ecdp.choices import GRIDS, QUALITY, SOLVERS
from ecdp.errors import UserError
from ecdp.images import ImageInfo, TooLarge, check_encodable, encode_image, output_suffix, read_image, save_format

MAX_STEPS = 64          # steps of a fixed-step solver a request may ask for: its cost grows with them
MAX_SEED = 2**63 - 1
# read_image lifts Pillow's global decompression-bomb limit while it opens a file (it applies its own):
# the service's decoding threads take turns, so that none sees the limit another one changed.
PILLOW_LIMIT = threading.Lock()


class RequestError(Exception):
    """A request the service refuses: an HTTP status and one sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Options:
    """A request's query parameters: seed, sampler overrides (None: the model's), output format and quality."""

    seed: int = 0
    solver: str | None = None
    steps: int | None = None
    grid: str | None = None
    format: str | None = None   # a file extension without the dot ("png"); None: the input's format
    quality: int = QUALITY


def parse_options(query: Mapping[str, str]) -> Options:
    """Options from query parameters; raises RequestError 400 naming an unknown or bad one."""
    unknown = sorted(set(query) - set(Options.__dataclass_fields__))
    if unknown:
        raise RequestError(400, f"unknown query parameter {unknown[0]!r}; the parameters are "
                                f"{', '.join(Options.__dataclass_fields__)}")
    values = {}
    if "seed" in query:
        values["seed"] = _whole(query, "seed", 0, MAX_SEED)
    if "steps" in query:
        values["steps"] = _whole(query, "steps", 1, MAX_STEPS)
    if "quality" in query:
        values["quality"] = _whole(query, "quality", 1, 100)
    for name, choices in (("solver", SOLVERS), ("grid", GRIDS)):
        if name in query:
            if query[name] not in choices:
                raise RequestError(400, f"{name} must be one of {', '.join(choices)}, got {query[name]!r}")
            values[name] = query[name]
    if "format" in query:
        values["format"] = query["format"].lower().lstrip(".")
    return Options(**values)


def _whole(query, name, low, high):
    text = query[name]
    if not text.isdigit() or not low <= int(text) <= high:
        raise RequestError(400, f"{name} must be a whole number from {low} to {high}, got {text!r}")
    return int(text)


@dataclass
class Decoded:
    """An image read from a request body: rgb (3,H,W) and alpha (1,H,W) or None, float32 in [0, 1];
    info as ``read_image`` gives it; fmt the PIL format of the answer."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    info: ImageInfo
    fmt: str


def decode(body: bytes, options: Options, max_pixels: int) -> Decoded:
    """Read the image in a request body, and check that the answer's format can hold its result.

    Raises RequestError: 400 for an empty body, a file that is not a readable image or holds
    refused samples, or a format that cannot hold the result; 413 for more than max_pixels pixels.
    """
    if not body:
        raise RequestError(400, "the request body is empty; send an image file")
    with tempfile.TemporaryDirectory(prefix="ecdp-serve-") as folder, PILLOW_LIMIT:
        path = Path(folder) / "body"
        path.write_bytes(body)
        try:
            rgb, alpha, info = read_image(path, max_pixels)
        except TooLarge as e:
            raise RequestError(413, f"the request body: {_sentence(e, path)}") from None
        except UserError as e:
            raise RequestError(400, f"the request body: {_sentence(e, path)}") from None
        suffix = "." + options.format if options.format else output_suffix("x" + _suffix_of(path))
    name = "answer" + suffix
    try:
        fmt = save_format(name)
    except UserError:
        raise RequestError(400, f"format {options.format!r} is not an image format this service writes "
                                "(png, jpg, webp, tif, ...)") from None
    try:
        check_encodable(name, info, alpha is not None, options.quality)
    except UserError as e:
        raise RequestError(400, f"the result {_sentence(e, name)}") from None
    return Decoded(rgb, alpha, info, fmt)


def encode(decoded: Decoded, sr: torch.Tensor, quality: int) -> bytes:
    """The answer's file: sr (3, s H, s W) in [0, 1] with the input's alpha, mode and metadata, in decoded.fmt."""
    return encode_image(sr, decoded.alpha, decoded.info, decoded.fmt, quality)


def media_type(fmt: str) -> str:
    """The MIME type of a PIL format ("image/png")."""
    return Image.MIME.get(fmt, "application/octet-stream")


def _suffix_of(path):
    """The usual extension of the format of the image file at path (".png" when it cannot be told)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                fmt = img.format
        except (OSError, Image.DecompressionBombError):
            return ".png"
    return next((ext for ext, name in Image.registered_extensions().items() if name == fmt), ".png")


def _sentence(error, path):
    """The error's message without the file name it starts with."""
    return str(error).removeprefix(f"{path}: ").rstrip(".")
