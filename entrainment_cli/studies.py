"""The study registry: every command's declaration and its options, declared once.

A study is a :class:`Study`: its command name, its help, its config (a dataclass whose fields
are the options, see :mod:`entrainment_cli.options`), the module that carries out its stages
(imported only when it runs), its figures, and the demo run of ``make demo``. The CLI,
``entrain plot`` and the demo list are built from :data:`STUDIES`. Nothing heavy is imported
here: ``entrain --help`` reads this module alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import registry
from .options import listed, option

# -- options several studies share (each declared once, here) --------------------------------


def model_option() -> Any:
    return option(
        None,
        "Hub id, local Hugging Face model directory (any saved checkpoint), or .gguf file. "
        "Default: the embedded SmolLM2-135M-Instruct (offline).",
        identity=True,
        show_default=False,
    )


def dataset_option(default: str, kind: str, keep: Callable[[registry.DatasetSpec], bool]) -> Any:
    """``--dataset``: the registered datasets the study can use, checked before the model."""
    names = registry.dataset_names(keep)
    return option(default, f"Registered dataset {kind}: {', '.join(names)}.", choices=names)


def data_file_option() -> Any:
    return option(
        None,
        "Local .jsonl/.json/.csv/.parquet with the dataset's fields; skips the hub.",
        show_default=False,
    )


def batch_size_option(default: int, help: str = "Prompts per forward pass.") -> Any:
    return option(default, help, minimum=1)


def device_option() -> Any:
    return option("auto", "auto (GPU if any), cpu, cuda or cuda:N.")


def dtype_option() -> Any:
    return option(
        "auto",
        "Model weights: auto (bfloat16 on GPU, float32 on CPU), float32, float16, bfloat16. "
        "Metrics are always float32.",
        identity=True,
        choices=("auto", "float32", "float16", "bfloat16"),
    )


LAYERS_HELP = (
    "-1 (after the final norm), 0..L (residual stream after block i; 0 = embeddings), "
    "lists like 0,10,-1, ranges like 4-8, or all."
)


def layers_option(default: str = "-1", help: str = LAYERS_HELP) -> Any:
    return option(default, help, identity=True, list_ok=True)


def metrics_option(**kw: Any) -> Any:
    return listed(
        "all",
        "Comma list of sparsity metrics (l1, l1_rel, l0_outlier, top{1,5,10}_energy, "
        "top{1,5,10}_l1share, eff_rank, eff_rank_l1, hoyer, gini, participation_ratio) or all.",
        all_is_none=True,
        identity=True,
        **kw,
    )


def save_hidden_option(which: str = "probed") -> Any:
    return option(
        False,
        f"Also save the {which} hidden vectors (float16, at every --layers and position) in "
        "tables/hidden/ as safetensors, one file per batch, readable by numpy or torch alone; "
        "the disk they take is told first. With them, a linear probe's ceiling of the label "
        "and Mahalanobis distances from the reference: tables/ceiling.csv, shift.csv.",
        identity=True,
    )


def limit_option(
    help: str = "Use only the first N examples (after seeded sampling, if any).",
) -> Any:
    return option(None, help, identity=True, minimum=1, show_default=False)


def engine_option() -> Any:
    return option(
        "auto",
        "Generation: auto (vLLM when installed), vllm, or hf (transformers).",
        identity=True,
    )


def max_tokens_option(default: int) -> Any:
    return option(default, "Tokens generated per prompt at most.", identity=True, minimum=1)


def generations_option() -> Any:
    return option(
        0,
        "Also sample K answers per question (K >= 2; 0: none) at --sample-temperature, seeded "
        "by --seed (vLLM: one request with n=K, the prompt computed once), and score the "
        "multi-sample estimators against correctness: semantic entropy over the grader's "
        "answer classes, distinct answers, lexical similarity, EigenScore (middle layer, each "
        "answer's last token). The graded answer stays the run's own.",
        identity=True,
        minimum=0,
    )


def sample_temperature_option() -> Any:
    return option(
        1.0,
        "With --generations: the temperature of the K sampled answers.",
        identity=True,
        minimum=0,
    )


SEED_MAX = 2**32 - 1  # what every random generator used (numpy's included) accepts


def seed_option() -> Any:
    return option(
        0,
        "Seeds every random choice (bootstrap included).",
        identity=True,
        minimum=0,
        maximum=SEED_MAX,
    )


def n_boot_option(help: str = "Bootstrap resamples for the CIs.") -> Any:
    return option(1000, help, identity=True, minimum=1)


def quiet_option() -> Any:
    return option(False, "No progress bars or notes.", flags=("--quiet", "-q"), saved=False)


def log_to_option() -> Any:
    return option(
        None,
        "Also send the finished run (config, model and data identity, key statistics, figures, "
        "tables) to a tracker: wandb (offline into RUN/wandb unless WANDB_MODE=online) or mlflow "
        "(MLFLOW_TRACKING_URI; default ./mlflow.db). Needs the extra entrainment-cli\\[wandb] or "
        "\\[mlflow].",
        choices=("wandb", "mlflow"),
        saved=False,
        show_default=False,
    )


@dataclass
class RunOptions:
    """Where a run goes and how it talks: every command has these (last in --help)."""

    run_dir: Path | None = option(
        None,
        "Exact run directory (required with --resume).",
        flags=("--run-dir",),
        saved=False,
        show_default=False,
    )
    runs_dir: Path | None = option(
        None,
        "Parent of new run directories. Default: $ENTRAIN_RUNS_DIR, else ./runs.",
        saved=False,
        show_default=False,
    )
    resume: bool = option(
        False,
        "Continue the run in --run-dir with the options it was started with: finished "
        "examples are kept, those of missing or unreadable shards redone. Flags may change "
        "only options that change no number; refused if the model's files or the data changed.",
        saved=False,
    )
    log_to: str | None = log_to_option()
    quiet: bool = quiet_option()


@dataclass
class Distributed:
    """Where the transformers model sits and which share of the examples a run does: every
    study with a model has these."""

    device_map: str | None = option(
        None,
        "Spread the transformers model (probe pass, hf generation) over all visible GPUs: auto "
        "(fill them in order) or balanced (even them out).",
        choices=("auto", "balanced"),
        show_default=False,
    )
    max_memory: str | None = option(
        None,
        "With --device-map: memory per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB.",
        show_default=False,
    )
    shard: str | None = option(
        None,
        "Run only shard I of N (I/N, from 0): the examples whose SHA-256 of the id modulo N is "
        "I, the same split on every machine; `entrain merge` joins the N runs.",
        identity=True,
        show_default=False,
    )


@dataclass
class VLLMParallel(Distributed):
    """vLLM's own parallelism: every study that generates has these."""

    tensor_parallel_size: int = option(1, "vLLM: GPUs that split every layer.", minimum=1)
    pipeline_parallel_size: int = option(
        1, "vLLM: GPUs (or nodes, with ray) that hold consecutive blocks.", minimum=1
    )
    data_parallel_size: int = option(
        1,
        "vLLM data-parallel copies: only 1 (vLLM's offline engine refuses more in one "
        "process); run --shard I/N processes instead.",
        minimum=1,
    )
    distributed_executor_backend: str = option(
        "mp", "vLLM workers: mp (one machine) or ray (a Ray cluster).", choices=("mp", "ray")
    )
    gpu_memory_utilization: float = option(0.9, "vLLM: share of each GPU's memory it may take.")
    max_model_len: int | None = option(
        None,
        "Prompt + generation in tokens at most (default: the model's context).",
        identity=True,
        minimum=2,
        show_default=False,
    )


