"""`entrain qa rankmath`: hidden-state sparsity against MATH difficulty level.

Upstream (QA-bench/rankmath/hard.py, spec 4.1) ran one unbatched forward per problem and
correlated level with the 5 level means. Here: batched hook probe, per-problem Spearman and
Pearson with a bootstrap CI, NaN/inf reported instead of averaged in as 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import study
from ..data import registry
from ..engines.probe import HiddenProbe
from ..errors import UserError
from ..runs.rundir import RunDir
from ..science import stats

log = logging.getLogger("entrain")

COMMAND = "qa rankmath"
SYSTEM_PROMPT = (
    "You are a math tutor. Work the problem out step by step in your head, "
    "but reply with only the final answer."
)
USER_SUFFIX = "\n\nGive only the final answer."


@dataclass
class RankmathConfig:
    model: str | None = None
    dataset: str = "math500"
    data_file: Path | None = None
    limit_per_level: int | None = None
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


def select(data: registry.LoadedData, limit_per_level: int | None) -> pd.DataFrame:
    """Problems with their level, the first ``limit_per_level`` of each level (as upstream)."""
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
    if limit_per_level is not None:
        if limit_per_level < 1:
            raise UserError("--limit-per-level must be at least 1")
        frame = frame.groupby("level", sort=True).head(limit_per_level)
    if frame.empty:
        raise UserError(f"no problems selected from {data.location}; check the data file")
    return frame.reset_index(drop=True)


def build_prompt(tokenizer, problem: str) -> tuple[str, str]:
    """(exact text given to the tokenizer, 'chat' or 'plain')."""
    return study.chat_prompt(tokenizer, SYSTEM_PROMPT, problem + USER_SUFFIX)


def run(cfg: RankmathConfig) -> Path:
    # Everything that can be wrong with the input is checked before the run directory exists.
    metric_names = study.metric_names(cfg.metrics)
    study.check_positive(("--batch-size", cfg.batch_size))
    spec = registry.get_spec(cfg.dataset)
    if "level" not in spec.fields:
        raise UserError(f"dataset '{cfg.dataset}' has no difficulty level; use math500")
    data = registry.load(spec, cfg.data_file)
    problems = select(data, cfg.limit_per_level)
    setup = study.model_setup(cfg.model, cfg.device, cfg.dtype)
    layers = study.model_layers(setup.resolved, cfg.layers)
    probe_positions = study.check_positions(cfg.positions)

    identity = {
        "model": setup.resolved.id,
        "dataset": data.fingerprint,
        "limit_per_level": cfg.limit_per_level,
        "layers": layers,
        "positions": probe_positions,
        "metrics": metric_names,
        "dtype": str(setup.dtype),
    }
    with study.start_run(COMMAND, identity, cfg, setup, data, [spec.name]) as rd:
        model, tokenizer = study.load_model(rd, setup)
        prompts, formats = zip(
            *(build_prompt(tokenizer, p) for p in problems["problem"]), strict=True
        )
        problems["prompt"] = list(prompts)
        tokens = study.tokenize_prompts(problems, tokenizer, model)
        already_done = study.probe_samples(
            rd,
            cfg,
            problems[["id", "level", "subject", "prompt", "n_prompt_tokens"]],
            tokens,
            HiddenProbe(model, layers, probe_positions),
            metric_names,
            tokenizer.pad_token_id,
        )
        rd.update(
            prompt_format=formats[0],
            counts={
                "problems": len(problems),
                "skipped_too_long": len(tokens.skipped),
                "already_done": already_done,
            },
        )

        with rd.stage("analysis"):
            keys = ["id", "layer", "position"]
            samples = rd.read_in_order("samples", keys, problems["id"].tolist())
            if samples is None:
                raise UserError("no problem could be probed (all were skipped); see run.log")
            columns = ["id", "level", "subject", "prompt", "n_prompt_tokens", "layer", "position"]
            samples = samples[columns + metric_names]
            rd.write_table("samples", samples)
            write_analysis(rd, samples, metric_names, cfg.seed, cfg.n_boot)
        nonfinite = study.count_nonfinite(samples, metric_names)
        counts = {"probed": int(samples["id"].nunique()), "nonfinite_values": nonfinite}
        rd.update(counts={**rd.manifest["counts"], **counts})
        from ..plots.rankmath import plot_run

        plot_run(rd.path)
    return rd.path


def write_analysis(rd: RunDir, samples: pd.DataFrame, metrics: list[str], seed: int, n_boot: int):
    """Per-level summary and level-vs-metric correlations over all problems."""
    summary = stats.group_summary(samples, ["layer", "position", "level"], metrics)
    rd.write_text("tables/summary.csv", summary.to_csv(index=False))
    corr = study.correlation_table(samples, "level", metrics, seed, n_boot)
    rd.write_text("tables/correlations.csv", corr.to_csv(index=False))
