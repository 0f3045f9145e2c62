"""``ecdp upscale IN... -o OUT``: super-resolve image files."""
import argparse
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ecdp.errors import UserError
from ecdp.images import output_suffix, read_image, save_format, write_image
from ecdp.sampling import SOLVERS
from ecdp.upscaler import ENGINES, GRIDS, Upscaler

EPILOG = """\
With one input, OUT is the output file, or a folder when it exists, ends in '/' or has no extension.
With several inputs, OUT is a folder (created if needed) and each output is named after its input
(same extension; .png when images cannot be written in that format).

Files are processed one by one. A file that cannot be read or written is reported in one line on
stderr and gets no output; the other files are still processed, and the command then exits with
status 1. Outputs keep the input's mode (grayscale, 16-bit, alpha; palette images become RGB or
RGBA) and are written atomically: an error never leaves a partial file.
"""


def add_parser(subparsers):
    p = subparsers.add_parser("upscale", help="super-resolve image files", epilog=EPILOG,
                              description="Super-resolve images with an ECDP model.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IN", help="input images")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file or folder (see below)")
    p.add_argument("--checkpoint", metavar="PATH", default="default",
                   help="model folder (model.safetensors and config.json); default: the built-in model")
    p.add_argument("--engine", choices=ENGINES, default="fast",
                   help="fast (conditioning cache; bf16 and CUDA graphs on GPU) or reference (default: fast)")
    p.add_argument("--compile", action="store_true", help="run the fast engine's network through torch.compile")
    p.add_argument("--solver", choices=SOLVERS, help="ODE solver (default: the model's)")
    p.add_argument("--steps", type=_positive_int, metavar="N", help="solver steps (default: the model's)")
    p.add_argument("--grid", choices=GRIDS, help="time grid of fixed-step solvers (default: the model's)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="noise seed (default: 0)")
    p.add_argument("--device", metavar="D", help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    p.add_argument("--tile", type=_positive_int, metavar="PX",
                   help="sample large images in overlapping tiles of PX LR pixels (bounds memory)")
    p.set_defaults(run=run)


def run(args):
    outputs = plan_outputs(args.inputs, args.output)
    upscaler = _upscaler(args)
    failed = 0
    for src, dst in tqdm(list(zip(args.inputs, outputs)), disable=len(outputs) < 2, unit="image", file=sys.stderr):
        try:
            upscale_file(upscaler, src, dst)
        except UserError as e:
            tqdm.write(f"ecdp upscale: error: {e}", file=sys.stderr)
            failed += 1
    if failed and len(outputs) > 1:
        tqdm.write(f"ecdp upscale: {failed} of {len(outputs)} images failed", file=sys.stderr)
    return 1 if failed else 0


def upscale_file(upscaler, src, dst):
    """Read src, super-resolve it and write dst in the mode of src."""
    rgb, alpha, info = read_image(src)
    try:
        sr = upscaler.sample(rgb[None])[0].cpu()
    except torch.OutOfMemoryError:
        raise UserError(f"{src}: out of memory on {upscaler.device}; try a smaller --tile") from None
    write_image(dst, sr, alpha, info)


def plan_outputs(inputs, out):
    """The output path of each input: OUT itself for one input and a file OUT, else OUT/<input name>."""
    if len(inputs) == 1 and not _names_folder(out):
        save_format(out)
        paths = [Path(out)]
    elif Path(out).is_file():
        raise UserError(f"{out}: is a file, so it cannot be the output folder")
    else:
        paths = [Path(out) / (Path(src).stem + output_suffix(src)) for src in inputs]
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


def _upscaler(args):
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return Upscaler.from_pretrained(args.checkpoint, device=device, solver=args.solver, steps=args.steps,
                                    grid=args.grid, seed=args.seed, tile=args.tile, engine=args.engine,
                                    compile=args.compile)


def _positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)
