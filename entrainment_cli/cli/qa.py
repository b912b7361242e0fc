"""`entrain qa ...`: sparsity against difficulty studies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..qa.accuracy import AccuracyConfig
from ..qa.accuracy import run as run_accuracy
from ..qa.conflict import ConflictConfig
from ..qa.conflict import run as run_conflict
from ..qa.deepmath import DeepmathConfig
from ..qa.deepmath import run as run_deepmath
from ..qa.longreason import LongreasonConfig
from ..qa.longreason import run as run_longreason
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
    Engine,
    Layers,
    Limit,
    MaxTokens,
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
    typed_config,
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
    cfg = typed_config(
        RankmathConfig,
        locals(),
        positions=split_list(positions) or ["last-prompt"],
        metrics=split_list(metrics),
    )
    print_done(run_rankmath(cfg))


NBoot = Annotated[int, typer.Option(help="Bootstrap resamples for the CIs.")]


@app.command()
@command
def deepmath(
    model: Model = None,
    data_file: DataFile = None,
    n: Annotated[
        int, typer.Option("--n", help="Problems drawn at random (seeded by --seed).")
    ] = 10_000,
    limit: Limit = None,
    layers: Layers = "-1",
    metrics: Metrics = "all",
    batch_size: BatchSize = 8,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    n_boot: NBoot = 1000,
    run_dir: RunDirOpt = None,
    runs_dir: RunsDir = None,
    resume: Resume = False,
    quiet: Quiet = False,
) -> None:
    """Sparsity of the prompt's last hidden state against DeepMath-103K's continuous
    difficulty score (zwhe99/DeepMath-103K, fields question and difficulty).

    Measures, per problem of a seeded sample of --n, each metric at the last prompt token;
    then Pearson and Spearman of difficulty vs metric over the problems with p, N and a
    bootstrap CI (tables/correlations.csv, with whether the metric is sparser on harder
    problems at p < 0.05), an OLS line (tables/fit.csv) and its 95% band (tables/band.csv),
    and a scatter with the band per metric (figures/). Offline: the bundled sample.
    """
    cfg = typed_config(DeepmathConfig, locals(), metrics=split_list(metrics))
    print_done(run_deepmath(cfg))


@app.command()
@command
def conflict(
    model: Model = None,
    data_file: DataFile = None,
    limit: Limit = None,
    layers: Layers = "-1",
    metrics: Metrics = "all",
    batch_size: BatchSize = 8,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    run_dir: RunDirOpt = None,
    runs_dir: RunsDir = None,
    resume: Resume = False,
    quiet: Quiet = False,
) -> None:
    """Sparsity when the context contradicts the model's knowledge (knowledge-conflict pairs).

    Each item (fields main_entity, parametric_knowledge, conflicting_knowledge,
    question_about_conflicting_segments, question_about_nonconflicting_segments; --data-file
    as JSONL, Parquet, a JSON list or upstream's {subject: [items]} data.json) gives three
    prompts: conflict (conflicting knowledge + its question), nonconflict (parametric
    knowledge + the other question, upstream's comparison) and control (parametric knowledge +
    the conflicting question: only the context differs). Measures each metric at the last
    prompt token in float32; tables/paired.csv holds, per metric (and prompt length), the
    Wilcoxon signed-rank test of conflict minus each other condition over items with the
    rank-biserial and Cohen's d_z effect sizes; tables/summary.csv the per-condition
    statistics; figures/ box plots. Without --data-file: the bundled sample (smoke test).
    """
    cfg = typed_config(ConflictConfig, locals(), metrics=split_list(metrics))
    print_done(run_conflict(cfg))


@app.command()
@command
def longreason(
    model: Model = None,
    data_file: DataFile = None,
    splits: Annotated[
        str,
        typer.Option(
            help="Comma list of LongReason splits (context lengths): original, expanded, 8k, "
            "16k, 32k, 64k, 128k. The first is the baseline of the paired tests."
        ),
    ] = "8k,16k,32k,64k",
    limit: Annotated[
        int | None,
        typer.Option(help="Use the first N questions of each split.", show_default=False),
    ] = None,
    layers: Layers = "all",
    metrics: Metrics = "all",
    batch_size: Annotated[
        int, typer.Option(help="Prompts per forward pass (long contexts: keep it small).")
    ] = 1,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    engine: Engine = "auto",
    max_tokens: MaxTokens = 8,
    run_dir: RunDirOpt = None,
    runs_dir: RunsDir = None,
    resume: Resume = False,
    quiet: Quiet = False,
) -> None:
    """Sparsity at every layer as the context grows (LongReason, lz1bytedance/LongReason).

    For each split (the same questions with the background expanded to 8k ... 64k tokens),
    measures each metric at the last prompt token at every layer (--layers all: the embedding
    output, the residual stream after each block, and the state after the final norm), in
    float32, and generates a short greedy answer whose letter (A-E) is parsed without taking
    letters out of words. Prompts longer than the model's context are skipped and counted,
    never truncated. Writes tables/samples.parquet, answers.parquet, accuracy.csv (per split,
    Wilson CI, skipped count), profile.csv (per split and layer), paired.csv (Wilcoxon of each
    longer split against the first, question by question) and figures/ (layer profile per
    split with a zoom on the last layers; accuracy). --data-file: rows with the LongReason
    fields; a 'split' field per row lets one file hold several splits.
    """
    cfg = typed_config(
        LongreasonConfig, locals(), splits=split_list(splits) or [], metrics=split_list(metrics)
    )
    print_done(run_longreason(cfg))


@app.command()
@command
def accuracy(
    model: Model = None,
    data_file: DataFile = None,
    limit_per_level: Annotated[
        int | None,
        typer.Option(help="Keep the first N problems of each level.", show_default=False),
    ] = None,
    limit: Limit = None,
    layers: Layers = "-1",
    metrics: Metrics = "all",
    batch_size: BatchSize = 8,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    engine: Engine = "auto",
    max_tokens: MaxTokens = 1024,
    n_boot: NBoot = 1000,
    run_dir: RunDirOpt = None,
    runs_dir: RunsDir = None,
    resume: Resume = False,
    quiet: Quiet = False,
) -> None:
    """MATH-500 accuracy and the prompt's hidden-state sparsity: does sparsity predict a wrong
    answer?

    Generates a greedy answer per problem (asked for in \\boxed{}), grades its last box
    against the gold answer with math-verify, and measures each metric at the last prompt token
    of the same prompt. Writes tables/answers.parquet (output, prediction, correct),
    samples.parquet (metrics with correctness), accuracy_by_level.csv (Wilson CI),
    summary.csv (metrics per level), association.csv (per metric: point-biserial r of
    correctness with p and bootstrap CI, AUROC with the Mann-Whitney p, and upstream's r across
    the level means) and figures/. tables/signals.csv ranks every confidence signal and the
    log-prob baselines against correctness (ROC-AUC, PR-AUC, PRR, AURC, ECE, Brier, bootstrap
    CIs; see README).
    """
    cfg = typed_config(AccuracyConfig, locals(), metrics=split_list(metrics))
    print_done(run_accuracy(cfg))


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
    cfg = typed_config(
        RobustnessConfig,
        locals(),
        categories=split_list(categories),
        per_category=per_category if per_category != 0 else None,
        noise=split_list(noise),
        metrics=split_list(metrics),
    )
    if export is not None:
        console.print(f"[green]wrote:[/] {export_variants(cfg)}", highlight=False)
        return
    print_done(run_robustness(cfg))
