"""A progress bar on stderr for the flywheel's long loops (off when not asked for)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from ragtune.console import stderr_console


@contextlib.contextmanager
def progress_bar(label: str, total: int, *, enabled: bool) -> Iterator[Callable[[], None]]:
    """A bar of `total` steps; the block gets the function that advances it by one."""
    if not enabled:
        yield lambda: None
        return
    bar = Progress(
        "{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
