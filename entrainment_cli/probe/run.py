"""`entrain probe`: every measurement the tool has, on the user's own texts and labels.

The question is chosen by the columns given: a numeric or two-valued ``--label``, a
``--group`` column, ``--pair-id`` with ``--condition``; with none, the per-example table and
each metric's distribution. Hidden-state sparsity metrics are measured at ``--layers`` and
``--positions`` for every example; with ``--max-tokens`` the generated tokens' metrics too.
"""

from __future__ import annotations

import logging

import pandas as pd

from .. import pipeline, vectors
from ..data import registry
from ..data.texts import TextSource, render
from ..engines.generate import Sampling, resolve_kind
from ..engines.probe import HiddenProbe
from ..engines.token_probe import TokenProbe
from ..errors import UserError
from ..pipeline import Prepared, finish_counts, read_samples
from ..runs.rundir import RunDir, atomic_write_files
from ..science import controls, labels, stats
from ..studies import ProbeConfig

log = logging.getLogger("entrain")

SAMPLE = "probe"  # the registered dataset whose bundled sample stands in when no data is given
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
    check_reference(cfg, frame)
    return data, frame


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
        sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.seed)
        resolved["engine"] = resolve_kind(cfg.engine)
    questions = question_columns(cfg)
    data, examples = select(cfg, text_source(cfg), questions)
    # by pair: a pair's conditions stay together in one shard (the paired tests)
    by = examples[cfg.pair_id] if cfg.pair_id is not None else examples["id"]
    keep, selection = pipeline.take_shard(cfg, by)
    examples = examples.iloc[keep].reset_index(drop=True)
    state = (examples, questions, sampling)
    return Prepared(data, [data.spec.name], resolved, state, selection=selection)


def execute(rd: RunDir, cfg: ProbeConfig, setup: pipeline.Setup, prep: Prepared) -> None:
    examples, questions, sampling = prep.state
    r = prep.resolved
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(setup.resolved.path)
    built = [render(tokenizer, c, cfg.system, cfg.chat) for c in examples["content"]]
    examples = examples.drop(columns="content").assign(prompt=[text for text, _ in built])
    config = AutoConfig.from_pretrained(setup.resolved.path)
    tokens = pipeline.tokenize_prompts(examples, tokenizer, config, cfg.max_tokens)
    columns = ["id", "prompt", *dict.fromkeys(questions.values()), "n_prompt_tokens"]
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
        prompt_format=built[0][1],
        counts={
            "examples": len(examples),
            "skipped_too_long": len(tokens.skipped),
            "already_done": already_done,
        },
    )
    per_token = None
    if sampling is not None:
        ids = [examples["id"].iloc[i] for i in tokens.keep]
        per_token = token_summary(rd, cfg, setup, model, tokenizer, examples[columns], ids)
    metrics = r["metrics"]
    with rd.stage("analysis"):
        keys = ["id", "layer", "position"]
        samples = read_samples(
            rd, keys, examples["id"], [*columns, "layer", "position", *metrics], "example"
        )
        rd.write_table("samples", samples)
        write_analysis(rd, cfg, samples, metrics, per_token)
    nonfinite = pipeline.count_nonfinite(samples, metrics)
    finish_counts(rd, probed=int(samples["id"].nunique()), nonfinite_values=nonfinite)


def token_summary(rd, cfg, setup, model, tokenizer, examples, ids) -> pd.DataFrame:
    """The per-token metrics of ``correlate`` over each generation (tables/prompts and
    tables/tokens), and their mean and max per example beside the example's columns
    (tables/token_summary)."""
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
    return summary


def write_analysis(
    rd: RunDir,
    cfg: ProbeConfig,
    samples: pd.DataFrame,
    metrics: list[str],
    per_token: pd.DataFrame | None,
) -> None:
    """Every table the question asks for (``labels.question_tables``), per layer and position
    of the hidden-state metrics (prompt length first, as the baseline) and, after generation,
    over the per-example token aggregates (layer empty, position ``generated``), with Holm and
    Benjamini-Hochberg p over each table's metrics x layers x positions; and the controls of
    a label or pairs (``controls.csv``, ``baselines.csv``). Computed first, written at once."""
    ask = dict(
        label=cfg.label,
        group=cfg.group,
        pair_id=cfg.pair_id,
        condition=cfg.condition,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
    )
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
    tables |= control_tables(cfg, samples, metrics)
    files = {}
    for name, table in tables.items():
        if "layer" in table:
            table["layer"] = table["layer"].astype("Int64")
        files[rd.path / "tables" / f"{name}.csv"] = table.to_csv(index=False)
    atomic_write_files(files)
    frame, kind = labelled(cfg, samples) if cfg.label is not None else (samples, "numeric")
    column = cfg.condition or cfg.group
    vectors.write_tables(rd, frame, metrics, label=cfg.label, kind=kind, condition=column,
                         reference=cfg.reference, groups=cfg.pair_id, n_boot=cfg.n_boot,
                         seed=cfg.seed)  # fmt: skip


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
