"""`entrain probe`: every measurement the tool has, on the user's own texts and labels.

The question is chosen by the columns given: a numeric or two-valued ``--label``, a
``--group`` column, ``--pair-id`` with ``--condition``; with none, the per-example table and
each metric's distribution. Hidden-state sparsity metrics are measured at ``--layers`` and
``--positions`` for every example; with ``--max-tokens`` the generated tokens' metrics too.
"""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pandas as pd

from .. import pipeline, signals, vectors
from ..data import registry
from ..data.texts import TextSource, render
from ..engines.generate import Sampling, resolve_kind
from ..engines.probe import HiddenProbe
from ..engines.token_probe import TokenProbe
from ..errors import UserError
from ..pipeline import Prepared, finish_counts, read_samples
from ..runs.rundir import RunDir, atomic_write_files
from ..science import answers, controls, labels, stats
from ..studies import ProbeConfig

log = logging.getLogger("entrain")

SAMPLE = "probe"  # the registered dataset whose bundled sample stands in when no data is given
CONTENT = "_content"  # the examples frame's column of each row's text or messages
GOLD = "_gold"  # and of each row's --answer-field, as text
CORRECT = "answer_correct"  # the graded answer as a label of the ceiling (1: right)
# columns the per-example table writes itself: a question column may not take these names
WRITTEN = ("id", "prompt", "n_prompt_tokens", "layer", "position")
AGGREGATES = ("mean", "max")  # of each per-token metric over an example's generated tokens


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


def label_ranks(cfg: ProbeConfig, values: pd.Series) -> pd.Series:
    """An ordinal text ``--label`` as its rank in ``--label-order`` (0, 1, ...; missing stays
    missing); the values as they are without ``--label-order``. A value not in the order, or
    an order that repeats a value or has fewer than two, is a UserError."""
    order = cfg.label_order
    if order is None:
        return values
    if len(set(order)) != len(order) or len(order) < 2:
        raise UserError(
            f"--label-order {','.join(order)}: give two or more distinct values, low to high"
        )
    rank = {value: i for i, value in enumerate(order)}
    present = values[values.notna()].map(str)
    unknown = list(dict.fromkeys(v for v in present if v not in rank))
    if unknown:
        shown = ", ".join(unknown[:4]) + (", ..." if len(unknown) > 4 else "")
        raise UserError(
            f"--label '{cfg.label}' has value(s) not in --label-order ({','.join(order)}): "
            f"{shown}; list every value of the label, low to high"
        )
    return values.map(lambda v: np.nan if pd.isna(v) else float(rank[str(v)]))


def _cell(value):
    """A user's value as a parquet cell: lists and mappings as JSON text."""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def other_columns(rows: list[dict], taken: set[str]) -> dict[str, list]:
    """The user's columns that are not already in the examples frame (``taken``), in the data's
    order, for ``samples.parquet``: a field missing from a row is None; lists and mappings are
    JSON text; a column mixing kinds of scalars is text."""
    names = [n for n in dict.fromkeys(k for r in rows for k in r) if n not in taken]
    out = {}
    for name in names:
        values = [_cell(r.get(name)) for r in rows]
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 and not kinds <= {int, float}:
            values = [None if v is None else str(v) for v in values]
        out[name] = values
    return out


