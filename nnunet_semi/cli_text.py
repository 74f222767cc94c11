"""Module docstrings as command help: reST markup (``code``, :class:`X`) shown as plain text."""
from __future__ import annotations

import re


def help_text(docstring: str) -> str:
    """``x`` -> 'x' and :role:`x` -> 'x', so that ``-h`` reads as plain text."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"'\1'", docstring)
    return re.sub(r"``([^`]+)``", r"'\1'", text)
