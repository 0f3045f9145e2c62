"""``ecdp upscale IN... -o OUT``: super-resolve image files (under torchrun, each file on one rank)."""
import argparse
import contextlib
import functools
import os
from pathlib import Path

from ecdp import console
from ecdp.choices import MAX_PIXELS, QUALITY
from ecdp.commands import add_sampler_arguments, positive_int, sampler_options, set_threads
from ecdp.errors import UserError

EPILOG = """\
With one input, OUT is the output file, or a folder when it exists, ends in '/' or has no extension.
With several inputs, OUT is a folder (created if needed) and each output is named after its input
(same extension; .png when that format cannot hold true colour, e.g. GIF, or is not writable).

Files are processed one by one. A file that cannot be read or written is reported in one line on
stderr and gets no output; the other files are still processed, and the command then exits with
status 1. Outputs keep the input's mode, depth and sample type (grayscale, 16-bit, 32-bit float
gray, alpha; palette images become RGB or RGBA), its colour profile and EXIF, and its lossless or
lossy compression where the output format allows; they are written atomically: an error never
leaves a partial file. Animations and multi-page files are refused. Under torchrun every file is
upscaled by exactly one process, and the exit status counts the failures of all of them.
"""


def add_parser(subparsers):
    p = subparsers.add_parser("upscale", help="super-resolve image files", epilog=EPILOG,
                              description="Super-resolve images with an ECDP model.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IN", help="input images")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder (see below)")
    p.add_argument("--checkpoint", metavar="PATH", default="default",
                   help="model folder (model.safetensors and config.json); default: the built-in model")
    add_sampler_arguments(p)
    p.add_argument("--device", metavar="D", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    p.add_argument("--tile", type=positive_int, metavar="PX",
                   help="sample large images in overlapping tiles of PX LR pixels (bounds memory; images "
                        "above 1024x1024 pixels are tiled by 256 without it)")
    p.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse input images of more than N pixels (default: {MAX_PIXELS:,})")
    p.add_argument("--quality", type=_quality, default=QUALITY, metavar="Q",
                   help=f"quality 1-100 of lossy outputs: JPEG, AVIF and WebP from a lossy input (default: {QUALITY})")
    p.set_defaults(run=run)


def run(args):
    import torch

    from ecdp.images import write_image
    from ecdp.memory import memory_errors
    from ecdp.ranks import ranks

    outputs = plan_outputs(args.inputs, args.output)
    with ranks(args.device or ("cuda" if torch.cuda.is_available() else "cpu")) as process:
        upscaler = _upscaler(args, process.device)
        mine = process.share(zip(args.inputs, outputs))
        failed = 0
        one_file = len(outputs) == 1
        steps = functools.partial(console.progress, desc=f"upscale {args.inputs[0]}") if one_file else None
        with console.progress(len(mine), desc="upscale", unit="image", disable=one_file or process.rank > 0) as files:
            for src, dst in mine:
                try:
                    with memory_errors(f"{src}: not enough memory to upscale it"):   # it ends this file only
                        rgb, alpha, info = read_checked(src, dst, args.max_pixels, args.quality, upscaler.scale)
                        with _errors_named(src):
                            sr = upscaler.sample(rgb[None], steps)[0].cpu()
                        write_image(dst, sr, alpha, info, args.quality)
                except UserError as e:
                    console.write(f"ecdp upscale: error: {e}")
                    failed += 1
                files.update()
        failed = process.total(failed)
        if failed and len(outputs) > 1 and process.rank == 0:
            console.write(f"ecdp upscale: {failed} of {len(outputs)} images failed")
    return 1 if failed else 0


def read_checked(src, dst, max_pixels=MAX_PIXELS, quality=QUALITY, scale=1):
    """(rgb, alpha, info) of src (``ecdp.images.read_image``, its memory for a result `scale` times
    larger checked first), once dst is known to hold its result (``check_encodable``); UserError
    otherwise."""
    from ecdp.images import check_encodable, read_image

    rgb, alpha, info = read_image(src, max_pixels, scale=scale)
    check_encodable(dst, info, alpha is not None, quality)
    return rgb, alpha, info


@contextlib.contextmanager
def _errors_named(src):
    """A UserError raised inside comes out prefixed with src."""
    try:
        yield
    except UserError as e:
        raise UserError(f"{src}: {e}") from None


def plan_outputs(inputs, out):
    """The output path of each input: OUT itself for one input and a file OUT, else OUT/<input name>.

    Checked before anything runs: the format of an output file, that OUT is not a file when it
    names a folder, that its folder can be created and written, and that no input is overwritten.
    """
    from ecdp.fileio import check_writable
    from ecdp.images import output_suffix, save_format

    if len(inputs) == 1 and not _names_folder(out):
        save_format(out)
        paths = [Path(out)]
    elif Path(out).is_file():
        raise UserError(f"{out}: is a file, so it cannot be the output folder")
    else:
        paths = [Path(out) / (Path(src).stem + output_suffix(src)) for src in inputs]
    for folder in {path.parent for path in paths}:
        check_writable(folder, folder=True)
    _check_distinct(inputs, paths)
    return paths


def _names_folder(out):
    return Path(out).is_dir() or out.endswith(("/", os.sep)) or not Path(out).suffix


def _check_distinct(inputs, paths):
    """Refuse to overwrite an input or to write two inputs to the same file."""
    seen = {}
    for src, dst in zip(inputs, paths):
        target = dst.resolve()
        if target == Path(src).resolve():
            raise UserError(f"{dst}: is the input itself; choose another output")
        if target in seen:
            raise UserError(f"{seen[target]} and {src} would both be written to {dst}")
        seen[target] = src


def _upscaler(args, device):
    from ecdp.upscaler import Upscaler

    set_threads(args)
    return Upscaler.from_pretrained(args.checkpoint, device=device, tile=args.tile, **sampler_options(args))


def _quality(text):
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 100, got {text!r}")
    return int(text)