# -- the studies' configs ------------------------------------------------------------------


@dataclass
class RankmathConfig(RunOptions, Distributed):
    model: str | None = model_option()
    dataset: str = dataset_option("math500", "with a level field", lambda s: "level" in s.fields)
    data_file: Path | None = data_file_option()
    limit: int | None = limit_option("Keep the first N problems of each level.")
    layers: str = layers_option()
    positions: list[str] = listed(
        "last-prompt", "Comma list of last-prompt, mean-prompt.", identity=True
    )
    metrics: list[str] | None = metrics_option()
    save_hidden: bool = save_hidden_option()
    batch_size: int = batch_size_option(8)
    device: str = device_option()
    dtype: str = dtype_option()
    seed: int = seed_option()
    n_boot: int = n_boot_option()


@dataclass
class DeepmathConfig(RunOptions, Distributed):
    model: str | None = model_option()
    data_file: Path | None = data_file_option()
    sample: int = option(
        10_000, "Problems drawn at random (seeded by --seed).", identity=True, minimum=1
    )
    limit: int | None = limit_option("Then use only the first N of them.")
    layers: str = layers_option()
    metrics: list[str] | None = metrics_option()
    save_hidden: bool = save_hidden_option()
    batch_size: int = batch_size_option(8)
    device: str = device_option()
    dtype: str = dtype_option()
    seed: int = seed_option()  # picks the sample
    n_boot: int = n_boot_option()


@dataclass
class ConflictConfig(RunOptions, Distributed):
    model: str | None = model_option()
    data_file: Path | None = data_file_option()
    limit: int | None = limit_option()
    layers: str = layers_option()
    metrics: list[str] | None = metrics_option()
    save_hidden: bool = save_hidden_option()
    batch_size: int = batch_size_option(8)
    device: str = device_option()
    dtype: str = dtype_option()
    seed: int = seed_option()


