"""``nnunet-semi``: one command with subcommands, next to nnU-Net's own ``nnUNetv2_*`` commands.

Each subcommand lives in the module that implements it and registers itself through ``register(subparsers)``.
A command line that names a command imports only that command's module (``nnunet-semi env`` in a fraction of a
second, not after torch and MONAI); help over all commands imports them all.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from nnunet_semi.cli_text import help_text
from nnunet_semi.env import register_ext_trainers
from nnunet_semi.errors import UserError

COMMAND_MODULES = {  # command -> the module whose register() adds it, in the order of the help
    "env": "nnunet_semi.env",
    "nnunet-convert": "nnunet_semi.planners.nnunet_converters",
    "convert-2d": "nnunet_semi.planners.convert_2d",
    "make-semi": "nnunet_semi.planners.make_semi",
    "splits": "nnunet_semi.planners.splits",
    "plan": "nnunet_semi.planners.plan",
    "demo": "nnunet_semi.demo",
    "evaluate": "nnunet_semi.evaluation.cli",
    "benchmark": "nnunet_semi.evaluation.benchmark",
    "train-gan": "nnunet_semi.synthesis.cli",
    "synthesize": "nnunet_semi.synthesis.cli",
    "fid": "nnunet_semi.synthesis.cli",
    "classify": "nnunet_semi.classification.cli",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``command`` alone (only its module imported), or of every command when ``command`` is None or
    not one of ours (argparse then lists them all)."""
    parser = argparse.ArgumentParser(prog="nnunet-semi", description=help_text(__doc__.splitlines()[0]))
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else COMMAND_MODULES.values()
    for module_name in dict.fromkeys(modules):
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    register_ext_trainers()  # nnU-Net processes we start find our trainers
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        result = args.func(args)
    except UserError as e:
        print(f"nnunet-semi {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
