"""Subcommands of ``ecdp``: each module has ``add_parser(subparsers)`` that sets ``run``."""
