"""The error boundary every command runs inside, and what a finished run prints."""

from __future__ import annotations

import errno
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
    """Write the run's one-page report and results.json (and log it to a tracker), print its
    key results, then say where all went (paths on one line each, never wrapped: a log can
    be grepped for ``report:``)."""
    import logging
    import time

    from ..plots.report import finish_run

    start = time.perf_counter()
    report, run, tracked = finish_run(run_dir, log_to)
    logging.getLogger("entrain").info("report written in %.1f s", time.perf_counter() - start)
    results_table(run)
    console.print(
        f"[green]done:[/] {run_dir}\n  tables:  {run_dir / 'tables'}\n"
        f"  figures: {run_dir / 'figures'}\n  results: {run_dir / 'results.json'}\n"
        f"  report:  {report}",
        highlight=False,
        soft_wrap=True,
    )
    for line in tracked:
        console.print(f"  logged:  {line}", highlight=False, soft_wrap=True)


def _number(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def results_table(run) -> None:
    """The run's headline statistics with CI, N and p (the report has them all)."""
    from rich.table import Table
    from rich.text import Text

    from ..plots.report import terminal_rows

    rows = terminal_rows(run.stats)
    if rows.empty:
        return
    sample = (run.manifest.get("dataset") or {}).get("data_source") == "sample"
    title = "results" + (" (bundled sample data: a smoke test, not the study)" if sample else "")
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for name in ("statistic", "value", "95% CI", "N", "p"):
        table.add_column(name, overflow="fold", no_wrap=name != "statistic")
    for r in rows.to_dict("records"):
        ci = "" if _number(r["ci_lo"]) == "" else f"[{_number(r['ci_lo'])}, {_number(r['ci_hi'])}]"
        name = r["statistic"] + (f" ({r['note']})" if r.get("note") else "")
        cells = (name, _number(r["value"]), ci, _number(r["n"]), _number(r["p"]))
        table.add_row(*(Text(c) for c in cells))  # "[layer -1, ...]" is no markup
    console.print(table)


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
            try:
                return func(*args, **kwargs)
            except OSError as e:
                if e.errno != errno.ENAMETOOLONG:
                    raise
                name = str(e.filename or "")
                shown = name if len(name) <= 80 else f"{name[:40]}...{name[-30:]}"
                raise UserError(
                    f"a path is too long ({shown}): a file or directory name may have at most "
                    "255 bytes; choose a shorter name"
                ) from None
        except UserError as e:
            console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    wrapper.__doc__ = reflow(func.__doc__)
    return wrapper
