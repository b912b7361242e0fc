"""`entrain report`: one self-contained HTML page of finished runs, optionally sent to a tracker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..plots.report import REPORT, log_runs, write_report
from ..ui import console
from .common import LogTo, Quiet, command


@command
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="The HTML file to write. Default: RUN/report.html for one run, "
            "./report.html for several.",
            show_default=False,
        ),
    ] = None,
    log_to: LogTo = None,
    quiet: Quiet = False,
) -> None:
    """One page of runs that opens from disk: what was run, on which model and data (a warning
    where the bundled sample stood in), status, counts, stage timings, the key statistics with
    N, CI and p, every figure (embedded) and the paths of every table; several runs of one
    command are compared (headline statistic per run and the comparison figures).

    A path that is not a run, or a run whose tables are missing, is named in one line and
    left out; the exit code is 2 only when no run could be reported.
    `entrain report $(dirname runs/*/*/manifest.json) --out runs/report.html` reports every run.
    """
    if out is None:
        out = run_dirs[0] / REPORT if len(run_dirs) == 1 else Path(REPORT)
    path, runs, problems = write_report(run_dirs, out)
    for problem in problems:
        console.print(f"[bold yellow]skipped:[/] {problem}", highlight=False, soft_wrap=True)
    tracked = log_runs(runs, log_to) if log_to else []
    if not quiet:
        for line in tracked:
            console.print(f"logged: {line}", highlight=False)
    console.print(str(path), highlight=False)
