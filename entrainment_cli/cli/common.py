"""The error boundary every command runs inside, and what a finished run prints."""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError
from ..ui import console, setup_logging

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")]


def print_done(run_dir: Path, log_to: str | None = None) -> None:
    """Write the run's one-page report (and log it to a tracker), then say where all went."""
    from ..plots.report import finish_run

    report, *tracked = finish_run(run_dir, log_to)
    console.print(
        f"[green]done:[/] {run_dir}\n  tables:  {run_dir / 'tables'}\n"
        f"  figures: {run_dir / 'figures'}\n  report:  {report}",
        highlight=False,
    )
    for line in tracked:
        console.print(f"  logged:  {line}", highlight=False)


def reflow(text: str | None) -> str | None:
    """A docstring's paragraphs as single lines (list items keep theirs): Typer's rich help
    keeps every line break, which a terminal narrower than the source leaves ragged."""
    if text is None:
        return None
    return re.sub(r"(?<=\S)\n(?![\n\s]|[-*] )", " ", inspect.cleandoc(text))


def command(func):
    """Turn a UserError into one red line on stderr and exit code 2, no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        setup_logging(bool(kwargs.get("quiet", False)))
        try:
            return func(*args, **kwargs)
        except UserError as e:
            console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    wrapper.__doc__ = reflow(func.__doc__)
    return wrapper
