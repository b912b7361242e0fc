"""`entrain probe`: every measurement the tool has, on the user's own texts and labels.

The question is chosen by the columns given: a numeric or two-valued ``--label``, a
``--group`` column, ``--pair-id`` with ``--condition``; with none, the per-example table and
each metric's distribution. Hidden-state sparsity metrics are measured at ``--layers`` and
``--positions`` for every example.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import study
from ..correlate.run import TOKEN_STATS, _finalize, _probe
from ..data import registry
from ..data.texts import TextSource, render
from ..engines.generate import Generation, Sampling, resolve_kind
from ..engines.probe import HiddenProbe
from ..engines.token_probe import TokenProbe
from ..errors import UserError
from ..runs.rundir import RunDir, atomic_write_files
from ..science import labels, stats

log = logging.getLogger("entrain")

COMMAND = "probe"
SAMPLE = "probe"  # the registered dataset whose bundled sample stands in when no data is given
# columns the per-example table writes itself: a question column may not take these names
WRITTEN = ("id", "prompt", "n_prompt_tokens", "layer", "position")
AGGREGATES = ("mean", "max")  # of each per-token metric over an example's generated tokens


@dataclass
class ProbeConfig:
    model: str | None = None
    data_file: Path | None = None
    dataset: str | None = None
    split: str | None = None
    subset: str | None = None
    text_field: str | None = None
    messages_field: str | None = None
    template: str | None = None
    system: str | None = None
    chat: bool = True
    id_field: str | None = None
    label: str | None = None
    group: str | None = None
    pair_id: str | None = None
    condition: str | None = None
    limit: int | None = None
    layers: str = "-1"
    positions: list[str] = field(default_factory=lambda: ["last-prompt"])
    metrics: list[str] | None = None
    max_tokens: int = 0  # 0: no generation stage
    top_p: float = 0.9
    temperature: float = 1.0
    engine: str = "auto"
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    n_boot: int = 1000
    run_dir: Path | None = None
    runs_dir: Path | None = None
    resume: bool = False
    quiet: bool = False


def question_columns(cfg: ProbeConfig) -> dict[str, str]:
    """The columns the question reads, keyed by their option; pairs need both options."""
    if (cfg.pair_id is None) != (cfg.condition is None):
        raise UserError("--pair-id and --condition go together: give both or neither")
    named = {
        "--label": cfg.label,
        "--group": cfg.group,
        "--pair-id": cfg.pair_id,
        "--condition": cfg.condition,
    }
    named = {option: name for option, name in named.items() if name is not None}
    for option, name in named.items():
        if name in WRITTEN:
            raise UserError(
                f"{option} '{name}' is a column the study writes itself ({', '.join(WRITTEN)}); "
                "rename that field in the data"
            )
    return named


def text_source(cfg: ProbeConfig) -> TextSource:
    """The text source asked for; with no data and no source, the sample's ``text`` field."""
    given = (cfg.text_field, cfg.messages_field, cfg.template)
    if given == (None, None, None) and cfg.data_file is None and cfg.dataset is None:
        return TextSource(text_field="text")
    return TextSource(*given)


def select(cfg: ProbeConfig, text: TextSource, questions: dict[str, str]) -> tuple:
    """(loaded data, examples frame: id, content (text or messages) and question columns),
    with every column checked and the question's kind settled before anything is written."""
    data = registry.load_user(
        cfg.dataset,
        cfg.data_file,
        split=cfg.split,
        subset=cfg.subset,
        id_field=cfg.id_field,
        fields={**text.fields(), **questions},
        default=SAMPLE,
    )
    study.check_positive(("--limit", cfg.limit))
    rows = data.rows[: cfg.limit]
    frame = pd.DataFrame({"id": data.ids[: cfg.limit]})
    frame["content"] = [text.content(r, f"{data.location} row {i}") for i, r in enumerate(rows)]
    for name in dict.fromkeys(questions.values()):
        frame[name] = [r[name] for r in rows]
    if cfg.label is not None:
        labels.label_kind(frame[cfg.label])
    if cfg.group is not None and frame[cfg.group].nunique() < 2:
        raise UserError(f"--group '{cfg.group}' has fewer than two values; nothing to compare")
    if cfg.pair_id is not None:
        labels.comparisons(frame, cfg.pair_id, cfg.condition)
    return data, frame


