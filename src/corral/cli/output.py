"""Where the CLI writes: one rich console for people, full width when piped.

On a terminal rich fits tables to the terminal's width. Piped into a file or another program
there is no width to fit: rich would assume 80 columns and cut ids short (``task_113…``), so
the console is as wide as its longest line instead (``COLUMNS`` still wins when set).
``--json`` is the form for programs; these tables are for people and ``grep``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.align import AlignMethod
from rich.console import Console
from rich.rule import Rule
from rich.style import Style
from rich.text import Text

__all__ = ["UNLIMITED_WIDTH", "console", "json_line"]

#: the width of a console that writes to no terminal: no line is cut or wrapped before it
UNLIMITED_WIDTH = 100_000


def _width() -> int | None:
    if os.environ.get("COLUMNS") or sys.stdout.isatty():
        return None  # rich reads COLUMNS or the terminal's size
    return UNLIMITED_WIDTH


#: the width of a rule (a section's title line) printed to no terminal
RULE_WIDTH = 100


class _Console(Console):
    def rule(
        self,
        title: str | Text = "",
        *,
        characters: str = "─",
        style: str | Style = "rule.line",
        align: AlignMethod = "center",
    ) -> None:
        """A rule as wide as a terminal's, even when the console itself has no width."""
        rule = Rule(title, characters=characters, style=style, align=align)
        self.print(
            rule, width=min(self.width, RULE_WIDTH) if self.width >= UNLIMITED_WIDTH else None
        )


console = _Console(width=_width(), soft_wrap=_width() is not None)


def json_line(data: Any) -> None:
    """One JSON document on one line (a stream of them is JSON Lines)."""
    click.echo(json.dumps(data, separators=(",", ":"), default=str))
