"""``nnunet-semi``: one command with subcommands, next to nnU-Net's own ``nnUNetv2_*`` commands.

Each subcommand lives in the module that implements it and registers itself through ``register(subparsers)``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from nnunet_semi.cli_text import help_text
from nnunet_semi.env import register_ext_trainers
from nnunet_semi.errors import UserError

COMMAND_MODULES = (
    "nnunet_semi.env",
    "nnunet_semi.planners.nnunet_converters",
    "nnunet_semi.planners.convert_2d",
    "nnunet_semi.planners.make_semi",
    "nnunet_semi.planners.splits",
    "nnunet_semi.planners.plan",
    "nnunet_semi.demo",
    "nnunet_semi.evaluation.cli",
    "nnunet_semi.evaluation.benchmark",
    "nnunet_semi.synthesis.cli",
    "nnunet_semi.classification.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-semi", description=help_text(__doc__.splitlines()[0]))
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    register_ext_trainers()  # nnU-Net processes we start find our trainers
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except UserError as e:
        print(f"nnunet-semi {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