@dataclass
class LongreasonConfig(RunOptions, VLLMParallel):
    model: str | None = model_option()
    data_file: Path | None = data_file_option()
    splits: list[str] = listed(
        "8k,16k,32k,64k",
        "Comma list of LongReason splits (context lengths): original, expanded, 8k, 16k, 32k, "
        "64k, 128k. The first is the baseline of the paired tests.",
        identity=True,
    )
    limit: int | None = limit_option("Use the first N questions of each split.")
    layers: str = layers_option("all")
    metrics: list[str] | None = metrics_option()
    save_hidden: bool = save_hidden_option()
    batch_size: int = batch_size_option(
        1, "Prompts per forward pass (long contexts: keep it small)."
    )
    device: str = device_option()
    dtype: str = dtype_option()
    seed: int = seed_option()
    engine: str = engine_option()
    max_tokens: int = max_tokens_option(8)


@dataclass
class AccuracyConfig(RunOptions, VLLMParallel):
    model: str | None = model_option()
    data_file: Path | None = data_file_option()
    limit: int | None = limit_option("Keep the first N problems of each level.")
    layers: str = layers_option()
    metrics: list[str] | None = metrics_option()
    save_hidden: bool = save_hidden_option()
    batch_size: int = batch_size_option(8)
    device: str = device_option()
    dtype: str = dtype_option()
    seed: int = seed_option()
    engine: str = engine_option()
    max_tokens: int = max_tokens_option(1024)
    generations: int = generations_option()
    sample_temperature: float = sample_temperature_option()
    n_boot: int = n_boot_option()


@dataclass
class RobustnessSelection:
    """The questions and their noisy variants: shared by the study and its export."""

    dataset: str = dataset_option("mmlu_pro", "of multiple choice", lambda s: "options" in s.fields)
    data_file: Path | None = data_file_option()
    categories: list[str] | None = listed(
        "all",
        "Comma list of MMLU-Pro categories (e.g. law,computer science).",
        all_is_none=True,
        identity=True,
    )
    limit: int = option(
        20,
        "Keep the first N questions of each category (upstream: 20); 0: all.",
        identity=True,
        minimum=0,
    )
    noise: list[str] = listed(
        "normal,light,heavy",
        "Comma list of noise levels: normal (none), light (10% of letters and words garbled, "
        "5 near-duplicate options), heavy (20%, 10 options).",
        identity=True,
    )
    seed: int = seed_option()


@dataclass
class RobustnessConfig(RunOptions, Distributed, RobustnessSelection):
    model: str | None = model_option()
    layers: str = layers_option()
    metrics: list[str] | None = metrics_option()
    save_hidden: bool = save_hidden_option()
    batch_size: int = batch_size_option(8)
    device: str = device_option()
    dtype: str = dtype_option()


@dataclass
class RobustnessExportConfig(RobustnessSelection):
    out: Path = option(
        None,
        "The .jsonl or .json file to write (every question with its variants).",
        show_default=False,
        saved=False,
    )
    quiet: bool = quiet_option()


@dataclass
class CotConfig(RunOptions, VLLMParallel):
    strategy: str | None = option(
        None,
        "cot (zero-shot), few-shot (random pool examples), auto-shot (the most similar ones) "
        "or curriculum (chosen by sparsity level). Default: cot.",
        identity=True,
        choices=("cot", "few-shot", "auto-shot", "curriculum"),
        show_default=False,
    )
    curriculum: bool = option(
        False, "Shorthand for --strategy curriculum.", flags=("--curriculum",)
    )
    model: str | None = model_option()
    data_file: Path | None = data_file_option()
    pool_file: Path | None = option(
        None,
        "Local .jsonl/.parquet of solved training problems (problem, solution, level, type or "
        "subject) for the demonstrations. Default: MATH train from the hub, else the bundled "
        "sample.",
        show_default=False,
    )
    sample: int | None = option(
        None,
        "Answer N test problems drawn at random with --seed (default: all).",
        identity=True,
        minimum=1,
        show_default=False,
    )
    pool_size: int = option(
        500,
        "The first N pool problems (after removing any test problem).",
        identity=True,
        minimum=1,
    )
    shots: int = option(
        2, "Demonstrations for few-shot and auto-shot (curriculum: 2).", identity=True, minimum=1
    )
    rank_metric: str = option(
        "l0_outlier",
        "Sparsity metric that ranks problems (any of entrain's metrics; l0_norm is an alias of "
        "l0_outlier). Its direction decides: sparser = harder.",
        identity=True,
    )
    n_levels: int = option(
        5, "Sparsity levels: quantile bins of the pool's scores (>= 3).", identity=True, minimum=3
    )
    max_tokens: int = max_tokens_option(4096)
    engine: str = engine_option()
    batch_size: int = batch_size_option(8)
    device: str = device_option()
    dtype: str = dtype_option()
    seed: int = seed_option()
    generations: int = generations_option()
    sample_temperature: float = sample_temperature_option()


