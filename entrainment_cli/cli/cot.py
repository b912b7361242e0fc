"""`entrain cot`: MATH-500 with cot, few-shot, auto-shot or the sparsity curriculum."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cot.run import CotConfig, run
from ..errors import UserError
from .common import (
    BatchSize,
    DataFile,
    Device,
    Dtype,
    Engine,
    MaxTokens,
    Model,
    Quiet,
    Resume,
    RunDirOpt,
    RunsDir,
    Seed,
    command,
    print_done,
    typed_config,
)


@command
def cot(
    strategy: Annotated[
        str | None,
        typer.Option(
            help="cot (zero-shot), few-shot (random pool examples), auto-shot (the most "
            "similar ones) or curriculum (chosen by sparsity level). Default: cot.",
            show_default=False,
        ),
    ] = None,
    curriculum: Annotated[
        bool, typer.Option("--curriculum", help="Shorthand for --strategy curriculum.")
    ] = False,
    model: Model = None,
    data_file: DataFile = None,
    pool_file: Annotated[
        Path | None,
        typer.Option(
            help="Local .jsonl/.parquet of solved training problems (problem, solution, level, "
            "type or subject) for the demonstrations. Default: MATH train from the hub, else "
            "the bundled sample.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            help="Answer N test problems drawn at random with --seed (default: all).",
            show_default=False,
        ),
    ] = None,
    pool_size: Annotated[
        int,
        typer.Option(help="The first N pool problems (after removing any test problem)."),
    ] = 500,
    num_few_shot: Annotated[
        int, typer.Option(help="Demonstrations for few-shot and auto-shot (curriculum: 2).")
    ] = 2,
    rank_metric: Annotated[
        str,
        typer.Option(
            help="Sparsity metric that ranks problems (any of entrain's metrics; l0_norm is an "
            "alias of l0_outlier). Its direction decides: sparser = harder."
        ),
    ] = "l0_outlier",
    n_levels: Annotated[
        int, typer.Option(help="Sparsity levels: quantile bins of the pool's scores (>= 3).")
    ] = 5,
    max_tokens: MaxTokens = 4096,
    engine: Engine = "auto",
    batch_size: BatchSize = 8,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    run_dir: RunDirOpt = None,
    runs_dir: RunsDir = None,
    resume: Resume = False,
    quiet: Quiet = False,
) -> None:
    """Answer MATH-500 problems with one prompting strategy and grade them.

    Every strategy ranks the pool and the test problems by the sparsity of the model's last
    prompt state (one batched probe pass) and bins them into --n-levels levels (sparser =
    harder). curriculum gives each problem two demonstrations by its level: easy -> same
    level then one harder, middle -> two of the same level, hard -> one easier then same
    level; within a level the most similar (all-MiniLM-L6-v2). Generation is greedy; the
    answer is the last \\boxed{}, compared by math-verify.

    Writes tables/ranking.parquet, tables/demos.parquet, tables/generations.parquet,
    tables/summary.json (accuracy overall, by MATH level, subject and sparsity level, with
    Wilson 95% CIs) and figures/. `entrain plot RUN... --out DIR` compares strategies.
    tables/signals.csv ranks every confidence signal and the log-prob baselines against
    correctness (ROC-AUC, PR-AUC, PRR, AURC, ECE, Brier, bootstrap CIs; see README).
    """
    if curriculum:
        if strategy not in (None, "curriculum"):
            raise UserError(f"--curriculum contradicts --strategy {strategy}; drop one of them")
        strategy = "curriculum"
    cfg = typed_config(CotConfig, locals(), strategy=strategy or "cot")
    print_done(run(cfg))