def select(cfg: ProbeConfig, text: TextSource, questions: dict[str, str]) -> tuple:
    """(loaded data, examples frame: id, content (text or messages), the question columns
    and the user's other columns; warnings for the run), with every column checked and the
    question's kind settled before anything is written. ``--sample`` draws rows (seeded, kept
    in the data's order), then ``--limit`` keeps the first of them."""
    data = registry.load_user(
        cfg.dataset,
        cfg.data_file,
        split=cfg.split,
        subset=cfg.subset,
        id_field=cfg.id_field,
        fields={**text.fields(), **questions, **answer_fields(cfg)},
        default=SAMPLE,
    )
    keep = list(range(len(data.rows)))
    if cfg.sample is not None and cfg.sample < len(keep):
        keep = sorted(random.Random(cfg.seed).sample(keep, cfg.sample))
    keep = keep[: cfg.limit]
    rows = [data.rows[i] for i in keep]
    frame = pd.DataFrame({"id": [data.ids[i] for i in keep]})
    frame[CONTENT] = [
        text.content(r, f"{data.location} row {i}") for i, r in zip(keep, rows, strict=True)
    ]
    for name in dict.fromkeys(questions.values()):
        frame[name] = [r[name] for r in rows]
    if cfg.answer_field is not None:
        frame[GOLD] = gold_answers(cfg.answer_field, rows, keep, data.location)
    warnings = []
    if cfg.label is not None:
        labels.label_kind(label_ranks(cfg, frame[cfg.label]))
        missing = int(frame[cfg.label].isna().sum())
        if missing:
            warnings.append(
                f"--label '{cfg.label}' is missing in {missing} of {len(frame)} rows: they are "
                "probed but left out of the label's statistics; fill the label in or drop "
                "those rows"
            )
    elif cfg.label_order is not None:
        raise UserError("--label-order orders a --label's values: give --label too")
    taken = {*frame.columns, *WRITTEN, "layer", "position", *pipeline.metric_names(cfg.metrics)}
    for name, values in other_columns(rows, taken).items():
        frame[name] = values
    if cfg.group is not None and frame[cfg.group].nunique() < 2:
        raise UserError(f"--group '{cfg.group}' has fewer than two values; nothing to compare")
    if cfg.pair_id is not None:
        labels.comparisons(frame, cfg.pair_id, cfg.condition)
    check_reference(cfg, frame)
    return data, frame, warnings


def answer_fields(cfg: ProbeConfig) -> dict[str, str]:
    """--answer-field, checked to come with --max-tokens (grading needs an answer)."""
    if cfg.answer_field is None:
        return {}
    if not cfg.max_tokens:
        raise UserError("--answer-field grades generated answers: give --max-tokens N too")
    return {"--answer-field": cfg.answer_field}


def gold_answers(field: str, rows: list[dict], keep: list[int], location: str) -> list[str]:
    """Each row's gold answer as text; an empty or structured one is a UserError naming it."""
    out = []
    for i, row in zip(keep, rows, strict=True):
        value = row[field]
        if isinstance(value, bool) or not isinstance(value, str | int | float) or not str(value):
            raise UserError(
                f"{location} row {i}: --answer-field '{field}' is {json.dumps(value, default=str)}"
                "; give every row a text or numeric gold answer, or drop the row"
            )
        out.append(str(value))
    return out


def check_reference(cfg: ProbeConfig, frame: pd.DataFrame) -> None:
    """--reference names a value of --condition (else --group), measured on saved vectors."""
    if cfg.reference is None:
        return
    column = cfg.condition or cfg.group
    if column is None:
        raise UserError("--reference is a value of --condition or --group; give one of them")
    if not cfg.save_hidden:
        raise UserError("--reference needs --save-hidden: the distances are fitted on the vectors")
    values = [str(v) for v in dict.fromkeys(frame[column].dropna().tolist())]
    if cfg.reference not in values:
        raise UserError(
            f"--reference '{cfg.reference}' is no value of '{column}' (values: "
            f"{', '.join(values[:6])}{', ...' if len(values) > 6 else ''})"
        )


def prepare(cfg: ProbeConfig, setup: pipeline.Setup) -> Prepared:
    resolved = {
        "metrics": pipeline.metric_names(cfg.metrics),
        "layers": pipeline.model_layers(setup.resolved, cfg.layers),
        "positions": pipeline.check_positions(cfg.positions),
    }
    sampling = None
    if cfg.max_tokens:
        temperature = 0.0 if cfg.answer_field is not None else cfg.temperature  # graded: greedy
        sampling = Sampling(temperature, cfg.top_p, cfg.max_tokens, cfg.seed)
        resolved["engine"] = resolve_kind(cfg.engine)
        resolved["temperature"] = temperature
    questions = question_columns(cfg)
    data, examples, warnings = select(cfg, text_source(cfg), questions)
    # by pair: a pair's conditions stay together in one shard (the paired tests)
    by = examples[cfg.pair_id] if cfg.pair_id is not None else examples["id"]
    keep, selection = pipeline.take_shard(cfg, by)
    examples = examples.iloc[keep].reset_index(drop=True)
    tokenizer, config = pipeline.prompt_tokenizer(setup)
    built = [render(tokenizer, c, cfg.system, cfg.chat) for c in examples[CONTENT]]
    examples = examples.drop(columns=CONTENT).assign(prompt=[text for text, _ in built])
    tokens = pipeline.tokenize_prompts(examples, tokenizer, config, cfg.max_tokens)
    pipeline.announce_hidden(cfg, len(tokens.keep), config.hidden_size, resolved)
    state = (examples, tokenizer, tokens, built[0][1], questions, sampling, warnings)
    return Prepared(data, [data.spec.name], resolved, state, selection=selection)


def execute(rd: RunDir, cfg: ProbeConfig, setup: pipeline.Setup, prep: Prepared) -> None:
    examples, tokenizer, tokens, prompt_format, questions, sampling, warnings = prep.state
    r = prep.resolved
    for warning in warnings:
        warn(rd, warning)
    golds = examples.pop(GOLD) if GOLD in examples else None
    asked = [*dict.fromkeys(questions.values())]
    others = [c for c in examples.columns if c not in ("id", "prompt", *asked, "n_prompt_tokens")]
    columns = ["id", "prompt", *asked, *others, "n_prompt_tokens"]
    model = None
    if sampling is not None:  # first, so that a GPU vLLM engine is gone before the probe
        model, _ = pipeline.token_generation_stage(
            rd, cfg, setup, r["engine"], sampling, examples["id"].tolist(),
            examples["prompt"].tolist(), tokens.token_lists, tokens.keep, tokenizer,
        )  # fmt: skip
    if model is None:
        model, tokenizer = pipeline.load_model(rd, setup)
    already_done = pipeline.probe_samples(
        rd,
        cfg,
        examples[columns],
        tokens,
        HiddenProbe(model, r["layers"], r["positions"]),
        r["metrics"],
        tokenizer.pad_token_id,
    )
    rd.update(
        prompt_format=prompt_format,
        counts={
            "examples": len(examples),
            "skipped_too_long": len(tokens.skipped),
            "already_done": already_done,
        },
    )
    per_token = generated = None
    if sampling is not None:
        ids = [examples["id"].iloc[i] for i in tokens.keep]
        per_token, generated = token_summary(
            rd, cfg, setup, model, tokenizer, examples[columns], ids
        )
    metrics = r["metrics"]
    with rd.stage("analysis"):
        keys = ["id", "layer", "position"]
        samples = read_samples(
            rd, keys, examples["id"], [*columns, "layer", "position", *metrics], "example"
        )
        rd.write_table("samples", samples)
        for warning in constant_metrics(samples, metrics):
            warn(rd, warning)
        measured = write_analysis(rd, cfg, samples, metrics, per_token)
        graded, table = {}, None
        if golds is not None:
            gold = dict(zip(examples["id"], golds, strict=True))
            table = grade_answers(generated, gold, tokenizer)
            rd.write_table("answers", table)
            signals.analyze_run(rd.path, cfg.seed, cfg.n_boot)
            graded = {"graded": len(table), "correct": int(table["correct"].sum())}
        write_vectors(rd, cfg, measured, metrics, table)
    nonfinite = pipeline.count_nonfinite(samples, metrics)
    finish_counts(rd, probed=int(samples["id"].nunique()), nonfinite_values=nonfinite, **graded)


def grade_answers(generated: pd.DataFrame, gold: dict[str, str], tokenizer) -> pd.DataFrame:
    """tables/answers: each generation graded against its gold (:func:`answers.grade_output`),
    with the generated tokens that spell the answer (``answer_steps``, for the signals over
    the answer) and the prompt and response lengths (the baselines)."""
    records = []
    for row in generated.itertuples(index=False):
        text, offsets = answers.token_offsets(tokenizer, list(row.token_ids))
        g = answers.grade_output(text, gold[row.id])
        steps = [] if g.prediction is None else answers.answer_tokens(offsets, g.start, g.end)
        records.append(
            {
                "id": row.id,
                "gold": gold[row.id],
                "prediction": g.prediction,
                "answer_how": g.how,
                "correct": g.correct,
                "answer_steps": steps,
                "n_answer_tokens": len(steps),
                "n_prompt_tokens": len(row.prompt_token_ids),
                "n_tokens": row.n_tokens,
            }
        )
    return pd.DataFrame.from_records(records)


