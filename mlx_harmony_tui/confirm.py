"""Asking before a command deletes something: y/N on a terminal; in a pipe or script, --yes has to say it."""

from __future__ import annotations

import sys

from mlx_harmony_tui.errors import UserError


def confirm(question: str) -> bool:
    """True when the user answers y/yes to ``question``; ctrl+d (end of input) is a no. Without a terminal
    to ask on, a UserError telling to pass --yes (never a silent delete, never a hang on a pipe)."""
    if not sys.stdin.isatty():
        raise UserError(f"{question}? pass --yes to confirm")
    try:
        answer = input(f"{question}? [y/N] ")
    except EOFError:
        print()
        return False
    return answer.strip().lower() in ("y", "yes")
