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
from ..data import registry
from ..data.texts import TextSource, render
from ..engines.probe import HiddenProbe
from ..errors import UserError
from ..runs.rundir import RunDir
from ..science import labels

log = logging.getLogger("entrain")

COMMAND = "probe"
SAMPLE = "probe"  # the registered dataset whose bundled sample stands in when no data is given
# columns the per-example table writes itself: a question column may not take these names
WRITTEN = ("id", "prompt", "n_prompt_tokens", "layer", "position")


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


def default_text(cfg: ProbeConfig, source_given: bool) -> TextSource:
    """The text source asked for; with no data and no source, the sample's ``text`` field."""
    if not source_given and cfg.data_file is None and cfg.dataset is None:
        return TextSource(text_field="text")
    return TextSource(cfg.text_field, cfg.messages_field, cfg.template)


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
    source_given = any(v is not None for v in (cfg.text_field, cfg.messages_field, cfg.template))
    text = default_text(cfg, source_given)
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
    }
    with study.start_run(COMMAND, identity, cfg, setup, data, [data.spec.name]) as rd:
        model, tokenizer = study.load_model(rd, setup)
        prompts, formats = zip(
            *(render(tokenizer, c, cfg.system, cfg.chat) for c in examples["content"]),
            strict=True,
        )
        examples = examples.drop(columns="content").assign(prompt=list(prompts))
        tokens = study.tokenize_prompts(examples, tokenizer, model)
        columns = ["id", "prompt", *dict.fromkeys(questions.values()), "n_prompt_tokens"]
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
        with rd.stage("analysis"):
            keys = ["id", "layer", "position"]
            samples = rd.read_in_order("samples", keys, examples["id"].tolist())
            if samples is None:
                raise UserError("no example could be probed (all were skipped); see run.log")
            samples = samples[[*columns, "layer", "position", *metric_names]]
            rd.write_table("samples", samples)
            write_analysis(rd, cfg, samples, metric_names)
        nonfinite = study.count_nonfinite(samples, metric_names)
        counts = {"probed": int(samples["id"].nunique()), "nonfinite_values": nonfinite}
        rd.update(counts={**rd.manifest["counts"], **counts})
        from ..plots.probe import plot_run

        plot_run(rd.path)
    return rd.path


def write_analysis(rd: RunDir, cfg: ProbeConfig, samples: pd.DataFrame, metrics: list[str]) -> None:
    """Every table the question asks for (``labels.question_tables``), per layer and position."""
    tables = labels.question_tables(
        samples,
        metrics,
        ["layer", "position"],
        label=cfg.label,
        group=cfg.group,
        pair_id=cfg.pair_id,
        condition=cfg.condition,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
    )
    for name, table in tables.items():
        rd.write_text(f"tables/{name}.csv", table.to_csv(index=False))