def warn(rd: RunDir, warning: str) -> None:
    """A warning in the terminal and run.log, and in the manifest for the report."""
    log.warning(warning)
    if warning not in rd.manifest.get("warnings", []):
        rd.update(warnings=[*rd.manifest.get("warnings", []), warning])


def constant_metrics(samples: pd.DataFrame, metrics: list[str]) -> list[str]:
    """One warning per layer and position where a metric has one value over every example
    (e.g. at layer 0 under a chat template, where every prompt ends in the same template
    token): its statistics against any question are NaN."""
    out = []
    for (layer, position), part in samples.groupby(["layer", "position"], sort=False):
        values = part[metrics].to_numpy(dtype=np.float64)
        finite = [v[np.isfinite(v)] for v in values.T]
        constant = [
            m for m, v in zip(metrics, finite, strict=True) if v.size > 1 and v.min() == v.max()
        ]
        if constant:
            out.append(
                f"layer {layer}, {position}: {', '.join(constant)} "
                f"{'is' if len(constant) == 1 else 'are'} the same for all {len(part)} examples, "
                "so every statistic of it is NaN (at layer 0 the last prompt token is the same "
                "token, e.g. the chat template's, for every row); look at other --layers, "
                "--positions mean-prompt or --no-chat"
            )
    return out


def token_summary(rd, cfg, setup, model, tokenizer, examples, ids) -> tuple[pd.DataFrame, ...]:
    """The per-token metrics of ``correlate`` over each generation (tables/prompts and
    tables/tokens), and their mean and max per example beside the example's columns
    (tables/token_summary); returns (token_summary, prompts)."""
    pipeline.token_probe_stage(rd, cfg, TokenProbe(model, cfg.top_p), tokenizer, ids, setup.device)
    generated, per_token = pipeline.token_tables(rd, tokenizer, ids)
    gap = (per_token["engine_logprob"] - per_token["logprob"]).abs()
    rd.update(max_abs_logprob_diff=float(gap.max()) if len(gap) else None)
    aggregated = stats.per_example(per_token, "id", pipeline.TOKEN_STATS, AGGREGATES)
    summary = examples.merge(generated[["id", "generated_text", "finish_reason"]], on="id").merge(
        aggregated, on="id", how="left"
    )
    summary["n_tokens"] = summary["n_tokens"].fillna(0).astype(int)
    rd.write_table("token_summary", summary)
    return summary, generated


def write_analysis(
    rd: RunDir,
    cfg: ProbeConfig,
    samples: pd.DataFrame,
    metrics: list[str],
    per_token: pd.DataFrame | None,
) -> pd.DataFrame:
    """Every table the question asks for (``labels.question_tables``), per layer and position
    of the hidden-state metrics (prompt length first, as the baseline) and, after generation,
    over the per-example token aggregates (layer empty, position ``generated``), with Holm and
    Benjamini-Hochberg p over each table's metrics x layers x positions; and the controls of
    a label or pairs (``controls.csv``, ``baselines.csv``). Computed first, written at once.
    Returns the samples as measured (an ordinal label as its ranks, the lengths added)."""
    ask = dict(
        label=cfg.label,
        group=cfg.group,
        pair_id=cfg.pair_id,
        condition=cfg.condition,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
    )
    if cfg.label is not None:  # an ordinal text label as its ranks
        samples = samples.assign(**{cfg.label: label_ranks(cfg, samples[cfg.label])})
    samples = controls.with_lengths(samples)
    measures = [*controls.LENGTHS, *metrics]
    tables = labels.question_tables(samples, measures, ["layer", "position"], **ask)
    summary = tables["summary"]  # each metric's distribution; the lengths are no metric
    tables["summary"] = summary[~summary["metric"].isin(controls.LENGTHS)].reset_index(drop=True)
    if per_token is not None:
        aggregates = [f"{s}_{how}" for s in pipeline.TOKEN_STATS for how in AGGREGATES]
        scope = per_token.assign(position="generated")
        for name, table in labels.question_tables(scope, aggregates, ["position"], **ask).items():
            table.insert(0, "layer", pd.NA)
            tables[name] = pd.concat([tables[name], table], ignore_index=True)
    tables = {name: adjusted(name, table) for name, table in tables.items()}
    if cfg.label_order is not None and "label_auroc" in tables:  # the ranks' names
        names = {str(float(i)): v for i, v in enumerate(cfg.label_order)}
        for side in ("positive", "negative"):
            tables["label_auroc"][side] = tables["label_auroc"][side].map(names)
    tables |= control_tables(cfg, samples, metrics)
    files = {}
    for name, table in tables.items():
        if "layer" in table:
            table["layer"] = table["layer"].astype("Int64")
        files[rd.path / "tables" / f"{name}.csv"] = table.to_csv(index=False)
    atomic_write_files(files)
    return samples