@dataclass
class CorrelateAnalysis:
    """How a correlate run's tokens are pooled and summarized: the run's last stage, and
    `entrain correlate-analyze` on finished runs."""

    min_nucleus: int = option(
        2,
        "Pool only tokens whose nucleus has at least this many tokens.",
        identity=True,
        minimum=1,
    )
    bins: int = option(
        50, "Equal-width entropy bins for the median curve.", identity=True, minimum=1
    )
    n_boot: int = n_boot_option("Bootstrap resamples (of prompts) for the CIs.")
    seed: int = seed_option()


@dataclass
class CorrelateConfig(RunOptions, VLLMParallel, CorrelateAnalysis):
    model: str | None = model_option()
    dataset: str = dataset_option(
        "writingprompts", "with a prompt text", lambda s: s.text is not None
    )
    data_file: Path | None = data_file_option()
    limit: int = option(100, "The first N prompts of the dataset.", identity=True, minimum=1)
    max_tokens: int = max_tokens_option(100)
    top_p: float = option(0.9, "Nucleus mass for sampling and STOPS, in (0, 1].", identity=True)
    temperature: float = option(1.0, "Sampling temperature (0 = greedy).", identity=True, minimum=0)
    chat: bool = option(
        False,
        "Apply the chat template (upstream: no).",
        flags=("--chat/--no-chat",),
        identity=True,
    )
    engine: str = engine_option()
    batch_size: int = batch_size_option(16)
    device: str = device_option()
    dtype: str = dtype_option()
    metrics: list[str] | None = listed(
        None,
        "Also record these sparsity metrics (comma list or all) of the hidden state at each "
        "generated position.",
        all_is_none=False,
        identity=True,
        show_default=False,
    )
    layers: str = layers_option("-1", "Layers for --metrics: -1 (final norm), 0..L, lists, all.")
    grade: bool = option(
        False,
        "Grade the answers against the gold (gsm8k) and relate confidence to correctness: "
        "tables/summary.json, classifier.json.",
        flags=("--grade",),
        identity=True,
    )
    prompting: str = option(
        "baseline",
        "With --grade: few-shot style baseline, cot or cod.",
        identity=True,
        choices=("baseline", "cot", "cod"),
    )
    shots: int = option(8, "With --grade: few-shot examples (0-8).", identity=True, minimum=0)
    generations: int = generations_option()
    sample_temperature: float = sample_temperature_option()


@dataclass
class CorrelateAnalyzeConfig(CorrelateAnalysis):
    run_dirs: list[Path] = option(
        None, "Finished correlate runs to (re)analyze.", argument=True, saved=False
    )
    out: Path | None = option(
        None,
        "With several runs: where the joint stats.csv, stats.tex and grid figure go.",
        show_default=False,
        saved=False,
    )
    quiet: bool = quiet_option()


@dataclass
class ReportConfig:
    run_dirs: list[Path] = option(None, "One or more run directories.", argument=True, saved=False)
    out: Path | None = option(
        None,
        "The HTML file to write. Default: RUN/report.html for one run, ./report.html for several.",
        show_default=False,
        saved=False,
    )
    log_to: str | None = log_to_option()
    quiet: bool = quiet_option()


@dataclass
class PretrainConfig(RunOptions):
    llm_size: str = option(
        "llama-16-16",
        "llama-LAYERS-HEADS: hidden 64 x HEADS, intermediate 2 x hidden.",
        identity=True,
    )
    steps: int = option(2500, "Optimizer steps.", identity=True, minimum=1)
    batch_size: int = option(
        32, "Facts per step (packed into rows, not padded).", identity=True, minimum=1
    )
    lr: float = option(1e-4, "Peak learning rate (AdamW).", identity=True)
    warmup_ratio: float = option(
        0.2, "Share of steps of linear warmup before cosine decay.", identity=True
    )
    eval_every: int = option(
        100,
        "Evaluate all splits at step 0 and every N steps; 0: only after training.",
        identity=True,
    )
    num_test: int = option(
        1000, "Queries per split at most (ID, OOD-medium, OOD-hard).", identity=True, minimum=1
    )
    entities: int = option(4000, "Entities of the graph.", identity=True, minimum=1)
    relations: int = option(50, "Relations of the graph.", identity=True, minimum=1)
    rules: int = option(
        25, "Latent rules (bodies of 2 to 5 relations, acyclic).", identity=True, minimum=1
    )
    deductible_rules: int = option(
        20, "Rules that derive facts (of --rules).", identity=True, minimum=1
    )
    attach: int = option(6, "Edges each new entity attaches with.", identity=True, minimum=1)
    n_atomic: int = option(5000, "Atomic facts in the training set.", identity=True, minimum=1)
    n_derived: int = option(5000, "Derived facts in the training set.", identity=True, minimum=1)
    negatives: str = option(
        "relation",
        "relation: each query's 9 negatives are other answers of its relation in its split (one "
        "query per relation and answer), so the relation-prior and popularity answerers sit near "
        "chance; frequency: drawn in proportion to the relation's training tail counts (leaves "
        "a prior); uniform: upstream's, any entity (to reproduce its numbers).",
        identity=True,
        choices=("relation", "frequency", "uniform"),
    )
    max_per_relation: int = option(
        0, "Queries of one relation per split at most; 0: no cap.", identity=True, minimum=0
    )
    rank_eval: int = option(
        0,
        "After training, rank the gold among all entities for the first N queries of each split "
        "(filtered MRR, Hits@1/3/10, beside the relation prior's): no option sampling. 0: off.",
        identity=True,
        minimum=0,
    )
    seeds: list[str] | None = listed(
        None,
        "Comma list of seeds: one run each (own graph, data order, initialisation) under "
        "seed<S>/, and tables/seeds.csv with the across-seed mean and 95% CI.",
        identity=True,
        show_default=False,
    )
    save_every: int = option(
        0,
        "Save the training state every N steps, for --resume to continue from; 0: never.",
        minimum=0,
    )
    layers: str = layers_option()
    metrics: list[str] | None = metrics_option()
    save_hidden: bool = save_hidden_option("final evaluation's")  # shift.csv: ID against OOD
    eval_batch_size: int = option(64, "Queries (x 10 options) per evaluation forward.", minimum=1)
    compile: str = option(
        "auto",
        "torch.compile the training step: auto (on GPU), on, off.",
        choices=("auto", "on", "off"),
    )
    dtype: str = option(
        "auto",
        "Compute: auto (bfloat16 autocast on GPU and on CPUs with native bfloat16, else "
        "float32), bfloat16, float32. Weights are float32 either way.",
        identity=True,
        choices=("auto", "bfloat16", "float32"),
    )
    device: str = device_option()
    seed: int = seed_option()


