"""`entrain qa accuracy`: does the prompt's hidden state predict whether the answer is right?

Upstream (QA-bench/rankmath/accuracy_vs_sparsity.py, spec 4.1) generated with vLLM, reloaded
the model in transformers for a second pass, graded with a substring rule that counts "1" in
"10" as correct, replaced NaN metrics by 0, and correlated accuracy with the metric across the
five level means (N = 5). Here: answers graded by the last ``\\boxed{}`` and math-verify
(``science.answers``), the hook probe on the same prompts, and per-problem
associations: point-biserial r (with p and a bootstrap CI) and AUROC (Mann-Whitney), next to
upstream's level-means correlation for comparison.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import multisample, pipeline, signals, vectors
from ..data import prompts, registry
from ..engines.generate import Sampling, resolve_kind
from ..engines.probe import HiddenProbe
from ..errors import UserError
from ..pipeline import Prepared, finish_counts, read_samples
from ..runs.rundir import RunDir
from ..science import controls, sparsity, stats
from ..science.answers import extract_boxed, math_equal
from ..studies import AccuracyConfig
from .rankmath import select

SYSTEM_PROMPT = (
    "You are a math expert. Solve the problem step by step, then give the final answer "
    "in \\boxed{}."
)
USER_SUFFIX = "\n\nPut your final answer within \\boxed{}."


def build_prompt(tokenizer, problem: str) -> tuple[str, str]:
    return prompts.chat_prompt(tokenizer, SYSTEM_PROMPT, problem + USER_SUFFIX)


def prepare(cfg: AccuracyConfig, setup: pipeline.Setup) -> Prepared:
    metric_names = pipeline.metric_names(cfg.metrics)
    kind = resolve_kind(cfg.engine)
    multisample.check(cfg.generations)
    spec = registry.get_spec("math500")
    data = registry.load(spec, cfg.data_file)
    problems = select(data, cfg.limit)
    keep, selection = pipeline.take_shard(cfg, problems["id"])
    problems = problems.iloc[keep].reset_index(drop=True)
    gold = {i: str(r["answer"]) for i, r in zip(data.ids, data.rows, strict=True)}
    problems["gold"] = problems["id"].map(gold)
    layers = pipeline.model_layers(setup.resolved, cfg.layers)

    tokenizer, config = pipeline.prompt_tokenizer(setup)
    built = [build_prompt(tokenizer, p) for p in problems["problem"]]
    problems["prompt"] = [text for text, _ in built]
    tokens = pipeline.tokenize_prompts(problems, tokenizer, config, reserve=cfg.max_tokens)
    pipeline.announce_hidden(cfg, len(tokens.keep), config.hidden_size, {"layers": layers})
    resolved = {"layers": layers, "metrics": metric_names, "engine": kind}
    if cfg.generations:  # the samples' seed is part of what the run is
        resolved["seed"] = cfg.seed
    else:
        resolved["sample_temperature"] = None
    state = (problems, tokenizer, tokens, built[0][1])
    return Prepared(data, [spec.name], resolved, state, selection=selection)


def execute(rd: RunDir, cfg: AccuracyConfig, setup: pipeline.Setup, prep: Prepared) -> None:
    problems, tokenizer, tokens, prompt_format = prep.state
    kind, layers, metric_names = (prep.resolved[k] for k in ("engine", "layers", "metrics"))
    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=cfg.max_tokens, seed=cfg.seed)
    ids = problems["id"].tolist()
    model = None
    answered = rd.done_ids("generations", "id")
    todo = [i for i in tokens.keep if ids[i] not in answered]
    if todo:  # vLLM first, then the probe's model (on a GPU vLLM is closed in between)
        if kind == "hf":
            model, tokenizer = pipeline.load_model(rd, setup)
        engine = (kind, model, tokenizer)
        pipeline.generate_into(
            rd, cfg, setup, engine, "generations", sampling, ids, tokens.token_lists, todo
        )
    if cfg.generations:  # K sampled answers per problem (top-p 1: the whole distribution)
        engine = (kind, model, tokenizer)
        model, tokenizer = multisample.sample_stage(
            rd, cfg, setup, engine, multisample.sampling(cfg, 1.0), ids, tokens.token_lists,
            tokens.keep,
        )  # fmt: skip
    if model is None:
        model, tokenizer = pipeline.load_model(rd, setup)
    columns = ["id", "level", "subject", "prompt", "n_prompt_tokens"]
    already_done = pipeline.probe_samples(
        rd,
        cfg,
        problems[columns],
        tokens,
        HiddenProbe(model, layers, ["last-prompt"]),
        metric_names,
        tokenizer.pad_token_id,
    )
    if cfg.generations:
        multisample.embed_stage(
            rd, cfg, model, [ids[i] for i in tokens.keep],
            [tokens.token_lists[i] for i in tokens.keep], tokenizer.pad_token_id,
        )  # fmt: skip
    rd.update(
        prompt_format=prompt_format,
        counts={
            "problems": len(problems),
            "skipped_too_long": len(tokens.skipped),
            "already_done": already_done,
        },
    )
    with rd.stage("analysis"):
        samples = read_samples(
            rd, ["id", "layer"], ids, [*columns, "layer", "position", *metric_names], "problem"
        )
        answers = answer_table(problems, rd.read_in_order("generations", ["id"], ids), tokenizer)
        rd.write_table("answers", answers)
        samples = samples.merge(answers[["id", "correct"]], on="id", how="left")
        rd.write_table("samples", samples)
        write_analysis(rd, samples, answers, metric_names, cfg.seed, cfg.n_boot)
        if cfg.generations:
            golds = dict(zip(problems["id"], problems["gold"], strict=True))
            multisample.write_tables(rd, ids, tokenizer, extract_boxed, math_equal, golds)
        signals.analyze_run(rd.path, cfg.seed, cfg.n_boot, tokenizer)
    finish_counts(
        rd,
        probed=int(samples["id"].nunique()),
        correct=int(answers["correct"].sum()),
        no_boxed_answer=int(answers["prediction"].isna().sum()),
        nonfinite_values=pipeline.count_nonfinite(samples, metric_names),
    )


def answer_table(problems: pd.DataFrame, gens: pd.DataFrame | None, tokenizer) -> pd.DataFrame:
    """One row per generated answer: the text, its last ``\\boxed{}`` and whether that equals
    the gold answer (math-verify); no box is a wrong answer, counted in the manifest."""
    if gens is None:
        raise UserError("no answer was generated (every prompt was skipped); see run.log")
    meta = problems.set_index("id")
    out = pd.DataFrame({"id": gens["id"]})
    out["level"] = out["id"].map(meta["level"])
    out["subject"] = out["id"].map(meta["subject"])
    out["gold"] = out["id"].map(meta["gold"])
    out["output"] = [tokenizer.decode(list(t), skip_special_tokens=True) for t in gens.token_ids]
    out["n_generated"] = [len(t) for t in gens["token_ids"]]
    out["finish_reason"] = gens["finish_reason"].to_numpy()
    out["prediction"] = [extract_boxed(text) for text in out["output"]]
    out["correct"] = [math_equal(p, g) for p, g in zip(out["prediction"], out["gold"], strict=True)]
    return out


def write_analysis(rd, samples, answers, metrics, seed: int, n_boot: int) -> None:
    """accuracy_by_level.csv, summary.csv (metrics per level), association.csv (prompt length
    first, as the baseline), controls.csv and baselines.csv (correctness against each metric
    given prompt length; length and TF-IDF alone)."""
    by_level = pd.DataFrame.from_records(
        {"level": level, **stats.accuracy_record(part["correct"])}
        for level, part in answers.groupby("level", sort=True)
    )
    rd.write_text("tables/accuracy_by_level.csv", by_level.to_csv(index=False))
    summary = stats.group_summary(samples, ["layer", "position", "level"], metrics)
    rd.write_text("tables/summary.csv", summary.to_csv(index=False))
    samples = controls.with_lengths(samples)
    measures = [*controls.LENGTHS, *metrics]  # prompt length first, as the baseline
    rd.write_text(
        "tables/association.csv",
        association(samples, by_level, summary, measures, seed, n_boot).to_csv(index=False),
    )
    graded = samples.assign(correct=samples["correct"].astype(float))
    pipeline.write_controls(rd, graded, "correct", "binary", metrics, n_boot=n_boot, seed=seed)
    vectors.write_tables(
        rd, graded, metrics, label="correct", kind="binary", n_boot=n_boot, seed=seed
    )


def association(samples, by_level, summary, metrics, seed: int, n_boot: int) -> pd.DataFrame:
    """Per (layer, position, metric): point-biserial r of correctness and metric over problems
    (Pearson with a 0/1 variable: p, N, bootstrap CI), AUROC of the metric for correctness
    (Mann-Whitney U, p), and upstream's Pearson r across the level means (N = levels)."""
    records = []
    for (layer, position), part in samples.groupby(["layer", "position"], sort=True):
        groups = stats.compare_groups(part, metrics).set_index("metric")
        means = summary[(summary.layer == layer) & (summary.position == position)]
        for metric in metrics:
            pb = stats.correlate(
                part["correct"].astype(float), part[metric], n_boot=n_boot, seed=seed
            )
            g = groups.loc[metric]
            lm = means[means.metric == metric].merge(by_level[["level", "accuracy"]], on="level")
            lm = lm[np.isfinite(lm["mean"])]
            level_r = float("nan")
            if len(lm) >= 3 and np.ptp(lm["mean"]) > 0 and np.ptp(lm["accuracy"]) > 0:
                level_r = float(np.corrcoef(lm["accuracy"], lm["mean"])[0, 1])
            records.append(
                {
                    "layer": layer,
                    "position": position,
                    "metric": metric,
                    "sparser_when": sparsity.sparser_when(metric)
                    if metric in sparsity.SPARSER
                    else None,
                    "n": pb["n"],
                    "n_correct": int(g["n_correct"]),
                    "point_biserial_r": pb["pearson_r"],
                    "point_biserial_p": pb["pearson_p"],
                    "point_biserial_lo": pb["pearson_lo"],
                    "point_biserial_hi": pb["pearson_hi"],
                    "auroc": g["auroc"],
                    "mannwhitney_p": g["p"],
                    "mean_correct": g["mean_correct"],
                    "mean_incorrect": g["mean_incorrect"],
                    "level_means_r": level_r,
                    "n_levels": len(lm),
                }
            )
    table = pd.DataFrame.from_records(records)
    rows = table["sparser_when"].notna().to_numpy()  # the family: metrics x layers x positions
    return stats.adjust(
        stats.adjust(table, "point_biserial_p", rows=rows), "mannwhitney_p", rows=rows
    )
