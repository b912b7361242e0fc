"""`entrain qa conflict`: is the hidden state sparser when the context contradicts what the
model knows?

Upstream (QA-bench/Knowledge_conflict/judge.py, spec 4.4) computed the metrics in bf16,
called a pair "significant" when |ΔL1| > 0.02 (below bf16's resolution at L1 ~ 5k), asked for
"a single letter: True or False", and compared conditions that differ in both the context and
the question. Here: float32 metrics, a Wilcoxon signed-rank test over the pairs with two effect
sizes, a prompt that asks for True or False, and a third condition that keeps the conflicting
question but gives the model's own (parametric) knowledge, so that the context alone differs.
"""

from __future__ import annotations

import pandas as pd

from .. import pipeline, vectors
from ..data import prompts, registry
from ..errors import UserError
from ..runs.rundir import RunDir
from ..science import controls, sparsity, stats

SYSTEM_PROMPT = (
    "Judge whether the knowledge in the context is correct, then answer the question. "
    "Reply with a single word: True or False."
)
# condition -> (context field, question field)
CONDITIONS = {
    "conflict": ("conflicting_knowledge", "question_about_conflicting_segments"),
    "nonconflict": ("parametric_knowledge", "question_about_nonconflicting_segments"),
    "control": ("parametric_knowledge", "question_about_conflicting_segments"),
}
# (reference a, condition b): a test of b - a per item. The first is upstream's; in the second
# only the context differs (the question is the same), so it is free of the question confound.
COMPARISONS = [("nonconflict", "conflict"), ("control", "conflict")]


def build_prompt(tokenizer, context: str, question: str) -> tuple[str, str]:
    return prompts.chat_prompt(
        tokenizer, SYSTEM_PROMPT, f"Context: {context}\n\nQuestion: {question}", label=""
    )


def examples(data: registry.LoadedData, limit: int | None) -> pd.DataFrame:
    """One row per (item, condition), the first ``limit`` items in file order (as upstream)."""
    rows = data.rows[:limit] if limit is not None else data.rows
    if not rows:
        raise UserError(f"no knowledge-conflict items in {data.location}; check the data file")
    records = []
    for item, row in zip(data.ids, rows, strict=False):
        for condition, (context, question) in CONDITIONS.items():
            records.append(
                {
                    "id": f"{item}/{condition}",
                    "item": item,
                    "condition": condition,
                    "subject": str(row.get("subject", "")),
                    "main_entity": str(row["main_entity"]),
                    "context": str(row[context]),
                    "question": str(row[question]),
                }
            )
    return pd.DataFrame.from_records(records)


STUDY = pipeline.ProbeStudy(
    dataset=lambda cfg: "conflict",
    select=lambda data, cfg: examples(data, cfg.limit),
    prompt=lambda tokenizer, row: build_prompt(tokenizer, row.context, row.question),
    columns=("id", "item", "condition", "subject", "main_entity", "prompt", "n_prompt_tokens"),
    analysis=lambda rd, samples, metrics, cfg: write_analysis(rd, samples, metrics, cfg.seed),
    counts=lambda frame: {"items": int(frame["item"].nunique()), "prompts": len(frame)},
    shard_by="item",  # an item's conditions stay together in one shard (the paired tests)
)
prepare, execute = STUDY.prepare, STUDY.execute  # what the pipeline calls


def paired_table(samples: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per layer, comparison and metric: the Wilcoxon test of b - a (conflict minus its
    reference) over items, effect sizes, and whether b is the sparser one at p < 0.05. Prompt
    length (tokens, characters) is tested the same way, since a length difference between the
    conditions can drive a metric difference by itself; Holm and Benjamini-Hochberg adjust p
    over the metrics x layers of each comparison."""
    records = []
    samples = controls.with_lengths(samples)
    for layer, part in samples.groupby("layer", sort=True):
        wide = part.pivot(index="item", columns="condition", values=[*controls.LENGTHS, *metrics])
        for a, b in COMPARISONS:
            for metric in [*controls.LENGTHS, *metrics]:
                if (metric, a) not in wide or (metric, b) not in wide:
                    continue
                test = stats.paired_test(wide[(metric, a)], wide[(metric, b)])
                direction = sparsity.SPARSER.get(metric)  # None: prompt length
                records.append(
                    {
                        "layer": layer,
                        "a": a,
                        "b": b,
                        "metric": metric,
                        "sparser_when": None
                        if direction is None
                        else sparsity.sparser_when(metric),
                        **test,
                        "b_sparser": None
                        if direction is None
                        else bool(test["wilcoxon_p"] < 0.05 and test["mean_diff"] * direction > 0),
                    }
                )
    table = pd.DataFrame.from_records(records)
    rows = table["sparser_when"].notna().to_numpy()
    return stats.adjust(table, "wilcoxon_p", ["a", "b"], rows)


# what each comparison holds fixed, in the controls table
DESIGN = {
    "nonconflict": "context and question differ between the conditions",
    "control": "the question is held fixed; only the context differs",
}


def write_analysis(rd: RunDir, samples: pd.DataFrame, metrics: list[str], seed: int) -> None:
    """summary.csv, paired.csv, and the controls of each comparison: the condition (0 for the
    reference a, 1 for conflict) against each metric given prompt length, items as units."""
    summary = stats.group_summary(samples, ["layer", "condition"], ["n_prompt_tokens", *metrics])
    rd.write_text("tables/summary.csv", summary.to_csv(index=False))
    rd.write_text("tables/paired.csv", paired_table(samples, metrics).to_csv(index=False))
    tables: dict[str, list[pd.DataFrame]] = {}
    stacked = []
    for a, b in COMPARISONS:
        part = samples[samples["condition"].isin([a, b])]
        part = part.assign(is_b=(part["condition"] == b).astype(float))
        stacked.append(part.assign(is_conflict=part["is_b"], **{vectors.COMPARISON: f"{b} vs {a}"}))
        made = controls.study_controls(
            part, "is_b", "binary", metrics, by=["layer"], groups="item", note=DESIGN[a], seed=seed
        )
        for name, table in made.items():
            tables.setdefault(name, []).append(table.assign(a=a, b=b))
    for name, parts in tables.items():
        rd.write_text(f"tables/{name}.csv", pd.concat(parts).to_csv(index=False))
    # the ceiling of each comparison, and the shift from the non-conflicting prompt
    # (upstream's reference) to the other two
    vectors.write_tables(rd, pd.concat(stacked), metrics, label="is_conflict", kind="binary",
                         groups="item", seed=seed)  # fmt: skip
    vectors.write_tables(rd, samples, metrics, condition="condition", reference="nonconflict",
                         groups="item", seed=seed)  # fmt: skip
