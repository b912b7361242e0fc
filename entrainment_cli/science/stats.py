"""Statistics on per-example tables: group summaries and correlations with bootstrap CIs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats


def group_summary(df: pd.DataFrame, by: str | list[str], columns: Sequence[str]) -> pd.DataFrame:
    """Per group and column: n, mean, std, SEM, median, min, max over finite values.

    Non-finite values are counted in ``n_nonfinite`` and left out, never read as 0.
    """
    records = []
    for key, part in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for col in columns:
            values = part[col].to_numpy(dtype=np.float64)
            finite = values[np.isfinite(values)]
            n = finite.size
            std = float(np.std(finite, ddof=1)) if n > 1 else float("nan")
            records.append(
                {
                    **dict(zip([by] if isinstance(by, str) else by, key, strict=True)),
                    "metric": col,
                    "n": n,
                    "n_nonfinite": int(values.size - n),
                    "mean": float(finite.mean()) if n else float("nan"),
                    "std": std,
                    "sem": std / np.sqrt(n) if n > 1 else float("nan"),
                    "median": float(np.median(finite)) if n else float("nan"),
                    "min": float(finite.min()) if n else float("nan"),
                    "max": float(finite.max()) if n else float("nan"),
                }
            )
    return pd.DataFrame.from_records(records)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def correlate(
    x: Sequence[float],
    y: Sequence[float],
    *,
    groups: Sequence | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | int]:
    """Pearson and Spearman of x and y with p-values, N, and percentile bootstrap CIs.

    The bootstrap resamples whole ``groups`` (e.g. prompts, whose tokens are not
    independent); with no groups every row is its own group.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    g = np.arange(x.size) if groups is None else np.asarray(groups)[keep]
    out: dict[str, float | int] = {"n": int(x.size), "n_dropped_nonfinite": int((~keep).sum())}
    nan = float("nan")
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out | dict.fromkeys(
            [
                "pearson_r",
                "pearson_p",
                "spearman_rho",
                "spearman_p",
                "pearson_lo",
                "pearson_hi",
                "spearman_lo",
                "spearman_hi",
            ],
            nan,
        )
    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    out |= {
        "pearson_r": float(pr.statistic),
        "pearson_p": float(pr.pvalue),
        "spearman_rho": float(sr.statistic),
        "spearman_p": float(sr.pvalue),
    }
    rng = np.random.default_rng(seed)
    unique, inverse = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(unique.size)]
    boots = np.full((n_boot, 2), np.nan)
    for b in range(n_boot):
        picks = rng.integers(0, unique.size, unique.size)
        idx = np.concatenate([members[k] for k in picks])
        xb, yb = x[idx], y[idx]
        boots[b, 0] = _pearson(xb, yb)
        boots[b, 1] = _pearson(stats.rankdata(xb), stats.rankdata(yb))
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(boots, [tail, 100 - tail], axis=0)
    out |= {
        "pearson_lo": float(lo[0]),
        "pearson_hi": float(hi[0]),
        "spearman_lo": float(lo[1]),
        "spearman_hi": float(hi[1]),
    }
    return out


def pool_tokens(tokens: pd.DataFrame, x: str, y: str, min_nucleus: int) -> pd.DataFrame:
    """Tokens of every prompt pooled, keeping nuclei of at least ``min_nucleus`` tokens."""
    keep = tokens["nucleus_size"] >= min_nucleus
    return tokens.loc[keep, ["id", x, y]].dropna()


