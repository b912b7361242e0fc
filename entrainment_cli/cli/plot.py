"""`entrain plot`: rebuild figures from run directories alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import Quiet, command


@command
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Report directory: every run's figures are copied there, and runs of one "
            "command are compared (one sub-directory per command when several are given).",
            show_default=False,
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Rebuild every figure of each run from its tables; compare several runs of one command.

    Runs of different commands may be mixed: `entrain plot runs/*/* --out report` rebuilds
    everything and writes one report directory. Several graded runs (correlate --grade, qa
    accuracy, cot) also get signals_prr: each signal's PRR with its CI, one marker per run.
    """
    from ..plots import plot_runs
    from ..ui import console

    written = plot_runs(run_dirs, out)
    if not quiet:
        for path in written:
            console.print(str(path), highlight=False)
