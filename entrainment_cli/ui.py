"""Terminal output: one stderr console, warnings through logging, rich progress bars."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class Backlog(logging.Handler):
    """Holds a command's log lines from before its run directory exists (e.g. the warning
    that the bundled sample stands in for the data), so that run.log gets them too."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def setup_logging(quiet: bool) -> None:
    """Warnings always reach the terminal; progress notes only without --quiet."""
    log = logging.getLogger("entrain")
    log.setLevel(logging.INFO)
    for handler in [h for h in log.handlers if isinstance(h, RichHandler | Backlog)]:
        log.removeHandler(handler)
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    log.addHandler(handler)
    log.addHandler(Backlog())
    log.propagate = False


def replay_backlog(handler: logging.Handler) -> None:
    """Give ``handler`` (a run's log file) the lines logged so far, and stop keeping them."""
    log = logging.getLogger("entrain")
    for backlog in [h for h in log.handlers if isinstance(h, Backlog)]:
        log.removeHandler(backlog)
        for record in backlog.records:
            handler.handle(record)


class RateColumn(ProgressColumn):
    """Items per second, in the task's own unit (``unit=`` field)."""

    def render(self, task) -> Text:
        speed = task.completed / task.elapsed if task.elapsed else None
        unit = task.fields.get("unit", "it")
        return Text(f"{speed:.2f} {unit}/s" if speed else f"- {unit}/s", style="cyan")


def progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )
