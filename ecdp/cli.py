"""The ``ecdp`` command: one subcommand per module in ``ecdp.commands``.

The command modules import PyTorch inside their ``run`` functions, so ``ecdp --help`` and every
subcommand's ``--help`` answer without loading it.
"""
import argparse
import importlib
import sys

from ecdp import console
from ecdp.errors import UserError

COMMANDS = ("upscale", "demo", "train", "eval")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ecdp", description="ECDP diffusion super-resolution")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"ecdp.commands.{name}").add_parser(sub)
    for command in sub.choices.values():
        command.add_argument("-q", "--quiet", action="store_true", help="print no progress, only results and errors")
    args = parser.parse_args(argv)
    console.set_quiet(args.quiet)
    try:
        return args.run(args) or 0
    except UserError as e:
        print(f"ecdp {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ecdp {args.command}: interrupted", file=sys.stderr)
        return 130
