"""`entrain qa robustness`: hidden-state sparsity and accuracy of MMLU-Pro questions under noise.

Upstream (QA-bench/robustness, spec 4.2) drew unseeded noise, gave "heavy" the question noise
of "light", flattened the noisy prompts' line breaks, answered with a separate 1-token
``generate`` that could not say K..T and fell back to 'A', and ran no test. Here: seeded
variants from science/noise.py, one batched teacher-forced pass per prompt that yields both
the hidden-state metrics and the constrained answer (the option letter with the highest
next-token logit among the letters of that prompt's options), and paired tests of every
metric (Wilcoxon, rank-biserial) and of accuracy (McNemar) between noise levels.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .. import pipeline, vectors
from ..data import prompts, registry
from ..engines.probe import HiddenProbe
from ..errors import UserError
from ..pipeline import Prepared, finish_counts, read_samples
from ..runs.rundir import RunDir, atomic_write_text
from ..science import controls, noise, sparsity, stats
from ..studies import RobustnessConfig, RobustnessExportConfig

log = logging.getLogger("entrain")

SYSTEM_PROMPT = (
    "You answer multiple-choice questions. Reply with only the letter of the correct option."
)
ALL = "All"  # the row of every area pooled, in summaries and tests


def area_name(category: str) -> str:
    """'computer_science' or 'computer science' -> 'Computer Science' (upstream's areas)."""
    return category.replace("_", " ").strip().title()


def noise_levels(names: list[str] | None) -> list[noise.NoiseLevel]:
    if names is None:
        return list(noise.LEVELS.values())
    out = []
    for name in dict.fromkeys(names):
        if name not in noise.LEVELS:
            raise UserError(
                f"unknown noise level '{name}'; use a comma list of {', '.join(noise.LEVELS)}"
            )
        out.append(noise.LEVELS[name])
    if not out:
        raise UserError(f"--noise is empty; use a comma list of {', '.join(noise.LEVELS)}")
    return out


def _question(row: dict, where: str) -> dict:
    """One row checked: options a list of strings, answer_index inside it, answer its letter."""
    options = row["options"]
    if isinstance(options, str) or not hasattr(options, "__len__") or len(options) == 0:
        raise UserError(f"{where}: 'options' must be a non-empty list of option texts")
    options = [str(o) for o in options]
    try:
        index = int(row["answer_index"])
    except (TypeError, ValueError):
        raise UserError(f"{where}: answer_index '{row['answer_index']}' is not a number") from None
    if not 0 <= index < len(options):
        raise UserError(
            f"{where}: answer_index {index} is outside its {len(options)} options (0-based)"
        )
    if len(options) > len(noise.LETTERS):
        raise UserError(f"{where}: {len(options)} options are more than the letters A-Z")
    if str(row["answer"]).strip() != noise.LETTERS[index]:
        raise UserError(
            f"{where}: answer '{row['answer']}' is not the letter of answer_index {index} "
            f"({noise.LETTERS[index]}); fix one of the two"
        )
    return {
        "question": str(row["question"]),
        "options": options,
        "answer_index": index,
        "category": str(row["category"]),
    }


def select(
    data: registry.LoadedData,
    categories: list[str] | None,
    limit: int | None,
) -> pd.DataFrame:
    """Questions of the chosen categories, the first ``limit`` of each (as upstream), in
    dataset order."""
    rows = [
        {"id": id_, **_question(row, f"{data.location} row {i}")}
        for i, (id_, row) in enumerate(zip(data.ids, data.rows, strict=True))
    ]
    frame = pd.DataFrame.from_records(rows)
    frame["area"] = frame["category"].map(area_name)
    known = list(dict.fromkeys(frame["area"]))
    if categories:
        wanted = []
        for name in categories:
            if area_name(name) not in known:
                raise UserError(
                    f"unknown category '{name}'; {data.location} has: "
                    + ", ".join(a.lower() for a in known)
                )
            wanted.append(area_name(name))
        frame = frame[frame["area"].isin(wanted)]
    if limit is not None:
        frame = frame.groupby("area", sort=False).head(limit)
    if frame.empty:
        raise UserError(f"no questions selected from {data.location}; check the data file")
    return frame.reset_index(drop=True)


def make_variants(
    questions: pd.DataFrame, levels: list[noise.NoiseLevel], seed: int
) -> pd.DataFrame:
    """One row per (question, level): the noisy question and options, the gold letter, the
    prompt body, and the noise actually applied (for the measured rates)."""
    records = []
    for q in questions.itertuples(index=False):
        for level in levels:
            rng = noise.rng_for(seed, str(q.id), level.name)
            v = noise.make_variant(q.question, q.options, q.answer_index, level, rng)
            records.append(
                {
                    "id": f"{q.id}|{level.name}",
                    "question_id": str(q.id),
                    "category": q.category,
                    "area": q.area,
                    "noise": level.name,
                    "question": v.question,
                    "options": list(v.options),
                    "n_options": len(v.options),
                    "answer": v.answer,
                    "answer_index": v.answer_index,
                    "added": list(v.added),
                    "letters": v.letters,
                    "letters_swapped": v.letters_swapped,
                    "words": v.words,
                    "words_changed": v.words_changed,
                    "text": noise.format_question(v.question, v.options),
                }
            )
    return pd.DataFrame.from_records(records)


def noise_rates(variants: pd.DataFrame, levels: list[noise.NoiseLevel]) -> pd.DataFrame:
    """Set against measured noise per level: the check that light and heavy really differ."""
    records = []
    for level in levels:
        part = variants[variants["noise"] == level.name]
        records.append(
            {
                "noise": level.name,
                "questions": len(part),
                "char_rate": level.char_rate,
                "char_rate_measured": part["letters_swapped"].sum() / max(1, part["letters"].sum()),
                "word_rate": level.word_rate,
                "word_rate_measured": part["words_changed"].sum() / max(1, part["words"].sum()),
                "added_options": level.added_options,
                "added_options_mean": float(part["added"].map(len).mean()),
                "n_options_mean": float(part["n_options"].mean()),
            }
        )
    return pd.DataFrame.from_records(records)


def export_variants(cfg: RobustnessExportConfig) -> Path:
    """Write the noisy dataset (no model needed): one record per question with its variants.
    ``.jsonl``: one record a line; ``.json``: {"meta": ..., "data": [...]}, upstream's shape."""
    path = cfg.out
    if path is None:
        raise UserError("--out is missing: name the .jsonl or .json file to write")
    if path.suffix.lower() not in {".json", ".jsonl"}:
        raise UserError(f"--out {path}: use a .jsonl or .json file name")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: the folder {path.parent} does not exist")
    levels = noise_levels(cfg.noise)
    data = registry.load(registry.get_spec(cfg.dataset), cfg.data_file)
    questions = select(data, cfg.categories, cfg.limit or None)
    variants = make_variants(questions, levels, cfg.seed)
    records = []
    for q in questions.itertuples(index=False):
        mine = variants[variants["question_id"] == str(q.id)]
        records.append(
            {
                "id": str(q.id),
                "question_id": str(q.id),  # the field --data-file reads the id from
                "area": q.area,
                "category": q.category,
                "question": q.question,
                "options": q.options,
                "answer": noise.LETTERS[q.answer_index],
                "answer_index": q.answer_index,
                "variants": {
                    v.noise: {
                        "question": v.question,
                        "options": v.options,
                        "n_options": v.n_options,
                        "answer": v.answer,
                        "answer_index": v.answer_index,
                        "added": v.added,
                        "prompt": v.text,
                    }
                    for v in mine.itertuples(index=False)
                },
            }
        )
    meta = {
        "num_records": len(records),
        "areas": list(dict.fromkeys(questions["area"])),
        "seed": cfg.seed,
        "noise_levels": {level.name: asdict(level) for level in levels},
        "dataset": data.identity(),
    }
    if path.suffix.lower() == ".json":
        text = json.dumps({"meta": meta, "data": records}, ensure_ascii=False, indent=1) + "\n"
    else:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_text(path, text)
    log.info("wrote %d question(s) x %d noise level(s) to %s", len(records), len(levels), path)
    return path


def build_prompt(tokenizer, body: str) -> tuple[str, str]:
    """(exact text given to the tokenizer, 'chat' or 'plain'). ``body`` ends in its own
    ``Answer:``, so the plain text is the system prompt and the body alone."""
    if tokenizer.chat_template:
        return prompts.chat_prompt(tokenizer, SYSTEM_PROMPT, body)
    return f"{SYSTEM_PROMPT}\n\n{body}", "plain"


def letter_token_ids(tokenizer, n: int, prompt_format: str) -> list[int]:
    """Vocabulary ids of the letters A.. (n of them) as the answer's first token: bare after
    a chat template's assistant header, with a leading space after a plain 'Answer:'."""
    space = " " if prompt_format == "plain" else ""
    ids = []
    for letter in noise.option_letters(n):
        tokens = tokenizer(space + letter, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise UserError(
                f"the tokenizer splits the answer letter {space + letter!r} into {len(tokens)} "
                "tokens; the constrained answer needs one token per letter"
            )
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise UserError("the tokenizer maps two answer letters to one token")
    return ids


def prepare(cfg: RobustnessConfig, setup: pipeline.Setup) -> Prepared:
    metric_names = pipeline.metric_names(cfg.metrics)
    levels = noise_levels(cfg.noise)
    spec = registry.get_spec(cfg.dataset)
    data = registry.load(spec, cfg.data_file)
    questions = select(data, cfg.categories, cfg.limit or None)
    resolved = {
        "categories": sorted(set(questions["area"])),
        "noise": [level.name for level in levels],
        "layers": pipeline.model_layers(setup.resolved, cfg.layers),
        "metrics": metric_names,
    }
    noise_record = {lv.name: asdict(lv) for lv in levels}
    keep, selection = pipeline.take_shard(cfg, questions["id"])  # after the categories
    questions = questions.iloc[keep].reset_index(drop=True)
    variants = make_variants(questions, levels, cfg.seed)
    tokenizer, config = pipeline.prompt_tokenizer(setup)
    prompts, formats = zip(*(build_prompt(tokenizer, t) for t in variants["text"]), strict=True)
    variants["prompt"] = list(prompts)
    tokens = pipeline.tokenize_prompts(variants, tokenizer, config)
    pipeline.announce_hidden(cfg, len(tokens.keep), config.hidden_size, resolved)
    return Prepared(
        data,
        [spec.name],
        resolved,
        (questions, levels, variants, tokens, formats[0]),
        extra={"noise_levels": noise_record},
        selection=selection,
    )


def execute(rd: RunDir, cfg: RobustnessConfig, setup: pipeline.Setup, prep: Prepared) -> None:
    questions, levels, variants, tokens, prompt_format = prep.state
    metric_names = prep.resolved["metrics"]
    rd.write_table("variants", variants.drop(columns=["prompt", "n_prompt_tokens"]))
    rates = noise_rates(variants, levels)
    rd.write_text("tables/noise_rates.csv", rates.to_csv(index=False))
    model, tokenizer = pipeline.load_model(rd, setup)
    letter_ids = letter_token_ids(tokenizer, int(variants["n_options"].max()), prompt_format)
    columns = ["id", "question_id", "category", "area", "noise", "n_options", "answer"]
    columns += ["prompt", "n_prompt_tokens"]
    already_done = pipeline.probe_samples(
        rd,
        cfg,
        variants[columns],
        tokens,
        HiddenProbe(model, prep.resolved["layers"], ["last-prompt"], logit_ids=letter_ids),
        metric_names,
        tokenizer.pad_token_id,
    )
    rd.update(
        prompt_format=prompt_format,
        answer_letter_ids=letter_ids,
        counts={
            "questions": len(questions),
            "prompts": len(variants),
            "skipped_too_long": len(tokens.skipped),
            "already_done": already_done,
        },
    )

    with rd.stage("analysis"):
        keys = ["id", "layer", "position"]
        samples = read_samples(
            rd, keys, variants["id"], [*columns, "layer", "position", *metric_names, "logits"]
        )
        samples = answers(samples)
        samples = samples[
            [*columns, "layer", "position", *metric_names, "letter_logits", "predicted"]
            + ["correct"]
        ]
        rd.write_table("samples", samples)
        write_analysis(rd, samples, metric_names, [lv.name for lv in levels], cfg.seed)
    first = samples.drop_duplicates("id")
    finish_counts(
        rd,
        probed=len(first),
        accuracy=float(first["correct"].mean()),
        nonfinite_values=pipeline.count_nonfinite(samples, metric_names),
    )


def answers(samples: pd.DataFrame) -> pd.DataFrame:
    """The constrained answer: argmax of the next-token logits over the letters of the
    prompt's own options (A..T for twenty), correct iff it is the gold letter."""
    logits = [
        np.asarray(x)[:n] for x, n in zip(samples["logits"], samples["n_options"], strict=True)
    ]
    predicted = [noise.LETTERS[int(np.argmax(x))] for x in logits]
    return samples.drop(columns="logits").assign(
        letter_logits=[x.astype(np.float32).tolist() for x in logits],
        predicted=predicted,
        correct=[p == a for p, a in zip(predicted, samples["answer"], strict=True)],
    )


def _with_all(samples: pd.DataFrame) -> pd.DataFrame:
    """The rows once per area and once more under the pooled area 'All'."""
    return pd.concat([samples, samples.assign(area=ALL)], ignore_index=True)


def write_analysis(
    rd: RunDir, samples: pd.DataFrame, metrics: list[str], levels: list[str], seed: int
):
    """Summaries per area x noise level, accuracy, paired tests between noise levels (prompt
    length first, as the baseline; Holm and Benjamini-Hochberg over the metrics x layers of
    each comparison and area), and the controls: the noise level (0 = the first, 1, ...)
    against each metric given prompt length, over all areas, questions as units."""
    samples = controls.with_lengths(samples)
    pooled = _with_all(samples)
    summary = stats.group_summary(pooled, ["layer", "position", "area", "noise"], metrics)
    rd.write_text("tables/summary.csv", summary.to_csv(index=False))

    per_prompt = pooled.drop_duplicates(["id", "area"])  # the answer is per prompt, not per layer
    acc = (
        per_prompt.groupby(["area", "noise"], sort=False)
        .agg(
            n=("correct", "size"),
            correct=("correct", "sum"),
            accuracy=("correct", "mean"),
            chance=("n_options", lambda n: float((1 / n).mean())),
        )
        .reset_index()
    )
    rd.write_text("tables/accuracy.csv", acc.to_csv(index=False))

    # per area, once (not once per pair of levels): metrics and answers, one column per level
    wides = {
        area: (
            part.pivot_table(
                index=["question_id", "layer", "position"],
                columns="noise",
                values=[*controls.LENGTHS, *metrics],
            ),
            per_prompt[per_prompt["area"] == area].pivot(
                index="question_id", columns="noise", values="correct"
            ),
        )
        for area, part in pooled.groupby("area", sort=False)
    }
    tests, acc_tests = [], []
    for a, b in itertools.combinations(levels, 2):
        for area, (wide, answers_) in wides.items():
            for (layer, position), cell in wide.groupby(level=["layer", "position"]):
                for metric in [*controls.LENGTHS, *metrics]:
                    if (metric, a) not in cell or (metric, b) not in cell:
                        continue
                    tests.append(
                        {
                            "layer": layer,
                            "position": position,
                            "area": area,
                            "metric": metric,
                            "noise_a": a,
                            "noise_b": b,
                            "sparser_when": sparsity.sparser_when(metric)
                            if metric in sparsity.SPARSER
                            else None,
                            # noise_b minus noise_a, question by question
                            **stats.paired_test(cell[(metric, a)], cell[(metric, b)]),
                        }
                    )
            if a in answers_ and b in answers_:
                both = answers_[[a, b]].dropna().astype(bool)
                acc_tests.append(
                    {
                        "area": area,
                        "noise_a": a,
                        "noise_b": b,
                        "accuracy_a": float(both[a].mean()),
                        "accuracy_b": float(both[b].mean()),
                        **stats.mcnemar(both[a], both[b]),
                    }
                )
    tests = pd.DataFrame.from_records(tests)
    if len(tests):
        rows = tests["sparser_when"].notna().to_numpy()
        tests = stats.adjust(tests, "wilcoxon_p", ["area", "noise_a", "noise_b"], rows)
    rd.write_text("tables/paired_tests.csv", tests.to_csv(index=False))
    if len(levels) > 1:
        ordinal = samples.assign(noise_level=samples["noise"].map(levels.index).astype(float))
        pipeline.write_controls(
            rd, ordinal, "noise_level", "numeric", metrics, groups="question_id", seed=seed
        )
        vectors.write_tables(rd, ordinal, metrics, label="noise_level", condition="noise",
                             reference=levels[0], groups="question_id", seed=seed)  # fmt: skip
    rd.write_text(
        "tables/accuracy_tests.csv", pd.DataFrame.from_records(acc_tests).to_csv(index=False)
    )
