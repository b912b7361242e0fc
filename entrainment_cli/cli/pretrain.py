"""`entrain pretrain`: the controlled ID vs OOD experiment on a synthetic knowledge graph."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import UserError
from ..pretrain.run import PretrainConfig, run
from .common import (
    Device,
    Layers,
    Metrics,
    Quiet,
    RunDirOpt,
    RunsDir,
    Seed,
    command,
    print_done,
    split_list,
    typed_config,
)


def _opt(help_text: str):
    return typer.Option(help=help_text)


def _seeds(value: str | None) -> list[int] | None:
    try:
        return [int(s) for s in split_list(value) or ()] or None
    except ValueError:
        raise UserError(
            f"--seeds must be a comma list of integers, e.g. 0,1,2 (got '{value}')"
        ) from None


@command
def pretrain(
    llm_size: Annotated[
        str, _opt("llama-LAYERS-HEADS: hidden 64 x HEADS, intermediate 2 x hidden.")
    ] = "llama-16-16",
    steps: Annotated[int, _opt("Optimizer steps.")] = 2500,
    batch_size: Annotated[int, _opt("Facts per step (packed into rows, not padded).")] = 32,
    lr: Annotated[float, _opt("Peak learning rate (AdamW).")] = 1e-4,
    warmup_ratio: Annotated[
        float, _opt("Share of steps of linear warmup before cosine decay.")
    ] = 0.2,
    eval_every: Annotated[
        int, _opt("Evaluate all splits at step 0 and every N steps; 0: only after training.")
    ] = 100,
    num_test: Annotated[int, _opt("Queries per split at most (ID, OOD-medium, OOD-hard).")] = 1000,
    entities: Annotated[int, _opt("Entities of the graph.")] = 4000,
    relations: Annotated[int, _opt("Relations of the graph.")] = 50,
    rules: Annotated[int, _opt("Latent rules (bodies of 2 to 5 relations, acyclic).")] = 25,
    deductible_rules: Annotated[int, _opt("Rules that derive facts (of --rules).")] = 20,
    attach: Annotated[int, _opt("Edges each new entity attaches with.")] = 6,
    n_atomic: Annotated[int, _opt("Atomic facts in the training set.")] = 5000,
    n_derived: Annotated[int, _opt("Derived facts in the training set.")] = 5000,
    negatives: Annotated[
        str,
        _opt(
            "relation: each query's 9 negatives are other answers of its relation in its split "
            "(one query per relation and answer), so the relation-prior and popularity "
            "answerers sit near chance; uniform: upstream's, any entity (to reproduce its "
            "numbers)."
        ),
    ] = "relation",
    max_per_relation: Annotated[
        int, _opt("Queries of one relation per split at most; 0: no cap.")
    ] = 0,
    rank_eval: Annotated[
        int,
        _opt(
            "After training, rank the gold among all entities for the first N queries of each "
            "split (filtered MRR, Hits@1/3/10, beside the relation prior's): no option "
            "sampling. 0: off."
        ),
    ] = 0,
    layers: Layers = "-1",
    metrics: Metrics = "all",
    eval_batch_size: Annotated[int, _opt("Queries (x 10 options) per evaluation forward.")] = 64,
    compile: Annotated[
        str, _opt("torch.compile the training step: auto (on GPU), on, off.")
    ] = "auto",
    precision: Annotated[
        str,
        _opt(
            "auto (bf16 autocast on GPU and on CPUs with native bf16, else float32), bf16, "
            "float32. Weights are float32 either way."
        ),
    ] = "auto",
    device: Device = "auto",
    seed: Seed = 0,
    seeds: Annotated[
        str | None,
        _opt(
            "Comma list of seeds: one run each (own graph, data order, initialisation) under "
            "seed<S>/, and tables/seeds.csv with the across-seed mean and 95% CI."
        ),
    ] = None,
    save_every: Annotated[
        int, _opt("Save the training state every N steps for --resume; 0: never.")
    ] = 0,
    resume: Annotated[
        bool,
        _opt(
            "Continue the run in --run-dir from its last --save-every state (a --seeds run: "
            "its unfinished seeds); options that change the numbers must be the same."
        ),
    ] = False,
    run_dir: RunDirOpt = None,
    runs_dir: RunsDir = None,
    quiet: Quiet = False,
) -> None:
    """Train a small Llama from scratch on a synthetic knowledge graph; measure accuracy and
    last-prompt sparsity on training facts (ID) and on held-out facts that a 3+-step
    (OOD-medium) or 2-step (OOD-hard) rule derives, during and after training.

    Writes kg/ (rules, facts, training set, queries, stats.json), checkpoint/ (an HF
    directory usable as --model by every command), tables/train.parquet, tables/eval.parquet
    (one row per query, split, step and layer), tables/dynamics.parquet (per step, split and
    layer: accuracy, the relation-prior and popularity baselines, gold loss, metric means and
    SEMs), tables/final.csv, tables/relations.csv (accuracy per split and relation) and figures/.
    """
    cfg = typed_config(PretrainConfig, locals(), metrics=split_list(metrics), seeds=_seeds(seeds))
    print_done(run(cfg))
