"""Terminal output for the `ragtune` command, shared by each package's commands (cli.py)."""

from __future__ import annotations

import sys

from rich.console import Console, RenderableType
from rich.table import Table

# When stdout is a pipe or a file, rich would fit tables into 80 columns and wrap their cells
# over several lines; this wide, one row stays one line for grep, awk and tests.
_PIPED_WIDTH = 10_000


def stdout_console() -> Console:
    """Rich output on stdout: the terminal's width on a terminal, one line a row when piped.

    Markup and highlighting are off: paths and texts from documents print as they are (a
    `[chunk]` in a document is no style tag); styles are given explicitly with `Text`.
    """
    console = Console(markup=False, highlight=False)
    if not console.is_terminal:
        console = Console(markup=False, highlight=False, width=_PIPED_WIDTH)
    return console


def plain_table() -> Table:
    """A table without borders, its headers in bold: columns line up as in `ls -l` or `ps`."""
    return Table(box=None, header_style="bold", pad_edge=False)


def print_table(table: RenderableType) -> None:
    """Print a table on stdout; when piped, one line a row and no padding after the last cell."""
    console = stdout_console()
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def stderr_console() -> Console:
    """Rich output on stderr for messages and progress; long lines are not wrapped when piped."""
    return Console(stderr=True, markup=False, highlight=False, soft_wrap=True)
