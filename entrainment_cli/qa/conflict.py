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

from .. import pipeline
from ..data import prompts, registry
from ..errors import UserError
from ..runs.rundir import RunDir
from ..science import sparsity, stats

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
# (a, b): a test of a - b per item. The first is upstream's; in the second only the context
# differs (the question is the same), so it is free of the question confound.
COMPARISONS = [("conflict", "nonconflict"), ("conflict", "control")]


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
    analysis=lambda rd, samples, metrics, cfg: write_analysis(rd, samples, metrics),
    counts=lambda frame: {"items": int(frame["item"].nunique()), "prompts": len(frame)},
    shard_by="item",  # an item's conditions stay together in one shard (the paired tests)
)
prepare, execute = STUDY.prepare, STUDY.execute  # what the pipeline calls


def paired_table(samples: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per layer, comparison and metric: the Wilcoxon test of a - b over items, effect sizes,
    and whether a is the sparser one at p < 0.05. Prompt length is tested the same way, since
    a length difference between the conditions can drive a metric difference by itself."""
    records = []
    for layer, part in samples.groupby("layer", sort=True):
        wide = part.pivot(index="item", columns="condition", values=["n_prompt_tokens", *metrics])
        for a, b in COMPARISONS:
            for metric in ["n_prompt_tokens", *metrics]:
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
                        "a_sparser": None
                        if direction is None
                        else bool(test["wilcoxon_p"] < 0.05 and test["mean_diff"] * direction > 0),
                    }
                )
    return pd.DataFrame.from_records(records)


def write_analysis(rd: RunDir, samples: pd.DataFrame, metrics: list[str]) -> None:
    summary = stats.group_summary(samples, ["layer", "condition"], ["n_prompt_tokens", *metrics])
    rd.write_text("tables/summary.csv", summary.to_csv(index=False))
    rd.write_text("tables/paired.csv", paired_table(samples, metrics).to_csv(index=False))
