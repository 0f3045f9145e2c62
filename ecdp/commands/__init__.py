"""Subcommands of ``ecdp``: each module has ``add_parser(subparsers)`` that sets ``run``.

The options that choose how images are sampled are the same on every subcommand that samples
(upscale, eval, demo), with the same defaults as ``ecdp.Upscaler``: the fast engine and the model's
own sampler.
"""
import argparse

from ecdp.choices import DEFAULT_ENGINE, ENGINES, GRIDS, PRECISIONS, SOLVERS


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """--engine, --precision and --compile: the options of the Speed (``ecdp.speed.Speed.choose``),
    defaulting to what ``Upscaler`` defaults to."""
    parser.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                        help=f"fast (channels_last, and bf16 where native, on the CPU; bf16 and CUDA graphs on a GPU) or "
                             f"reference (default: {DEFAULT_ENGINE})")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the fast engine's network precision: auto is bf16 on a GPU and on CPUs with bf16 "
                             "arithmetic (AVX512-BF16, AMX), fp32 elsewhere (default: auto)")
    parser.add_argument("--compile", action="store_true", help="run the fast engine's network through torch.compile")


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """The Speed's options (add_speed_arguments), --solver, --steps, --grid and --seed, defaulting to
    what ``Upscaler`` defaults to, and --threads (see set_threads)."""
    add_speed_arguments(parser)
    parser.add_argument("--solver", choices=SOLVERS, help="ODE solver (default: the model's)")
    parser.add_argument("--steps", type=positive_int, metavar="N", help="steps of a fixed-step solver "
                                                                        "(default: the model's)")
    parser.add_argument("--grid", choices=GRIDS, help="time grid of a fixed-step solver (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="noise seed (default: 0)")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="CPU threads for the network (default: PyTorch's, one per core)")


def set_threads(args: argparse.Namespace) -> None:
    """Apply --threads to PyTorch's intra-op thread pool (unchanged without it). On the 2-core
    machine of the README's CPU table two threads beat one by 1.6-2.3x when the machine is idle;
    on a machine shared with other work one thread can win."""
    if args.threads:
        import torch

        from ecdp.bounds import MAX_THREADS
        from ecdp.errors import UserError

        if args.threads > MAX_THREADS:
            raise UserError(f"--threads must be at most {MAX_THREADS} (4 per CPU core), got {args.threads}")

        torch.set_num_threads(args.threads)


def sampler_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``Upscaler`` that add_sampler_arguments parsed."""
    return {"engine": args.engine, "precision": args.precision, "compile": args.compile, "solver": args.solver,
            "steps": args.steps, "grid": args.grid, "seed": args.seed}
