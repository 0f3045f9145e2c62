"""The ``ecdp-export`` command: a model folder to ONNX, a TensorRT plan or an AOTInductor package.

PyTorch and the exporters are imported only once the arguments are parsed, so ``--help`` is instant
and a missing optional dependency is one sentence naming the extra to install.
"""
import argparse
import importlib.util
import sys

from ecdp import console
from ecdp.bounds import POSITIVE
from ecdp.choices import EVALS_PER_STEP, GRIDS, ONNX_GRAPHS
from ecdp.errors import UserError
from ecdp.fileio import check_writable

EXPORT_EXTRA = ("onnx", "onnxscript", "onnxruntime")


def main(argv=None):
    args = _parser().parse_args(argv)
    console.set_quiet(args.quiet)
    try:
        console.silence_library_warnings()   # imports torch: seconds in which Ctrl-C may come
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
    check_writable(args.output)
    if args.graph != "full" and not args.onnx:
        raise UserError("--graph step is only for --onnx; TensorRT plans and AOTInductor packages hold the full solve.")
    if args.onnx or args.trt:
        require_export_extra("--onnx" if args.onnx else "--trt")
    from ecdp.export.graphs import ExportSpec

    spec = ExportSpec(lr_size=args.lr_size, batch=args.batch, solver=args.solver, steps=args.steps, grid=args.grid,
                      precision=args.precision)
    if args.onnx:
        from ecdp.export.onnx_export import export_onnx

        return export_onnx(args.onnx, args.output, spec, graph=args.graph)
    if args.trt:
        from ecdp.export.trt_plan import export_plan

        return export_plan(args.trt, args.output, spec, workspace_gib=args.workspace,
                             timing_cache=args.timing_cache)
    import torch

    from ecdp.export.aoti import export_aoti

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return export_aoti(args.aoti, args.output, spec, device=device)


def require_export_extra(option):
    """Raise a UserError naming the extra to install when a package of the export extra is missing."""
    missing = [name for name in EXPORT_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"{option} needs the export extra, and {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not installed: "
                        'run pip install -e ".[export]" in the ecdp folder.')


def _parser():
    parser = console.ArgumentParser(prog="ecdp-export", description="Export the fixed-step ECDP solve of a model "
                                     "folder (or 'default') for deployment.")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--onnx", metavar="MODEL", help="write ONNX graph(s)")
    target.add_argument("--trt", metavar="MODEL", help="build a TensorRT plan (MODEL may also be an .onnx file)")
    target.add_argument("--aoti", metavar="MODEL", help="compile an AOTInductor package (.pt2)")
    parser.add_argument("-o", "--output", required=True, help="output file")
    parser.add_argument("--lr-size", type=_size, default=(64, 64), metavar="HxW", help="LR input size (default 64x64)")
    parser.add_argument("--batch", type=_positive, default=1, help="images per call (default 1)")
    parser.add_argument("--solver", choices=list(EVALS_PER_STEP), help="default: the model's")
    parser.add_argument("--steps", type=_positive, help="solver steps (default: the model's)")
    parser.add_argument("--grid", choices=GRIDS, help="time grid (default: the model's)")
    parser.add_argument("--graph", choices=ONNX_GRAPHS, default="full",
                        help="ONNX only: the whole solve, or one solver step plus an encoder graph (OUT.encoder.onnx)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="network in fp16 (GroupNorm statistics and ODE state stay fp32)")
    precision.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="network in bf16")
    parser.set_defaults(precision="fp32")
    parser.add_argument("--workspace", type=_gib, default=4.0, metavar="GIB", help="TensorRT workspace limit")
    parser.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache, read if present and updated")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="AOTInductor target (default: cuda if available)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no progress, only errors and the files written")
    return parser


def _positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _gib(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value not in POSITIVE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of GiB above 0")
    return value


def _size(text):
    try:
        h, _, w = text.lower().partition("x")
        return _positive(h), _positive(w or h)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 64x64") from None


if __name__ == "__main__":
    sys.exit(main())
