"""`entrain merge`: the shards of one study (``--shard I/N`` runs) as one run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import Quiet, command, print_done


@command
def merge(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="The run directories of every shard of one study.")
    ],
    out: Annotated[
        Path, typer.Option(help="The merged run's directory (new or empty).", show_default=False)
    ],
    quiet: Quiet = False,
) -> None:
    """Merge the shards of one study into one run.

    The merged run equals the study run unsharded.

    Checks that the runs are shards of one study (same command, model weights, data, seed and
    options; every shard 0..N-1 exactly once; each finished), puts their finished work in the
    new run and redoes the analysis and figures there over all examples. The model is loaded
    again (its tokenizer and config are needed), but nothing is generated or probed again.
    A stopped merge is finished by the same command again, with the same --out.
    """
    from ..pipeline import merge_study

    print_done(merge_study(run_dirs, out, quiet))
