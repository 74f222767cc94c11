"""``nnunet-semi nnunet-convert``: run one of nnU-Net's own dataset converters, working around a 2.8.1 bug.

nnU-Net 2.8.1 turned ``nnunetv2.paths.nnUNet_raw`` into an ``_EnvPath`` object, but some of its converters still
treat it as a string: ``python -m nnunetv2.dataset_conversion.Dataset027_ACDC -i ...`` fails with
``AttributeError: '_EnvPath' object has no attribute 'replace'``. This command runs the same converter module,
unchanged, with nnU-Net's paths given to it as plain strings.
"""
from __future__ import annotations

import argparse
import importlib.util
import runpy
import sys

import nnunetv2.paths

from nnunet_semi.errors import UserError
from nnunet_semi.cli_text import help_text

PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def run_nnunet_converter(converter: str, arguments: list[str]) -> None:
    module = f"nnunetv2.dataset_conversion.{converter}"
    if importlib.util.find_spec(module) is None:
        raise UserError(f"nnU-Net has no converter '{converter}' (looked for {module}).")
    for variable in PATH_VARIABLES:
        setattr(nnunetv2.paths, variable, getattr(nnunetv2.paths, variable).require())
    saved_argv = sys.argv
    sys.argv = [module, *arguments]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved_argv


def _run(args: argparse.Namespace) -> int:
    run_nnunet_converter(args.converter, args.arguments)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("nnunet-convert", help="run an nnU-Net dataset converter (2.8.1 path fix)",
                                   description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("converter", help="module name in nnunetv2.dataset_conversion, e.g. Dataset027_ACDC")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the converter's own arguments, e.g. -i DIR")
    parser.set_defaults(func=_run)