@dataclass
class ProbeConfig(RunOptions, VLLMParallel):
    model: str | None = model_option()
    data_file: Path | None = data_file_option()
    dataset: str | None = option(
        None,
        "hub:OWNER/NAME (with --split, --subset), or a registered dataset. Default, with no "
        "--data-file either: the bundled arithmetic sample.",
        show_default=False,
    )
    split: str | None = option(
        None,
        "Hub split (default train); in a file, the rows whose 'split' field matches.",
        show_default=False,
    )
    subset: str | None = option(None, "Hub dataset configuration (subset).", show_default=False)
    text_field: str | None = option(
        None, "Field holding each example's text.", identity=True, show_default=False
    )
    messages_field: str | None = option(
        None,
        'Field holding chat messages: [{"role": ..., "content": ...}, ...].',
        identity=True,
        show_default=False,
    )
    template: str | None = option(
        None,
        "Text built from each row's fields, e.g. 'Q: {question} ({topic})'.",
        identity=True,
        show_default=False,
    )
    system: str | None = option(
        None, "System prompt before every text.", identity=True, show_default=False
    )
    chat: bool = option(
        True,
        "Use the model's chat template when it has one (--no-chat: the plain text).",
        flags=("--chat/--no-chat",),
        identity=True,
    )
    id_field: str | None = option(
        None,
        "Field with each row's unique id (default: the row number).",
        identity=True,
        show_default=False,
    )
    label: str | None = option(
        None,
        "Numeric or ordinal column (Pearson, Spearman, binned means) or two-valued one (AUROC "
        "with direction, Mann-Whitney, violins). Ordinal text: give its order, --label-order.",
        identity=True,
        show_default=False,
    )
    label_order: list[str] | None = listed(
        None,
        "The values of an ordinal text --label from low to high, e.g. easy,medium,hard: they "
        "count as 0, 1, 2, ... (two values: the second is the positive one).",
        identity=True,
        show_default=False,
    )
    group: str | None = option(
        None,
        "Categorical column: per-group summary, Kruskal-Wallis with epsilon^2, bars with SEM.",
        identity=True,
        show_default=False,
    )
    pair_id: str | None = option(
        None,
        "Column naming each pair (with --condition): paired Wilcoxon with rank-biserial r.",
        identity=True,
        show_default=False,
    )
    condition: str | None = option(
        None, "Column with each row's condition within its pair.", identity=True, show_default=False
    )
    reference: str | None = option(
        None,
        "The reference value of --condition (else --group): with --save-hidden, Mahalanobis and "
        "relative Mahalanobis distance fitted on it, and AUROC of it against each other value.",
        identity=True,
        show_default=False,
    )
    sample: int | None = option(
        None,
        "Probe N rows drawn at random with --seed, kept in the data's order (default: all).",
        identity=True,
        minimum=1,
        show_default=False,
    )
    limit: int | None = limit_option("Use only the first N rows (of --sample's, if given).")
    layers: str = layers_option()
    positions: list[str] = listed(
        "last-prompt", "Comma list of last-prompt, mean-prompt.", identity=True
    )
    metrics: list[str] | None = metrics_option()
    save_hidden: bool = save_hidden_option()
    max_tokens: int = option(
        0,
        "Generate up to N tokens per example and add the per-token metrics (entropy, nucleus, "
        "STOPS, LogTokU; mean and max per example). 0: no generation.",
        identity=True,
        minimum=0,
    )
    answer_field: str | None = option(
        None,
        "Field with each row's gold answer: grade the greedy answer (with --max-tokens; a "
        "\\boxed{} by math-verify, a numeric gold by the last number, else the first line) and "
        "score every signal against correctness: tables/answers, signals.csv.",
        identity=True,
        show_default=False,
    )
    top_p: float = option(0.9, "Nucleus mass for sampling and STOPS, in (0, 1].", identity=True)
    temperature: float = option(
        1.0,
        "Sampling temperature (0 = greedy; with --answer-field: 0, the graded answer).",
        identity=True,
        minimum=0,
    )
    engine: str = engine_option()
    batch_size: int = batch_size_option(8)
    device: str = device_option()
    dtype: str = dtype_option()
    seed: int = seed_option()  # the sampling and the bootstrap
    n_boot: int = n_boot_option()


