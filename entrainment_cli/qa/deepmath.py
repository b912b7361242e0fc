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

import numpy as np
import pandas as pd

from .. import pipeline, vectors
from ..data import registry
from ..errors import UserError
from ..runs.rundir import RunDir
from ..science import controls, stats
from .rankmath import build_prompt

log = logging.getLogger("entrain")

BAND_POINTS = 50


def select(data: registry.LoadedData, n: int, limit: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample (``--sample``) of ``n`` problems without replacement (all when there are
    fewer), kept in dataset order, then the first ``limit`` of them."""
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
        log.info("--sample %d is more than the %d problems available; using all", n, len(frame))
    if limit is not None:
        frame = frame.head(limit)
    if frame.empty:
        raise UserError(f"no problems selected from {data.location}; check the data file")
    return frame.reset_index(drop=True)


STUDY = pipeline.ProbeStudy(
    dataset=lambda cfg: "deepmath",
    select=lambda data, cfg: select(data, cfg.sample, cfg.limit, cfg.seed),
    prompt=lambda tokenizer, row: build_prompt(tokenizer, row.question),
    columns=("id", "difficulty", "topic", "prompt", "n_prompt_tokens"),
    analysis=lambda rd, samples, metrics, cfg: write_analysis(
        rd, samples, metrics, cfg.seed, cfg.n_boot
    ),
    counts=lambda problems: {"problems": len(problems)},
    what="problem",
)
prepare, execute = STUDY.prepare, STUDY.execute  # what the pipeline calls


def write_analysis(rd: RunDir, samples: pd.DataFrame, metrics: list[str], seed: int, n_boot: int):
    """correlations.csv (difficulty vs each metric, prompt length first as the baseline),
    controls.csv and baselines.csv, fit.csv (OLS line) and band.csv (its 95% band on a grid
    over the observed difficulties), per layer."""
    samples = controls.with_lengths(samples)
    corr = stats.correlation_table(
        samples, "difficulty", [*controls.LENGTHS, *metrics], seed, n_boot
    )
    # "supports": the metric is sparser on harder problems, Spearman p < 0.05 (upstream's test)
    sign = np.where(corr["sparser_when"] == "higher", 1.0, -1.0)
    corr["supports_sparser_when_harder"] = (
        (np.sign(corr["spearman_rho"]) == sign) & (corr["spearman_p"] < 0.05)
    ).where(corr["sparser_when"].notna())
    rd.write_text("tables/correlations.csv", corr.to_csv(index=False))
    pipeline.write_controls(rd, samples, "difficulty", "numeric", metrics, n_boot=n_boot, seed=seed)
    vectors.write_tables(rd, samples, metrics, label="difficulty", n_boot=n_boot, seed=seed)
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