def run(cfg: ProbeConfig) -> Path:
    # Everything that can be wrong with the input is checked before the run directory exists.
    metric_names = study.metric_names(cfg.metrics)
    study.check_positive(("--batch-size", cfg.batch_size), ("--n-boot", cfg.n_boot))
    sampling = kind = None
    if cfg.max_tokens:
        sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.seed)
        kind = resolve_kind(cfg.engine)
    text = text_source(cfg)
    questions = question_columns(cfg)
    data, examples = select(cfg, text, questions)
    setup = study.model_setup(cfg.model, cfg.device, cfg.dtype)
    layers = study.model_layers(setup.resolved, cfg.layers)
    positions = study.check_positions(cfg.positions)

    identity = {
        "model": setup.resolved.id,
        "dataset": data.fingerprint,
        "text": [text.text_field, text.messages_field, text.template, cfg.system, cfg.chat],
        "id_field": cfg.id_field,
        "limit": cfg.limit,
        "layers": layers,
        "positions": positions,
        "metrics": metric_names,
        "dtype": str(setup.dtype),
        "generation": None if sampling is None else [sampling.__dict__, kind],
    }
    with study.start_run(COMMAND, identity, cfg, setup, data, [data.spec.name]) as rd:
        from transformers import AutoConfig, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(setup.resolved.path)
        prompts, formats = zip(
            *(render(tokenizer, c, cfg.system, cfg.chat) for c in examples["content"]),
            strict=True,
        )
        examples = examples.drop(columns="content").assign(prompt=list(prompts))
        config = AutoConfig.from_pretrained(setup.resolved.path)
        tokens = study.tokenize_prompts(examples, tokenizer, config, cfg.max_tokens or 0)
        columns = ["id", "prompt", *dict.fromkeys(questions.values()), "n_prompt_tokens"]
        model = None
        if sampling is not None:  # first, so that a GPU vLLM engine is gone before the probe
            model = generate(rd, cfg, setup, kind, sampling, examples, tokens, tokenizer)
        if model is None:
            model, tokenizer = study.load_model(rd, setup)
        already_done = study.probe_samples(
            rd,
            cfg,
            examples[columns],
            tokens,
            HiddenProbe(model, layers, positions),
            metric_names,
            tokenizer.pad_token_id,
        )
        rd.update(
            prompt_format=formats[0],
            counts={
                "examples": len(examples),
                "skipped_too_long": len(tokens.skipped),
                "already_done": already_done,
            },
        )
        per_token = None
        if sampling is not None:
            per_token = token_summary(rd, cfg, model, tokenizer, setup, examples, tokens, columns)
        with rd.stage("analysis"):
            keys = ["id", "layer", "position"]
            samples = rd.read_in_order("samples", keys, examples["id"].tolist())
            if samples is None:
                raise UserError("no example could be probed (all were skipped); see run.log")
            samples = samples[[*columns, "layer", "position", *metric_names]]
            rd.write_table("samples", samples)
            write_analysis(rd, cfg, samples, metric_names, per_token)
        nonfinite = study.count_nonfinite(samples, metric_names)
        counts = {"probed": int(samples["id"].nunique()), "nonfinite_values": nonfinite}
        rd.update(counts={**rd.manifest["counts"], **counts})
        from ..plots.probe import plot_run

        plot_run(rd.path)
    return rd.path


def generate(rd, cfg, setup, kind, sampling, examples, tokens, tokenizer):
    """The generation stage (resumable), in ``correlate``'s ``generations`` layout; returns
    the transformers model when hf generated with it (else None: not loaded yet)."""
    ids = examples["id"].tolist()
    texts = examples["prompt"].tolist()
    done = rd.done_ids("generations", "prompt_id")
    todo = [i for i in tokens.keep if ids[i] not in done]
    if not todo:  # a resumed run with nothing left: no engine start
        return None
    model = None
    if kind == "hf":  # the probe's model generates too
        model, tokenizer = study.load_model(rd, setup)

    def columns(part: list[int], gens: list[Generation]) -> dict:
        return {
            "prompt_id": [ids[i] for i in part],
            "prompt": [texts[i] for i in part],
            "prompt_token_ids": [tokens.token_lists[i] for i in part],
            "token_ids": [g.token_ids for g in gens],
            "engine_logprobs": [g.logprobs for g in gens],
            "finish_reason": [g.finish_reason for g in gens],
        }

    with study.engine_for(rd, kind, setup, cfg.batch_size, model, tokenizer) as engine:
        study.generate_into(
            rd, cfg, "generations", engine, sampling, ids, tokens.token_lists, todo, columns=columns
        )
    return model


def token_summary(rd, cfg, model, tokenizer, setup, examples, tokens, columns) -> pd.DataFrame:
    """The per-token metrics of ``correlate`` over each generation (tables/prompts and
    tables/tokens), and their mean and max per example beside the example's columns
    (tables/token_summary)."""
    ids = [examples["id"].iloc[i] for i in tokens.keep]
    _probe(rd, cfg, TokenProbe(model, cfg.top_p), tokenizer, ids, setup.device)
    generated, per_token = _finalize(rd, tokenizer, ids)
    gap = (per_token["engine_logprob"] - per_token["logprob"]).abs()
    rd.update(max_abs_logprob_diff=float(gap.max()) if len(gap) else None)
    aggregated = stats.per_example(
        per_token, "prompt_id", [s for s in TOKEN_STATS if s != "logprob"] + ["logprob"]
    )
    summary = (
        examples[columns]
        .merge(
            generated[["prompt_id", "generated_text", "finish_reason"]],
            left_on="id",
            right_on="prompt_id",
        )
        .merge(aggregated, on="prompt_id", how="left")
        .drop(columns="prompt_id")
    )
    summary["n_tokens"] = summary["n_tokens"].fillna(0).astype(int)
    rd.write_table("token_summary", summary)
    return summary


def write_analysis(
    rd: RunDir,
    cfg: ProbeConfig,
    samples: pd.DataFrame,
    metrics: list[str],
    per_token: pd.DataFrame | None,
) -> None:
    """Every table the question asks for (``labels.question_tables``), per layer and position
    of the hidden-state metrics and, after generation, over the per-example token aggregates
    (layer empty, position ``generated``)."""
    ask = dict(
        label=cfg.label,
        group=cfg.group,
        pair_id=cfg.pair_id,
        condition=cfg.condition,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
    )
    tables = labels.question_tables(samples, metrics, ["layer", "position"], **ask)
    if per_token is not None:
        aggregates = [f"{s}_{how}" for s in TOKEN_STATS for how in AGGREGATES]
        scope = per_token.assign(position="generated")
        for name, table in labels.question_tables(scope, aggregates, ["position"], **ask).items():
            table.insert(0, "layer", pd.NA)
            tables[name] = pd.concat([tables[name], table], ignore_index=True)
    files = {}
    for name, table in tables.items():
        table["layer"] = table["layer"].astype("Int64")
        files[rd.path / "tables" / f"{name}.csv"] = table.to_csv(index=False)
    atomic_write_files(files)  # all computed first: a failure leaves no mix of old and new
