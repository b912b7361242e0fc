"""`entrain qa rankmath`: hidden-state sparsity against MATH difficulty level.

Upstream (QA-bench/rankmath/hard.py, spec 4.1) ran one unbatched forward per problem and
correlated level with the 5 level means. Here: batched hook probe, per-problem Spearman and
Pearson with a bootstrap CI, NaN/inf reported instead of averaged in as 0.
"""

from __future__ import annotations

import logging

import pandas as pd

from .. import pipeline
from ..data import prompts, registry
from ..errors import UserError
from ..pipeline import Prepared, finish_counts, probe_stage, read_samples
from ..runs.rundir import RunDir
from ..science import stats
from ..studies import RankmathConfig

log = logging.getLogger("entrain")

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


def prepare(cfg: RankmathConfig, setup: pipeline.Setup) -> Prepared:
    metric_names = pipeline.metric_names(cfg.metrics)
    spec = registry.get_spec(cfg.dataset)
    data = registry.load(spec, cfg.data_file)
    problems = select(data, cfg.limit)
    keep, selection = pipeline.take_shard(cfg, problems["id"])
    problems = problems.iloc[keep].reset_index(drop=True)
    resolved = {
        "layers": pipeline.model_layers(setup.resolved, cfg.layers),
        "positions": pipeline.check_positions(cfg.positions),
        "metrics": metric_names,
    }
    return Prepared(data, [spec.name], resolved, problems, selection=selection)


def execute(rd: RunDir, cfg: RankmathConfig, setup: pipeline.Setup, prep: Prepared) -> None:
    problems, r = prep.state, prep.resolved
    columns = ["id", "level", "subject", "prompt", "n_prompt_tokens"]
    probe_stage(
        rd,
        cfg,
        setup,
        problems,
        lambda tokenizer, row: build_prompt(tokenizer, row.problem),
        columns,
        {"layers": r["layers"], "positions": r["positions"], "metrics": r["metrics"]},
        {"problems": len(problems)},
    )
    metric_names = r["metrics"]
    with rd.stage("analysis"):
        keys = ["id", "layer", "position"]
        samples = read_samples(
            rd, keys, problems["id"], [*columns, "layer", "position", *metric_names], "problem"
        )
        rd.write_table("samples", samples)
        write_analysis(rd, samples, metric_names, cfg.seed, cfg.n_boot)
    nonfinite = pipeline.count_nonfinite(samples, metric_names)
    finish_counts(rd, probed=int(samples["id"].nunique()), nonfinite_values=nonfinite)


def write_analysis(rd: RunDir, samples: pd.DataFrame, metrics: list[str], seed: int, n_boot: int):
    """Per-level summary and level-vs-metric correlations over all problems."""
    summary = stats.group_summary(samples, ["layer", "position", "level"], metrics)
    rd.write_text("tables/summary.csv", summary.to_csv(index=False))
    corr = stats.correlation_table(samples, "level", metrics, seed, n_boot)
    rd.write_text("tables/correlations.csv", corr.to_csv(index=False))
