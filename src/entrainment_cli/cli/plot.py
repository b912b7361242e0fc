"""`entrain plot`: rebuild figures from run directories alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..plots import plot_runs
from ..ui import console
from .common import Quiet, command


@command
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Where the comparison figure of several runs goes.", show_default=False),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Rebuild every figure of each run from its tables; with several runs, compare them."""
    written = plot_runs(run_dirs, out)
    if not quiet:
        for path in written:
            console.print(str(path), highlight=False)
