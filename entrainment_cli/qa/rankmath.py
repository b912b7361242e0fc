"""`entrain qa rankmath`: hidden-state sparsity against MATH difficulty level.

Upstream (QA-bench/rankmath/hard.py, spec 4.1) ran one unbatched forward per problem and
correlated level with the 5 level means. Here: batched hook probe, per-problem Spearman and
Pearson with a bootstrap CI, NaN/inf reported instead of averaged in as 0.
"""

from __future__ import annotations

import pandas as pd

from .. import pipeline, vectors
from ..data import prompts, registry
from ..errors import UserError
from ..runs.rundir import RunDir
from ..science import controls, stats

SYSTEM_PROMPT = (
    "You are a math tutor. Work the problem out step by step in your head, "
    "but reply with only the final answer."
)
USER_SUFFIX = "\n\nGive only the final answer."


def select(data: registry.LoadedData, limit: int | None) -> pd.DataFrame:
    """Problems with their level, the first ``limit`` of each level (as upstream)."""
    frame = pd.DataFrame(
        {
            "id": data.ids,
            "level": [
                registry.parse_level(r["level"], f"{data.location} row {i}")
                for i, r in enumerate(data.rows)
            ],
            "subject": [str(r.get("subject", "")) for r in data.rows],
            "problem": [str(r["problem"]) for r in data.rows],
        }
    )
    if limit is not None:
        frame = frame.groupby("level", sort=True).head(limit)
    if frame.empty:
        raise UserError(f"no problems selected from {data.location}; check the data file")
    return frame.reset_index(drop=True)


def build_prompt(tokenizer, problem: str) -> tuple[str, str]:
    """(exact text given to the tokenizer, 'chat' or 'plain')."""
    return prompts.chat_prompt(tokenizer, SYSTEM_PROMPT, problem + USER_SUFFIX)


STUDY = pipeline.ProbeStudy(
    dataset=lambda cfg: cfg.dataset,
    select=lambda data, cfg: select(data, cfg.limit),
    prompt=lambda tokenizer, row: build_prompt(tokenizer, row.problem),
    columns=("id", "level", "subject", "prompt", "n_prompt_tokens"),
    analysis=lambda rd, samples, metrics, cfg: write_analysis(
        rd, samples, metrics, cfg.seed, cfg.n_boot
    ),
    counts=lambda problems: {"problems": len(problems)},
    positions=lambda cfg: cfg.positions,
    what="problem",
)
prepare, execute = STUDY.prepare, STUDY.execute  # what the pipeline calls


def write_analysis(rd: RunDir, samples: pd.DataFrame, metrics: list[str], seed: int, n_boot: int):
    """Per-level summary, level-vs-metric correlations over all problems (prompt length first,
    as the baseline), and the controls (each metric given prompt length)."""
    summary = stats.group_summary(samples, ["layer", "position", "level"], metrics)
    rd.write_text("tables/summary.csv", summary.to_csv(index=False))
    samples = controls.with_lengths(samples)
    corr = stats.correlation_table(samples, "level", [*controls.LENGTHS, *metrics], seed, n_boot)
    rd.write_text("tables/correlations.csv", corr.to_csv(index=False))
    pipeline.write_controls(rd, samples, "level", "numeric", metrics, n_boot=n_boot, seed=seed)
    vectors.write_tables(rd, samples, metrics, label="level", n_boot=n_boot, seed=seed)
