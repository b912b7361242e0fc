"""`entrain probe`: the measurements on the user's own data and question."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..probe.run import ProbeConfig
from ..probe.run import run as run_probe
from .common import (
    BatchSize,
    Device,
    Dtype,
    Engine,
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
    typed_config,
)


def _opt(text: str):
    return typer.Option(help=text, show_default=False)


@command
def probe(
    model: Model = None,
    data_file: Annotated[
        Path | None, _opt("Your rows: .jsonl, .json (a list), .csv or .parquet.")
    ] = None,
    dataset: Annotated[
        str | None, _opt("hub:OWNER/NAME (with --split, --subset), or a registered dataset.")
    ] = None,
    split: Annotated[
        str | None, _opt("Hub split (default train); in a file, rows whose 'split' field matches.")
    ] = None,
    subset: Annotated[str | None, _opt("Hub dataset configuration (subset).")] = None,
    text_field: Annotated[str | None, _opt("Field holding each example's text.")] = None,
    messages_field: Annotated[
        str | None, _opt('Field holding chat messages: [{"role": ..., "content": ...}, ...].')
    ] = None,
    template: Annotated[
        str | None, _opt("Text built from each row, e.g. 'Q: {question}\\nA: {answer}'.")
    ] = None,
    system: Annotated[str | None, _opt("System prompt before every text.")] = None,
    chat: Annotated[
        bool,
        typer.Option("--chat/--no-chat", help="Use the model's chat template when it has one."),
    ] = True,
    id_field: Annotated[
        str | None, _opt("Field with a unique id (default: the row number).")
    ] = None,
    label: Annotated[
        str | None,
        _opt("Numeric/ordinal (Pearson, Spearman) or two-valued (AUROC, Mann-Whitney) column."),
    ] = None,
    group: Annotated[
        str | None, _opt("Categorical column: per-group summary, Kruskal-Wallis.")
    ] = None,
    pair_id: Annotated[
        str | None, _opt("Column naming each pair (with --condition): paired Wilcoxon.")
    ] = None,
    condition: Annotated[
        str | None, _opt("Column with each row's condition within its pair.")
    ] = None,
    limit: Limit = None,
    layers: Layers = "-1",
    positions: Annotated[
        str, typer.Option(help="Comma list of last-prompt, mean-prompt.")
    ] = "last-prompt",
    metrics: Metrics = "all",
    max_tokens: Annotated[
        int,
        typer.Option(
            help="Generate up to N tokens per example and add the per-token metrics "
            "(entropy, nucleus, STOPS, LogTokU; mean and max per example). 0: no generation."
        ),
    ] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus mass for sampling and the nucleus.")] = 0.9,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")] = 1.0,
    engine: Engine = "auto",
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
    """Hidden-state sparsity of your own texts, against your own labels.

    The text of each row: --text-field, --messages-field or --template; with --system and the
    chat template (--chat, the default, when the model has one). The question follows from the
    columns given: --label numeric (Pearson and Spearman per metric, binned means) or
    two-valued (AUROC with direction, Mann-Whitney, violins); --group (per-group summary,
    Kruskal-Wallis with epsilon^2, bars with SEM); --pair-id with --condition (paired
    Wilcoxon with rank-biserial r). Each with N, p and a bootstrap CI. With no data: the
    bundled arithmetic sample (fields text, difficulty, multi_step, operation, pair,
    phrasing).

    With --max-tokens N, a generation stage (vLLM or transformers) first; then the per-token
    metrics of `correlate` (tables/tokens.parquet, generations in tables/prompts.parquet) and
    their mean and max per example (tables/token_summary.parquet), asked the same question
    (rows with an empty layer and position "generated").

    Writes tables/samples.parquet (one row per example x layer x position: id, the exact
    prompt, your columns, each metric), tables/summary.csv, one table per question
    (label_correlations, label_binned, label_auroc, group_summary, group_kruskal, paired;
    .csv) and figures/.
    """
    cfg = typed_config(
        ProbeConfig,
        locals(),
        positions=split_list(positions) or ["last-prompt"],
        metrics=split_list(metrics),
    )
    print_done(run_probe(cfg))
