"""Entropy against STOPS from saved token tables: correlations, binned medians, unimodal fit.

Tokens of one prompt are not independent, so the bootstrap CI resamples prompts. Singleton
nuclei (K = 1: entropy 0, STOPS undefined) are left out, as upstream did; ``min_nucleus``
raises that floor.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from .. import signals
from ..errors import UserError
from ..runs.rundir import atomic_write_files, atomic_write_text, read_manifest, run_label
from ..science import stats
from . import grading

log = logging.getLogger("entrain")

X, Y = "topp_entropy", "stops"  # the correlation study's entropy, and STOPS


def check_options(min_nucleus: int, bins: int) -> None:
    """The analysis options, checked before anything is read or written."""
    if min_nucleus < 1:
        raise UserError(f"--min-nucleus must be at least 1, got {min_nucleus}")
    if bins < 1:
        raise UserError(f"--bins must be at least 1, got {bins}")


def analyze_run(run_dir: Path, min_nucleus: int, bins: int, n_boot: int, seed: int) -> dict:
    """Write tables/stats.csv, stats.tex, bins.csv and fit.json of one run (and a graded run's
    summaries), all computed before any old one is replaced, then its figure."""
    check_options(min_nucleus, bins)
    path = run_dir / "tables" / "tokens.parquet"
    if not path.is_file():
        raise UserError(f"{run_dir} has no tables/tokens.parquet; finish it with --resume")
    fix = f"rebuild it from the run's shards with entrain correlate --resume --run-dir {run_dir}"
    try:
        tokens = pd.read_parquet(path)
    except Exception as e:  # cut short or damaged: pyarrow's own error types
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path} does not read ({first}); {fix}") from None
    missing = [c for c in ("id", "nucleus_size", X, Y) if c not in tokens.columns]
    if missing:
        raise UserError(f"{path} has no column(s) {', '.join(missing)}; {fix}")
    points = stats.pool_tokens(tokens, X, Y, min_nucleus)
    corr = stats.correlate(points[X], points[Y], groups=points["id"], n_boot=n_boot, seed=seed)
    if corr["n_dropped_nonfinite"]:
        log.warning(
            "%s: %d of %d pooled tokens have a NaN/inf %s or %s; they are left out of the "
            "statistics and counted in stats.csv (n_dropped_nonfinite)",
            run_dir,
            corr["n_dropped_nonfinite"],
            len(points),
            X,
            Y,
        )
    binned = stats.binned_median(points[X], points[Y], bins=bins)
    fit = stats.fit_unimodal(binned["center"], binned["median"]) if len(binned) else {}
    model, dataset = run_label(run_dir)
    row = {
        "model": model,
        "dataset": dataset,
        "x": X,
        "y": Y,
        "min_nucleus": min_nucleus,
        "n_prompts": int(points.loc[stats.finite_rows(points, X, Y), "id"].nunique()),
        **corr,
        **{f"fit_{k}": v for k, v in fit.items() if k not in {"message"}},
    }
    table = pd.DataFrame([row])
    tables = run_dir / "tables"
    fit_doc = {"model": "a*H*exp(-b*H) + c", "x": X, "y": Y, "fitted_on": "bin medians", **fit}
    files = {
        tables / "stats.csv": table.to_csv(index=False),
        tables / "stats.tex": to_latex(table),
        tables / "bins.csv": binned.to_csv(index=False),
        tables / "fit.json": json.dumps(fit_doc, indent=2) + "\n",
    }
    graded = "correct" in pq.read_schema(tables / "prompts.parquet").names
    if graded:
        files |= grading.analyze(run_dir, seed)
    atomic_write_files(files)
    if graded:
        signals.analyze_run(run_dir, seed, n_boot)
    from ..plots.correlate import plot_run

    plot_run(run_dir)
    return row


def analyze_runs(
    run_dirs: list[Path], out: Path | None, min_nucleus: int, bins: int, n_boot: int, seed: int
) -> list[Path]:
    """Re-analyze finished runs; with several, one stats table and one grid figure in ``out``."""
    check_options(min_nucleus, bins)
    for rd in run_dirs:
        if read_manifest(rd).get("command") != "correlate":
            raise UserError(f"{rd} is not a correlate run")
    if len(run_dirs) > 1:  # checked before anything is written
        if out is None:
            raise UserError("analyzing several runs together needs --out DIR for the summary")
        seen: dict = {}
        for rd in run_dirs:
            label = run_label(rd)
            if label in seen:
                raise UserError(
                    f"{seen[label]} and {rd} are both {label[0]} on {label[1]}: the summary has "
                    "one row per model and dataset; analyze them in separate calls"
                )
            seen[label] = rd
    rows = [analyze_run(rd, min_nucleus, bins, n_boot, seed) for rd in run_dirs]
    written = [rd / "tables" / "stats.csv" for rd in run_dirs]
    if len(run_dirs) > 1:
        table = pd.DataFrame(rows).sort_values(["model", "dataset"], kind="stable")
        atomic_write_text(out / "stats.csv", table.to_csv(index=False))
        atomic_write_text(out / "stats.tex", to_latex(table))
        from ..plots.correlate import plot_compare

        written += [out / "stats.csv", out / "stats.tex", *plot_compare(run_dirs, out)]
    return written


def to_latex(table: pd.DataFrame) -> str:
    """A booktabs table: one row per (model, dataset), r and rho with their CIs, N, fit."""
    lines = [
        r"\begin{tabular}{llrrrrr}",
        r"\toprule",
        r"Model & Dataset & $N$ & Pearson $r$ [95\% CI] & Spearman $\rho$ [95\% CI] "
        r"& fit $R^2$ & peak $H$ \\",
        r"\midrule",
    ]
    for r in table.itertuples():
        model = str(r.model).replace("_", r"\_").replace("&", r"\&")
        lines.append(
            f"{model} & {r.dataset} & {r.n} & {r.pearson_r:.2f} [{r.pearson_lo:.2f}, "
            f"{r.pearson_hi:.2f}] & {r.spearman_rho:.2f} [{r.spearman_lo:.2f}, "
            f"{r.spearman_hi:.2f}] & {getattr(r, 'fit_r2', float('nan')):.2f} & "
            f"{getattr(r, 'fit_peak_x', float('nan')):.2f} \\\\"
        )
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)
