"""`entrain report`: one self-contained HTML page of finished runs, optionally sent to a tracker."""

from __future__ import annotations

from pathlib import Path

from ..studies import ReportConfig
from ..ui import console


def report(cfg: ReportConfig) -> None:
    """One page of runs that opens from disk: what was run, on which model and data (a warning
    where the bundled sample stood in), status, counts, stage timings, the key statistics with
    N, CI and p, every figure (embedded) and the paths of every table; several runs of one
    command are compared (headline statistic per run and the comparison figures).

    A path that is not a run, or a run whose tables are missing, is named in one line and left
    out; the exit code is 2 only when no run could be reported.
    `entrain report $(dirname runs/*/*/manifest.json) --out runs/report.html` reports every run.
    """
    from ..plots.report import REPORT, log_runs, write_report
    from ..runs import tracking

    if cfg.log_to is not None:  # a missing tracker package is found before anything is written
        tracking.check(cfg.log_to)
    out = cfg.out
    if out is None:
        out = cfg.run_dirs[0] / REPORT if len(cfg.run_dirs) == 1 else Path(REPORT)
    path, runs, problems = write_report(cfg.run_dirs, out)
    for problem in problems:
        console.print(f"[bold yellow]skipped:[/] {problem}", highlight=False, soft_wrap=True)
    tracked = log_runs(runs, cfg.log_to) if cfg.log_to else []
    if not cfg.quiet:
        for line in tracked:
            console.print(f"logged: {line}", highlight=False)
    console.print(str(path), highlight=False)
