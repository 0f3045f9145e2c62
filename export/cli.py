"""The ``ecdp-export`` command: a model folder to ONNX, a TensorRT engine or an AOTInductor package."""
import argparse
import sys

import torch

from ecdp.errors import UserError
from ecdp.export.aoti import export_aoti
from ecdp.export.graphs import GRIDS, ExportSpec
from ecdp.export.onnx_export import GRAPHS, export_onnx
from ecdp.export.trt_engine import export_engine
from ecdp.sampling import EVALS_PER_STEP


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        for path in _run(args):
            print(f"wrote {path}")
        return 0
    except UserError as e:
        print(f"ecdp-export: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ecdp-export: interrupted", file=sys.stderr)
        return 130


def _run(args):
    spec = ExportSpec(lr_size=args.lr_size, batch=args.batch, solver=args.solver, steps=args.steps, grid=args.grid,
                      precision=args.precision)
    if args.graph != "full" and not args.onnx:
        raise UserError("--graph step is only for --onnx; engines and AOTInductor packages hold the full solve.")
    if args.onnx:
        return export_onnx(args.onnx, args.output, spec, graph=args.graph)
    if args.trt:
        return export_engine(args.trt, args.output, spec, workspace_gib=args.workspace,
                             timing_cache=args.timing_cache)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return export_aoti(args.aoti, args.output, spec, device=device)


def _parser():
    parser = argparse.ArgumentParser(prog="ecdp-export", description="Export the fixed-step ECDP solve of a model "
                                     "folder (or 'default') for deployment.")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--onnx", metavar="MODEL", help="write ONNX graph(s)")
    target.add_argument("--trt", metavar="MODEL", help="build a TensorRT engine (MODEL may also be an .onnx file)")
    target.add_argument("--aoti", metavar="MODEL", help="compile an AOTInductor package (.pt2)")
    parser.add_argument("-o", "--output", required=True, help="output file")
    parser.add_argument("--lr-size", type=_size, default=(64, 64), metavar="HxW", help="LR input size (default 64x64)")
    parser.add_argument("--batch", type=_positive, default=1, help="images per call (default 1)")
    parser.add_argument("--solver", choices=list(EVALS_PER_STEP), help="default: the model's")
    parser.add_argument("--steps", type=_positive, help="solver steps (default: the model's)")
    parser.add_argument("--grid", choices=GRIDS, help="time grid (default: the model's)")
    parser.add_argument("--graph", choices=GRAPHS, default="full",
                        help="ONNX only: the whole solve, or one solver step plus an encoder graph (OUT.encoder.onnx)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="network in fp16 (GroupNorm statistics and ODE state stay fp32)")
    precision.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="network in bf16")
    parser.set_defaults(precision="fp32")
    parser.add_argument("--workspace", type=float, default=4.0, metavar="GIB", help="TensorRT workspace limit")
    parser.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache, read if present and updated")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="AOTInductor target (default: cuda if available)")
    return parser


def _positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _size(text):
    try:
        h, _, w = text.lower().partition("x")
        return _positive(h), _positive(w or h)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 64x64") from None


if __name__ == "__main__":
    sys.exit(main())
