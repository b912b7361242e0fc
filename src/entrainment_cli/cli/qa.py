"""`entrain qa ...`: sparsity against difficulty studies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..qa.rankmath import RankmathConfig
from ..qa.rankmath import run as run_rankmath
from ..qa.robustness import RobustnessConfig, export_variants
from ..qa.robustness import run as run_robustness
from ..ui import console
from .common import (
    BatchSize,
    DataFile,
    Device,
    Dtype,
    Layers,
    Limit,
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


@app.command()
@command
def robustness(
    model: Model = None,
    data_file: DataFile = None,
    categories: Annotated[
        str, typer.Option(help="Comma list of MMLU-Pro categories (e.g. law,computer science).")
    ] = "all",
    per_category: Annotated[
        int,
        typer.Option(help="Keep the first N questions of each category (upstream: 20); 0: all."),
    ] = 20,
    limit: Limit = None,
    noise: Annotated[
        str,
        typer.Option(
            help="Comma list of noise levels: normal (none), light (10% of letters and words "
            "garbled, 5 near-duplicate options), heavy (20%, 10 options)."
        ),
    ] = "normal,light,heavy",
    layers: Layers = "-1",
    metrics: Metrics = "all",
    batch_size: BatchSize = 8,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    export: Annotated[
        Path | None,
        typer.Option(
            help="Only write the noisy dataset (every question with its variants) to this "
            ".jsonl or .json file, and stop: no model is loaded.",
            show_default=False,
        ),
    ] = None,
    run_dir: RunDirOpt = None,
    runs_dir: RunsDir = None,
    resume: Resume = False,
    quiet: Quiet = False,
) -> None:
    """Sparsity and accuracy of MMLU-Pro questions under seeded noise, by category.

    Each question is asked as is (normal) and under seeded noise: look-alike letters and typos
    in the question (line breaks kept) plus near-duplicates of wrong options inserted among the
    options (letters past J). One teacher-forced pass per prompt gives the last-prompt hidden
    state's sparsity metrics and the answer: the option letter with the highest next-token
    logit. Writes tables/variants.parquet, noise_rates.csv (set vs measured noise),
    samples.parquet (per question x noise: metrics, predicted letter, correct), summary.csv and
    accuracy.csv (category x noise), paired_tests.csv (Wilcoxon signed-rank and rank-biserial
    of each metric between noise levels, same questions), accuracy_tests.csv (McNemar) and
    figures/ (heatmaps of each metric and accuracy, category x noise).
    """
    cfg = RobustnessConfig(
        model=model,
        data_file=data_file,
        categories=split_list(categories),
        per_category=per_category if per_category != 0 else None,
        limit=limit,
        noise=split_list(noise),
        layers=layers,
        metrics=split_list(metrics),
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        seed=seed,
        export=export,
        run_dir=run_dir,
        runs_dir=runs_dir,
        resume=resume,
        quiet=quiet,
    )
    if export is not None:
        console.print(f"[green]wrote:[/] {export_variants(cfg)}", highlight=False)
        return
    print_done(run_robustness(cfg))