def write_vectors(
    rd: RunDir,
    cfg: ProbeConfig,
    samples: pd.DataFrame,
    metrics: list[str],
    answers: pd.DataFrame | None,
) -> None:
    """On saved vectors: the ceiling of the --label and, with --answer-field, of correctness
    (both in ceiling.csv, told apart by ``label``), and the shift from --reference."""
    if not vectors.has_vectors(rd.path):
        return
    common = dict(groups=cfg.pair_id, n_boot=cfg.n_boot, seed=cfg.seed)
    ceilings = []
    if cfg.label is not None:
        frame, kind = labelled(cfg, samples)
        ceilings.append(vectors.ceiling_table(rd.path, frame, cfg.label, kind, metrics, **common))
    if answers is not None:
        graded = answers[["id"]].assign(**{CORRECT: answers["correct"].astype(float)})
        frame = samples.drop(columns=CORRECT, errors="ignore").merge(graded, on="id")
        ceilings.append(vectors.ceiling_table(rd.path, frame, CORRECT, "binary", metrics, **common))
    if ceilings:
        rd.write_text("tables/ceiling.csv", pd.concat(ceilings).to_csv(index=False))
    vectors.write_tables(rd, samples, metrics, condition=cfg.condition or cfg.group,
                         reference=cfg.reference, **common)  # fmt: skip


P_VALUES = {  # table -> its p-value columns, and the columns that set one family apart
    "label_correlations": (("spearman_p", "pearson_p"), ()),
    "label_auroc": (("p",), ()),
    "group_kruskal": (("p",), ()),
    "paired": (("wilcoxon_p",), ("a", "b")),
}


def adjusted(name: str, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with Holm and Benjamini-Hochberg p beside each p column, the family being
    every metric x layer x position (the length baselines stay out of it)."""
    columns, family = P_VALUES.get(name, ((), ()))
    rows = ~table["metric"].isin(controls.LENGTHS).to_numpy() if columns else None
    for column in columns:
        table = stats.adjust(table, column, family, rows)
    return table


def labelled(cfg: ProbeConfig, samples: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows with a label, a two-valued one as 0/1 (1 for its positive value); its kind."""
    frame = samples[samples[cfg.label].notna()]
    kind = labels.label_kind(frame[cfg.label])
    if kind == "binary":
        positive = labels.binary_values(frame[cfg.label])[1]
        frame = frame.assign(**{cfg.label: (frame[cfg.label] == positive).astype(float)})
    return frame, kind


def control_tables(cfg: ProbeConfig, samples: pd.DataFrame, metrics: list[str]) -> dict:
    """The controls of the question: a numeric label as is, a two-valued one as 0/1 (1 for
    its positive value), each pair of conditions as 0 (a) / 1 (b) with the pairs as units."""
    common = dict(n_boot=cfg.n_boot, seed=cfg.seed)
    out: dict[str, list[pd.DataFrame]] = {}
    if cfg.label is not None:
        frame, kind = labelled(cfg, samples)
        made = controls.study_controls(
            frame, cfg.label, kind, metrics, groups=cfg.pair_id, **common
        )
        for name, table in made.items():
            out.setdefault(name, []).append(table)
    if cfg.pair_id is not None:
        for a, b in labels.comparisons(samples, cfg.pair_id, cfg.condition, ["layer", "position"]):
            part = samples[samples[cfg.condition].isin([a, b])]
            part = part.assign(condition_is_b=(part[cfg.condition] == b).astype(float))
            made = controls.study_controls(
                part, "condition_is_b", "binary", metrics, groups=cfg.pair_id, **common
            )
            for name, table in made.items():
                out.setdefault(name, []).append(table.assign(a=str(a), b=str(b)))
    return {name: pd.concat(parts, ignore_index=True) for name, parts in out.items()}
