"""Every command's help reads as plain text and documents every option."""
from __future__ import annotations

import argparse
import importlib

from nnunet_semi.cli import COMMAND_MODULES, build_parser
from nnunet_semi.cli_text import help_text


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def test_help_text_drops_rest_markup():
    assert help_text("``make-semi`` uses :class:`~x.RawDatasetWriter`") == "'make-semi' uses 'x.RawDatasetWriter'"


def test_every_option_of_every_command_has_help_and_no_rest_markup():
    undocumented = []
    for name, parser in _subparsers(build_parser()).choices.items():
        assert "``" not in (parser.description or ""), name
        for action in parser._actions:
            if action.option_strings and action.help in (None, "") and action.dest != "help":
                undocumented.append(f"{name} {'/'.join(action.option_strings)}")
    assert undocumented == []


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    return list(_subparsers(parser).choices)


def test_each_command_is_found_in_the_module_that_registers_it():
    """COMMAND_MODULES names, for every command, the module that adds it (a command line imports only that one)."""
    registered = {}
    for module_name in dict.fromkeys(COMMAND_MODULES.values()):
        parser = argparse.ArgumentParser()
        importlib.import_module(module_name).register(parser.add_subparsers())
        registered |= {command: module_name for command in _commands(parser)}
    assert registered == COMMAND_MODULES
    assert _commands(build_parser()) == list(COMMAND_MODULES)
    assert _commands(build_parser("plan")) == ["plan"] and _commands(build_parser("-h")) == list(COMMAND_MODULES)
