"""Make stock nnU-Net find our trainers through its ``nnUNet_extTrainer`` variable.

nnU-Net 2.8 looks up ``-tr NAME`` in its own trainer folder first, then in every folder listed in
``nnUNet_extTrainer`` (``os.pathsep``-separated), importing each top-level module there. We ship one small folder,
``nnunet_semi/nnunet_ext``, whose single module imports our trainers: never point the variable at site-packages or
at the package root, nnU-Net would import every module it finds there.
"""
from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

EXT_TRAINER_VARIABLE = "nnUNet_extTrainer"
EXT_TRAINER_DIR = str(Path(__file__).resolve().parent / "nnunet_ext")


def ext_trainer_value(current: str | None = None) -> str:
    """``nnUNet_extTrainer`` with our folder added (kept last, after folders the user already listed)."""
    current = os.environ.get(EXT_TRAINER_VARIABLE, "") if current is None else current
    folders = [f for f in current.split(os.pathsep) if f]
    if EXT_TRAINER_DIR not in folders:
        folders.append(EXT_TRAINER_DIR)
    return os.pathsep.join(folders)


def nnunet_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) in which nnU-Net child processes find our trainers."""
    env = dict(os.environ if base is None else base)
    env[EXT_TRAINER_VARIABLE] = ext_trainer_value(env.get(EXT_TRAINER_VARIABLE, ""))
    return env


def register_ext_trainers() -> None:
    """Set ``nnUNet_extTrainer`` in this process, so in-process nnU-Net calls and every child see our trainers."""
    os.environ[EXT_TRAINER_VARIABLE] = ext_trainer_value()


def _print_env(args: argparse.Namespace) -> int:
    print(f"export {EXT_TRAINER_VARIABLE}={shlex.quote(ext_trainer_value())}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "env", help="print the shell line that lets nnUNetv2_train / nnUNetv2_predict find our trainers",
        description="Print the line to add to your shell profile (e.g. ~/.bashrc): "
                    "eval \"$(nnunet-semi env)\" does the same for the current shell.")
    parser.set_defaults(func=_print_env)