def binned_median(x: Sequence[float], y: Sequence[float], bins: int = 50) -> pd.DataFrame:
    """Median and IQR of y in equal-width bins of x over [min, max]; empty bins are skipped."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size == 0:
        return pd.DataFrame(columns=["lo", "hi", "center", "n", "median", "q25", "q75"])
    edges = np.linspace(x.min(), x.max(), bins + 1)
    # the last bin is closed on the right, so the maximum is counted (upstream's std dropped it)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    records = []
    for b in range(bins):
        values = y[idx == b]
        if values.size == 0:
            continue
        q25, med, q75 = np.percentile(values, [25, 50, 75])
        records.append(
            {
                "lo": edges[b],
                "hi": edges[b + 1],
                "center": (edges[b] + edges[b + 1]) / 2,
                "n": int(values.size),
                "median": med,
                "q25": q25,
                "q75": q75,
            }
        )
    return pd.DataFrame.from_records(records)


def unimodal(h: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """a H e^(-b H) + c: rises from c, peaks at H = 1/b, decays back to c."""
    return a * h * np.exp(-b * h) + c


def fit_unimodal(x: Sequence[float], y: Sequence[float]) -> dict[str, float | bool | str]:
    """Least-squares fit of :func:`unimodal` with its R^2 and peak; NaN fields if it fails."""
    from scipy.optimize import curve_fit

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    nan = float("nan")
    out: dict[str, float | bool | str] = dict.fromkeys(
        ["a", "b", "c", "r2", "peak_x", "peak_y"], nan
    )
    out["n_points"] = int(x.size)
    if x.size < 4:
        return out | {"converged": False, "message": "fewer than 4 points"}
    c0 = float(y.min())
    b0 = 1.0 / max(float(x[np.argmax(y)]), 1e-3)
    a0 = (float(y.max()) - c0) * b0 * np.e
    try:
        (a, b, c), _ = curve_fit(unimodal, x, y, p0=(a0, b0, c0), maxfev=10000)
    except (RuntimeError, ValueError) as e:
        return out | {"converged": False, "message": str(e)}
    pred = unimodal(x, a, b, c)
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    peak_x = 1.0 / b if b > 0 else nan
    return out | {
        "a": float(a),
        "b": float(b),
        "c": float(c),
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else nan,
        "peak_x": peak_x,
        "peak_y": float(unimodal(np.array(peak_x), a, b, c)) if b > 0 else nan,
        "converged": True,
        "message": "",
    }


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int]:
    """Wilcoxon signed-rank test of a - b over pairs, with two effect sizes.

    ``rank_biserial`` is the matched-pairs rank-biserial correlation (W+ - W-) / (W+ + W-)
    over the non-zero differences, in [-1, 1] (1: every a exceeds its b); ``cohens_dz`` is
    mean(d) / std(d, ddof=1). A pair with a non-finite value is dropped (``n_dropped``);
    zero differences are left out of the ranks as in Wilcoxon's original test (``n_zero``).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    nan = float("nan")
    out: dict[str, float | int] = {
        "n": int(d.size),
        "n_dropped": int((~keep).sum()),
        "n_zero": int((d == 0).sum()),
        "mean_a": float(a[keep].mean()) if d.size else nan,
        "mean_b": float(b[keep].mean()) if d.size else nan,
        "mean_diff": float(d.mean()) if d.size else nan,
        "median_diff": float(np.median(d)) if d.size else nan,
        "cohens_dz": nan,
        "w_plus": nan,
        "w_minus": nan,
        "wilcoxon_p": nan,
        "rank_biserial": nan,
    }
    if d.size > 1:
        sd = float(d.std(ddof=1))
        out["cohens_dz"] = float(d.mean()) / sd if sd > 0 else nan
    nonzero = d[d != 0]
    if nonzero.size:
        ranks = stats.rankdata(np.abs(nonzero))
        w_plus, w_minus = float(ranks[nonzero > 0].sum()), float(ranks[nonzero < 0].sum())
        res = stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
        out |= {
            "w_plus": w_plus,
            "w_minus": w_minus,
            "wilcoxon_p": float(res.pvalue),
            "rank_biserial": (w_plus - w_minus) / (w_plus + w_minus),
        }
    return out


def linear_fit_band(
    x: Sequence[float], y: Sequence[float], grid: Sequence[float], level: float = 0.95
) -> tuple[dict[str, float | int], pd.DataFrame]:
    """Least-squares line y = intercept + slope x, and the ``level`` confidence band of the
    fitted mean on ``grid``: fit +/- t * s * sqrt(1/n + (g - mean x)^2 / Sxx), with Student's t
    on n - 2 degrees of freedom (upstream used 1.96 whatever n). Non-finite pairs are dropped.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    g = np.asarray(grid, dtype=np.float64)
    nan = float("nan")
    n = int(x.size)
    params: dict[str, float | int] = {"n": n, "slope": nan, "intercept": nan, "r2": nan, "s": nan}
    band = pd.DataFrame({"x": g, "fit": nan, "lo": nan, "hi": nan})
    sxx = float(((x - x.mean()) ** 2).sum()) if n else 0.0
    if n < 3 or sxx == 0:
        return params, band
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (intercept + slope * x)
    s = float(np.sqrt((resid**2).sum() / (n - 2)))
    ss_tot = float(((y - y.mean()) ** 2).sum())
    fit = intercept + slope * g
    half = stats.t.ppf((1 + level) / 2, n - 2) * s * np.sqrt(1 / n + (g - x.mean()) ** 2 / sxx)
    params |= {
        "slope": slope,
        "intercept": intercept,
        "r2": 1 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else nan,
        "s": s,
    }
    return params, pd.DataFrame({"x": g, "fit": fit, "lo": fit - half, "hi": fit + half})


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict[str, float | int]:
    """Exact McNemar test of paired correctness: of the pairs where exactly one condition is
    right, is b right as often as a? ``b_only`` / ``a_only`` count those discordant pairs."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    n = a_only + b_only
    p = float(stats.binomtest(b_only, n, 0.5).pvalue) if n else float("nan")
    return {"n": int(a.size), "a_only": a_only, "b_only": b_only, "mcnemar_p": p}


def correlation_table(
    samples: pd.DataFrame, x: str, metrics: Sequence[str], seed: int, n_boot: int
) -> pd.DataFrame:
    """Per (layer, position, metric): Pearson and Spearman of ``x`` against the metric over all
    examples, with p, N and bootstrap CIs, and the direction in which the metric is sparser."""
    from .sparsity import sparser_when  # here, not above: figures import stats without torch

    records = []
    for (layer, position), part in samples.groupby(["layer", "position"], sort=True):
        for metric in metrics:
            corr = correlate(part[x], part[metric], n_boot=n_boot, seed=seed)
            records.append(
                {
                    "layer": layer,
                    "position": position,
                    "metric": metric,
                    "sparser_when": sparser_when(metric),
                    **corr,
                }
            )
    return pd.DataFrame.from_records(records)
