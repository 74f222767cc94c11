"""Every command's help reads as plain text and documents every option."""
from __future__ import annotations

import argparse

from nnunet_semi.cli import build_parser
from nnunet_semi.cli_text import help_text


def test_help_text_drops_rest_markup():
    assert help_text("``make-semi`` uses :class:`~x.RawDatasetWriter`") == "'make-semi' uses 'x.RawDatasetWriter'"


def test_every_option_of_every_command_has_help_and_no_rest_markup():
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    undocumented = []
    for name, parser in subparsers.choices.items():
        assert "``" not in (parser.description or ""), name
        for action in parser._actions:
            if action.option_strings and action.help in (None, "") and action.dest != "help":
                undocumented.append(f"{name} {'/'.join(action.option_strings)}")
    assert undocumented == []
