"""`entrain qa ...`: sparsity against difficulty studies."""

from __future__ import annotations

from typing import Annotated

import typer

from ..qa.rankmath import RankmathConfig
from ..qa.rankmath import run as run_rankmath
from .common import (
    BatchSize,
    DataFile,
    Device,
    Dtype,
    Layers,
    Metrics,
    Model,
    Quiet,
    Resume,
    RunDirOpt,
    RunsDir,
    Seed,
    command,
    print_done,
    split_list,
)

app = typer.Typer(help="Hidden-state sparsity against difficulty.", no_args_is_help=True)


@app.command()
@command
def rankmath(
    model: Model = None,
    dataset: Annotated[
        str, typer.Option(help="Registered dataset with a level field.")
    ] = "math500",
    data_file: DataFile = None,
    limit_per_level: Annotated[
        int | None,
        typer.Option(help="Keep the first N problems of each level.", show_default=False),
    ] = None,
    layers: Layers = "-1",
    positions: Annotated[
        str, typer.Option(help="Comma list of last-prompt, mean-prompt.")
    ] = "last-prompt",
    metrics: Metrics = "all",
    batch_size: BatchSize = 8,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")] = 1000,
    run_dir: RunDirOpt = None,
    runs_dir: RunsDir = None,
    resume: Resume = False,
    quiet: Quiet = False,
) -> None:
    """Sparsity of the prompt's hidden state against MATH difficulty level (1-5).

    Writes tables/samples.parquet (one row per problem x layer x position), tables/summary.csv
    (per level: n, mean, std, SEM, median), tables/correlations.csv (Spearman and Pearson of
    level vs metric over all problems, p, N, bootstrap CI) and figures/.
    """
    cfg = RankmathConfig(
        model=model,
        dataset=dataset,
        data_file=data_file,
        limit_per_level=limit_per_level,
        layers=layers,
        positions=split_list(positions) or ["last-prompt"],
        metrics=split_list(metrics),
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        seed=seed,
        n_boot=n_boot,
        run_dir=run_dir,
        runs_dir=runs_dir,
        resume=resume,
        quiet=quiet,
    )
    print_done(run_rankmath(cfg))