# -- the registry --------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    """One study as the pipeline and the CLI see it. ``module`` carries out its stages
    (``prepare`` and ``execute``, see :mod:`entrainment_cli.pipeline`); ``plots`` names the
    module with its ``plot_run`` and ``plot_compare``; ``demo`` is its `make demo` run."""

    name: str
    config: type
    help: str
    module: str
    plots: tuple[str, str, str]  # module, its function for one run, for several
    demo: tuple[tuple[str, ...], ...] = ()
    demo_env: tuple[tuple[str, str], ...] = ()

    def implementation(self):
        return importlib.import_module(self.module)

    def plot_run(self, run_dir: Path) -> list[Path]:
        """The study's figures, and the controls and ceiling figures of a study that has them."""
        from . import vectors
        from .plots import controls

        module, one, _ = self.plots
        return [
            *getattr(importlib.import_module(module), one)(run_dir),
            *controls.plot_run(run_dir),
            *vectors.plot_ceiling(run_dir),
        ]

    def plot_compare(self, run_dirs: list[Path], out: Path) -> list[Path]:
        module, _, several = self.plots
        return getattr(importlib.import_module(module), several)(run_dirs, out)


STUDIES: tuple[Study, ...] = (
    Study(
        "qa rankmath",
        RankmathConfig,
        """Sparsity of the prompt's hidden state against MATH difficulty level (1-5).

Writes tables/samples.parquet (one row per problem x layer x position), tables/summary.csv
(per level: n, mean, std, SEM, median), tables/correlations.csv (Spearman and Pearson of level
vs metric over all problems, p, N, bootstrap CI) and figures/.""",
        "entrainment_cli.qa.rankmath",
        ("entrainment_cli.plots.rankmath", "plot_run", "plot_compare"),
        demo=(("--layers", "0,10,20,30,-1", "--save-hidden"),),
    ),
    Study(
        "qa robustness",
        RobustnessConfig,
        """Sparsity and accuracy of MMLU-Pro questions under seeded noise, by category.

Each question is asked as is (normal) and under seeded noise: look-alike letters and typos in
the question (line breaks kept) plus near-duplicates of wrong options inserted among the
options (letters past J). One teacher-forced pass per prompt gives the last-prompt hidden
state's sparsity metrics and the answer: the option letter with the highest next-token logit.
Writes tables/variants.parquet, noise_rates.csv (set vs measured noise), samples.parquet (per
question x noise: metrics, predicted letter, correct), summary.csv and accuracy.csv (category x
noise), paired_tests.csv (Wilcoxon signed-rank and rank-biserial of each metric between noise
levels, same questions), accuracy_tests.csv (McNemar) and figures/ (heatmaps of each metric
and accuracy, category x noise). `entrain qa robustness-export` writes the noisy dataset
alone.""",
        "entrainment_cli.qa.robustness",
        ("entrainment_cli.plots.robustness", "plot_run", "plot_compare"),
        demo=(("--limit", "1"),),
    ),
    Study(
        "correlate",
        CorrelateConfig,
        """Per-token entropy, nucleus, STOPS and LogTokU.

How entropy relates to STOPS, per token.

Generates with vLLM (or transformers), then one teacher-forced probe pass computes every
per-token quantity in float32. Writes tables/prompts.parquet, tables/tokens.parquet,
tables/stats.csv|tex (Pearson, Spearman, N, bootstrap CI over prompts), tables/bins.csv (50-bin
median and IQR), tables/fit.json (a H exp(-b H) + c) and figures/.

With --grade (gsm8k), the few-shot prompt of --prompting asks for a final '#### <number>'; each
answer is graded, the tokens that spell it are located, and per-prompt means of entropy, STOPS
and LogTokU are compared between correct and incorrect answers; tables/signals.csv ranks them and
the standard baselines (log-prob, perplexity, entropy, nucleus size) by ROC-AUC, PR-AUC, PRR,
AURC, ECE and Brier with bootstrap CIs.

`entrain correlate-analyze RUN...` re-analyzes finished runs; several runs give one joint table
and a grid figure.""",
        "entrainment_cli.correlate.run",
        ("entrainment_cli.plots.correlate", "plot_run", "plot_compare"),
        demo=(
            ("--dataset", "xsum", "--limit", "20", "--max-tokens", "64"),
            (
                "--dataset",
                "gsm8k",
                "--grade",
                "--prompting",
                "cot",
                "--shots",
                "4",
                "--limit",
                "16",
                "--max-tokens",
                "128",
            ),
        ),  # fmt: skip
    ),
    Study(
        "cot",
        CotConfig,
        """MATH-500 with one prompting strategy, graded.

Answers MATH-500 problems with one prompting strategy and grades them.

Every strategy ranks the pool and the test problems by the sparsity of the model's last prompt
state (one batched probe pass) and bins them into --n-levels levels (sparser = harder).
curriculum gives each problem two demonstrations by its level: easy -> same level then one
harder, middle -> two of the same level, hard -> one easier then same level; within a level
the most similar (all-MiniLM-L6-v2). Generation is greedy; the answer is the last \\boxed{},
compared by math-verify.

Writes tables/ranking.parquet, tables/demos.parquet, tables/generations.parquet,
tables/summary.json (accuracy overall, by MATH level, subject and sparsity level, with Wilson
95% CIs) and figures/. `entrain plot RUN... --out DIR` compares strategies. tables/signals.csv
ranks the log-prob baselines and the rank metric against correctness (ROC-AUC, PR-AUC, PRR,
AURC, ECE, Brier, bootstrap CIs; see README).""",
        "entrainment_cli.cot.run",
        ("entrainment_cli.plots.cot", "plot_run", "plot_compare"),
        demo=(("--curriculum", "--sample", "8", "--pool-size", "20", "--max-tokens", "128"),),
    ),
    Study(
        "qa accuracy",
        AccuracyConfig,
        """MATH-500 accuracy and the prompt's hidden-state sparsity: does sparsity predict a wrong
answer?

Generates a greedy answer per problem (asked for in \\boxed{}), grades its last box against the
gold answer with math-verify, and measures each metric at the last prompt token of the same
prompt. Writes tables/answers.parquet (output, prediction, correct), samples.parquet (metrics
with correctness), accuracy_by_level.csv (Wilson CI), summary.csv (metrics per level),
association.csv (per metric: point-biserial r of correctness with p and bootstrap CI, AUROC
with the Mann-Whitney p, and upstream's r across the level means) and figures/.
tables/signals.csv ranks every sparsity metric and the log-prob baselines against correctness
(ROC-AUC, PR-AUC, PRR, AURC, ECE, Brier, bootstrap CIs; see README).""",
        "entrainment_cli.qa.accuracy",
        ("entrainment_cli.plots.qa", "plot_accuracy", "compare_accuracy"),
        demo=(("--limit", "1", "--max-tokens", "128", "--engine", "hf"),),
    ),
    Study(
        "qa deepmath",
        DeepmathConfig,
        """Sparsity against DeepMath-103K's continuous difficulty.

Sparsity of the prompt's last hidden state against DeepMath-103K's continuous
difficulty score (zwhe99/DeepMath-103K, fields question and difficulty).

Measures, per problem of a seeded sample of --n, each metric at the last prompt token; then
Pearson and Spearman of difficulty vs metric over the problems with p, N and a bootstrap CI
(tables/correlations.csv, with whether the metric is sparser on harder problems at p < 0.05),
an OLS line (tables/fit.csv) and its 95% band (tables/band.csv), and a scatter with the band
per metric (figures/). Offline: the bundled sample.""",
        "entrainment_cli.qa.deepmath",
        ("entrainment_cli.plots.qa", "plot_deepmath", "compare_deepmath"),
        demo=(("--sample", "16"),),
    ),
    Study(
        "qa longreason",
        LongreasonConfig,
        """Sparsity at every layer as the context grows (LongReason).

Sparsity at every layer as the context grows (LongReason, lz1bytedance/LongReason).

For each split (the same questions with the background expanded to 8k ... 64k tokens),
measures each metric at the last prompt token at every layer (--layers all: the embedding
output, the residual stream after each block, and the state after the final norm), in float32,
and generates a short greedy answer whose letter (A-E) is parsed without taking letters out of
words. Prompts longer than the model's context are skipped and counted, never truncated.
Writes tables/samples.parquet, answers.parquet, accuracy.csv (per split, Wilson CI, skipped
count), profile.csv (per split and layer), paired.csv (Wilcoxon of each longer split against
the first, question by question) and figures/ (layer profile per split with a zoom on the last
layers; accuracy). --data-file: rows with the LongReason fields; a 'split' field per row lets
one file hold several splits.""",
        "entrainment_cli.qa.longreason",
        ("entrainment_cli.plots.qa", "plot_longreason", "compare_longreason"),
        demo=(("--limit", "2", "--engine", "hf"),),
    ),
    Study(
        "qa conflict",
        ConflictConfig,
        """Sparsity when the context contradicts the model's knowledge (knowledge-conflict pairs).

Each item (fields main_entity, parametric_knowledge, conflicting_knowledge,
question_about_conflicting_segments, question_about_nonconflicting_segments; --data-file as
JSONL, Parquet, a JSON list or upstream's {subject: [items]} data.json) gives three prompts:
conflict (conflicting knowledge + its question), nonconflict (parametric knowledge + the other
question, upstream's comparison) and control (parametric knowledge + the conflicting question:
only the context differs). Measures each metric at the last prompt token in float32;
tables/paired.csv holds, per metric (and prompt length), the Wilcoxon signed-rank test of
conflict minus each other condition over items with the rank-biserial and Cohen's d_z effect
sizes; tables/summary.csv the per-condition statistics; figures/ box plots. Without
--data-file: the bundled sample (smoke test).""",
        "entrainment_cli.qa.conflict",
        ("entrainment_cli.plots.qa", "plot_conflict", "compare_conflict"),
        demo=(("--limit", "8"),),
    ),
    Study(
        "probe",
        ProbeConfig,
        """Every measurement on your own texts and labels.

Every measurement of the tool on your own texts, against your own labels.
The text of each row: --text-field, --messages-field or --template, with --system and the
model's chat template when it has one (--no-chat: plain text). Hidden-state sparsity metrics
at --layers and --positions; with --max-tokens N, a generation stage (vLLM or transformers)
and the per-token metrics of `correlate` (tables/tokens.parquet), with their mean and max per
example (tables/token_summary.parquet). The question follows from the columns given, each
with N, an effect size, p and a bootstrap CI: --label numeric (Pearson and Spearman,
tables/label_correlations.csv, binned means) or two-valued (AUROC with direction and
Mann-Whitney, label_auroc.csv, violins); --group (per-group summary and Kruskal-Wallis with
epsilon^2, group_summary.csv and group_kruskal.csv, bars with SEM); --pair-id with
--condition (paired Wilcoxon with rank-biserial r, paired.csv, paired differences). Always:
tables/samples.parquet (id, the exact prompt, your columns, each metric per layer and
position), summary.csv and per-metric distributions. With no data: the bundled arithmetic
sample (text, difficulty, multi_step, operation, pair, phrasing).""",
        "entrainment_cli.probe.run",
        ("entrainment_cli.plots.probe", "plot_run", "plot_compare"),
        demo=(
            (
                "--label",
                "difficulty",
                "--group",
                "operation",
                "--pair-id",
                "pair",
                "--condition",
                "phrasing",
                "--save-hidden",
                "--reference",
                "symbolic",
                "--max-tokens",
                "32",
                "--engine",
                "hf",
            ),  # fmt: skip
        ),
    ),
    Study(
        "pretrain",
        PretrainConfig,
        """A small Llama trained on a synthetic knowledge graph.

Trains a small Llama from scratch on a synthetic knowledge graph; measures accuracy and
last-prompt sparsity on training facts (ID) and on held-out facts that a 3+-step (OOD-medium)
or 2-step (OOD-hard) rule derives, during and after training.

Writes kg/ (rules, facts, training set, queries, stats.json), checkpoint/ (an HF directory
usable as --model by every command), tables/train.parquet, tables/eval.parquet (one row per
query, split, step and layer), tables/dynamics.parquet (per step, split and layer: accuracy,
the relation-prior and popularity baselines, gold loss, metric means and SEMs),
tables/final.csv, tables/relations.csv (accuracy per split and relation) and figures/.
--resume continues from the last --save-every state.""",
        "entrainment_cli.pretrain.run",
        ("entrainment_cli.plots.pretrain", "plot_run", "plot_compare"),
        # One thread: a model this small loses more to thread sync than it gains on a busy CPU.
        demo=(
            (
                "--llm-size",
                "llama-2-4",
                "--steps",
                "5000",  # the fewest of 1000-step multiples that memorize ID (0.81 at 4000)
                "--lr",
                "1e-3",  # 2e-3 and 3e-3 learn nothing in 2000-4000 steps
                "--eval-every",
                "1000",
                "--num-test",
                "200",
                "--entities",
                "1000",
                "--relations",
                "20",
                "--rules",
                "10",
                "--deductible-rules",
                "8",
                "--n-atomic",
                "2000",
                "--n-derived",
                "2000",
                "--rank-eval",
                "50",
            ),  # fmt: skip
        ),
        demo_env=(("OMP_NUM_THREADS", "1"),),
    ),
)

BY_NAME = {s.name: s for s in STUDIES}
