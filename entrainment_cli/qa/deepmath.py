"""`entrain qa deepmath`: hidden-state sparsity against DeepMath-103K's continuous difficulty.

Upstream (QA-bench/rankmath/deepmath_sparsity.py, spec 4.1) fetched ten hard-coded parquet
shards with `requests`, replaced NaN metrics by 0 and averaged them in, and drew a 1.96-sigma
band whatever N. Here: the hub through `datasets` (two columns read), a seeded sample, the
batched hook probe, per-problem Pearson and Spearman with p, N and a bootstrap CI, and an OLS
line with a Student-t confidence band saved as a table, from which the scatter is drawn.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import study
from ..data import registry
from ..engines.probe import HiddenProbe
from ..errors import UserError
from ..runs.rundir import RunDir
from ..science import stats
from .rankmath import build_prompt

log = logging.getLogger("entrain")

COMMAND = "qa deepmath"
BAND_POINTS = 50


@dataclass
class DeepmathConfig:
    model: str | None = None
    data_file: Path | None = None
    n: int = 10_000
    limit: int | None = None
    layers: str = "-1"
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


def select(data: registry.LoadedData, n: int, limit: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of ``n`` problems without replacement (all when there are fewer), kept
    in dataset order, then the first ``limit`` of them."""
    difficulty = []
    for i, row in enumerate(data.rows):
        try:
            value = float(row["difficulty"])
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise UserError(
                f"{data.location} row {i}: difficulty '{row['difficulty']}' is not a number"
            )
        difficulty.append(value)
    frame = pd.DataFrame(
        {
            "id": data.ids,
            "difficulty": difficulty,
            "topic": [str(r.get("topic", "")) for r in data.rows],
            "question": [str(r["question"]) for r in data.rows],
        }
    )
    if n < len(frame):
        pick = np.sort(np.random.default_rng(seed).choice(len(frame), size=n, replace=False))
        frame = frame.iloc[pick]
    elif n > len(frame):
        log.info("--n %d is more than the %d problems available; using all", n, len(frame))
    if limit is not None:
        frame = frame.head(limit)
    if frame.empty:
        raise UserError(f"no problems selected from {data.location}; check the data file")
    return frame.reset_index(drop=True)


def run(cfg: DeepmathConfig) -> Path:
    metric_names = study.metric_names(cfg.metrics)
    study.check_positive(("--n", cfg.n), ("--limit", cfg.limit), ("--batch-size", cfg.batch_size))
    spec = registry.get_spec("deepmath")
    data = registry.load(spec, cfg.data_file)
    problems = select(data, cfg.n, cfg.limit, cfg.seed)
    setup = study.model_setup(cfg.model, cfg.device, cfg.dtype)
    layers = study.model_layers(setup.resolved, cfg.layers)

    identity = {
        "model": setup.resolved.id,
        "dataset": data.fingerprint,
        "n": cfg.n,
        "limit": cfg.limit,
        "seed": cfg.seed,  # picks the sample
        "layers": layers,
        "metrics": metric_names,
        "dtype": str(setup.dtype),
    }
    with study.start_run(COMMAND, identity, cfg, setup, data, [spec.name]) as rd:
        model, tokenizer = study.load_model(rd, setup)
        prompts, formats = zip(
            *(build_prompt(tokenizer, q) for q in problems["question"]), strict=True
        )
        problems["prompt"] = list(prompts)
        tokens = study.tokenize_prompts(problems, tokenizer, model)
        columns = ["id", "difficulty", "topic", "prompt", "n_prompt_tokens"]
        already_done = study.probe_samples(
            rd,
            cfg,
            problems[columns],
            tokens,
            HiddenProbe(model, layers, ["last-prompt"]),
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
            samples = rd.read_in_order("samples", ["id", "layer"], problems["id"].tolist())
            if samples is None:
                raise UserError("no problem could be probed (all were skipped); see run.log")
            samples = samples[[*columns, "layer", "position", *metric_names]]
            rd.write_table("samples", samples)
            write_analysis(rd, samples, metric_names, cfg.seed, cfg.n_boot)
        counts = {
            "probed": int(samples["id"].nunique()),
            "nonfinite_values": study.count_nonfinite(samples, metric_names),
        }
        rd.update(counts={**rd.manifest["counts"], **counts})
        from ..plots.qa import plot_deepmath

        plot_deepmath(rd.path)
    return rd.path


def write_analysis(rd: RunDir, samples: pd.DataFrame, metrics: list[str], seed: int, n_boot: int):
    """correlations.csv (difficulty vs each metric), fit.csv (OLS line) and band.csv (its
    95% band on a grid over the observed difficulties), per layer."""
    corr = study.correlation_table(samples, "difficulty", metrics, seed, n_boot)
    # "supports": the metric is sparser on harder problems, Spearman p < 0.05 (upstream's test)
    sign = np.where(corr["sparser_when"] == "higher", 1.0, -1.0)
    corr["supports_sparser_when_harder"] = (np.sign(corr["spearman_rho"]) == sign) & (
        corr["spearman_p"] < 0.05
    )
    rd.write_text("tables/correlations.csv", corr.to_csv(index=False))
    fits, bands = [], []
    for layer, part in samples.groupby("layer", sort=True):
        x = part["difficulty"].to_numpy(dtype=np.float64)
        grid = np.linspace(x.min(), x.max(), BAND_POINTS)
        for metric in metrics:
            params, band = stats.linear_fit_band(x, part[metric], grid)
            fits.append({"layer": layer, "metric": metric, **params})
            bands.append(band.assign(layer=layer, metric=metric))
    rd.write_text("tables/fit.csv", pd.DataFrame.from_records(fits).to_csv(index=False))
    band = pd.concat(bands, ignore_index=True)[["layer", "metric", "x", "fit", "lo", "hi"]]
    rd.write_text("tables/band.csv", band.to_csv(index=False))
