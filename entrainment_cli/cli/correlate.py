"""`entrain correlate`: per-token entropy against STOPS (and the analysis of finished runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..correlate.analysis import analyze_runs
from ..correlate.run import CorrelateConfig, run
from ..errors import UserError
from ..ui import console
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
    split_list,
    typed_config,
)


@command
def correlate(
    run_dirs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="With --analyze: finished correlate runs to (re)analyze.", show_default=False
        ),
    ] = None,
    analyze: Annotated[
        bool, typer.Option("--analyze", help="Only analyze the given run directories.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            help="With --analyze and several runs: where the joint stats.csv, "
            "stats.tex and grid figure go.",
            show_default=False,
        ),
    ] = None,
    model: Model = None,
    dataset: Annotated[str, typer.Option(help="gsm8k, writingprompts or xsum.")] = "writingprompts",
    data_file: DataFile = None,
    n_prompts: Annotated[int, typer.Option(help="The first N prompts of the dataset.")] = 100,
    max_tokens: MaxTokens = 100,
    top_p: Annotated[
        float, typer.Option(help="Nucleus mass for sampling and STOPS, in (0, 1].")
    ] = 0.9,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0 = greedy).")] = 1.0,
    chat: Annotated[
        bool, typer.Option("--chat/--no-chat", help="Apply the chat template (upstream: no).")
    ] = False,
    engine: Engine = "auto",
    batch_size: BatchSize = 16,
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: Seed = 0,
    hidden_metrics: Annotated[
        str | None,
        typer.Option(
            help="Also record these sparsity metrics (comma list or all) of the "
            "hidden state at each generated position.",
            show_default=False,
        ),
    ] = None,
    layers: Annotated[
        str, typer.Option(help="Layers for --hidden-metrics: -1 (final norm), 0..L, lists, all.")
    ] = "-1",
    grade: Annotated[
        bool,
        typer.Option(
            "--grade",
            help="Grade the answers against the gold (gsm8k) and relate "
            "confidence to correctness: tables/summary.json, classifier.json.",
        ),
    ] = False,
    prompting: Annotated[
        str, typer.Option(help="With --grade: few-shot style baseline, cot or cod.")
    ] = "baseline",
    shots: Annotated[int, typer.Option(help="With --grade: few-shot examples (0-8).")] = 8,
    min_nucleus: Annotated[
        int, typer.Option(help="Pool only tokens whose nucleus has at least this many tokens.")
    ] = 2,
    bins: Annotated[int, typer.Option(help="Equal-width entropy bins for the median curve.")] = 50,
    n_boot: Annotated[
        int, typer.Option(help="Bootstrap resamples (of prompts) for the CIs.")
    ] = 1000,
    run_dir: RunDirOpt = None,
    runs_dir: RunsDir = None,
    resume: Resume = False,
    quiet: Quiet = False,
) -> None:
    """Per generated token: entropy, nucleus, STOPS, LogTokU, and how entropy relates to STOPS.

    Generates with vLLM (or transformers), then one teacher-forced probe pass computes every
    per-token quantity in float32. Writes tables/prompts.parquet, tables/tokens.parquet,
    tables/stats.csv|tex (Pearson, Spearman, N, bootstrap CI over prompts), tables/bins.csv
    (50-bin median and IQR), tables/fit.json (a H exp(-b H) + c) and figures/.

    With --grade (gsm8k), the few-shot prompt of --prompting asks for a final '#### <number>';
    each answer is graded, the tokens that spell it are located, and per-prompt means of
    entropy, STOPS and LogTokU are compared between correct and incorrect answers;
    tables/signals.csv ranks them and the standard baselines (log-prob, perplexity, entropy,
    nucleus size) by ROC-AUC, PR-AUC, PRR, AURC, ECE and Brier with bootstrap CIs.

    With --analyze RUN_DIR... it only re-analyzes finished runs; several runs give one joint
    table and a grid figure (models as rows, datasets as columns) in --out.
    """
    if analyze or run_dirs:
        if not analyze:
            raise UserError("run directories are only accepted with --analyze")
        if not run_dirs:
            raise UserError("--analyze needs at least one run directory")
        for path in analyze_runs(run_dirs, out, min_nucleus, bins, n_boot, seed):
            console.print(str(path), highlight=False)
        return
    hidden = None if hidden_metrics is None else (split_list(hidden_metrics) or [])
    cfg = typed_config(CorrelateConfig, locals(), hidden_metrics=hidden)
    print_done(run(cfg))
