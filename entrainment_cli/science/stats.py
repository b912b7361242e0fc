"""Statistics on per-example tables: group summaries and correlations with bootstrap CIs,
paired tests, fits; and correctness statistics (below)."""

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
) -> dict[str, float | int | str]:
    """Pearson and Spearman of x and y with p-values, N, and percentile bootstrap CIs.

    The bootstrap resamples whole ``groups`` (e.g. prompts, whose tokens are not
    independent); with no groups every row is its own group. The p-values are scipy's when
    every row is its own unit, else the grouped bootstrap's (:func:`bootstrap_p`): tokens of
    one prompt never count as independent evidence. ``n_units`` counts the units; fewer than
    ``MIN_UNITS`` give a ``note``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    g = np.arange(x.size) if groups is None else np.asarray(groups)[keep]
    members = unit_members(g)
    out: dict[str, float | int | str] = {
        "n": int(x.size),
        "n_units": len(members),
        "n_dropped_nonfinite": int((~keep).sum()),
    }
    nan = float("nan")
    names = ["pearson_r", "pearson_p", "spearman_rho", "spearman_p"]
    names += ["pearson_lo", "pearson_hi", "spearman_lo", "spearman_hi"]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out | dict.fromkeys(names, nan) | {"note": units_note(len(members))}
    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    out |= {
        "pearson_r": float(pr.statistic),
        "pearson_p": float(pr.pvalue),
        "spearman_rho": float(sr.statistic),
        "spearman_p": float(sr.pvalue),
    }

    def both(idx: np.ndarray) -> tuple[float, float]:
        xb, yb = x[idx], y[idx]
        return _pearson(xb, yb), _pearson(stats.rankdata(xb), stats.rankdata(yb))

    boots = cluster_bootstrap(both, members, n_boot, seed)
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(boots, [tail, 100 - tail], axis=0)
    if len(members) < x.size:  # repeated measurements: the units' bootstrap decides p
        out |= {"pearson_p": bootstrap_p(boots[:, 0]), "spearman_p": bootstrap_p(boots[:, 1])}
    return out | {
        "pearson_lo": float(lo[0]),
        "pearson_hi": float(hi[0]),
        "spearman_lo": float(lo[1]),
        "spearman_hi": float(hi[1]),
        "note": units_note(len(members)),
    }


MIN_UNITS = 5  # fewer independent units than this: a p-value is reported with a note


def units_note(n_units: int) -> str:
    """The note a statistic on too few independent units carries ('' when there are enough)."""
    if n_units < MIN_UNITS:
        return f"only {n_units} independent unit(s), fewer than {MIN_UNITS}: p unreliable"
    return ""


def unit_members(groups: Sequence) -> list[np.ndarray]:
    """The row indices of each unit (distinct value of ``groups``), in sorted unit order."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.cumsum(np.bincount(inverse))[:-1]) if order.size else []


def cluster_bootstrap(
    statistic, members: Sequence[np.ndarray], n_boot: int, seed: int
) -> np.ndarray:
    """``statistic(rows)`` over ``n_boot`` resamples of whole units (with replacement, as many
    as there are): a unit's rows are drawn together, so they never count as independent."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        picks = rng.integers(0, len(members), len(members))
        out.append(statistic(np.concatenate([members[k] for k in picks])))
    return np.asarray(out, dtype=np.float64)


def percentile_ci(boots: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap resamples, NaN ones left out (NaN if all are)."""
    b = np.asarray(boots, dtype=np.float64)
    if not np.isfinite(b).any():
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(b, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_p(boots: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the statistic is 0": twice the smaller share of
    resamples on either side of 0, each counted with the observed one ((k + 1) / (B + 1)),
    so it is never 0 and its floor is 2 / (B + 1)."""
    b = np.asarray(boots, dtype=np.float64)
    b = b[np.isfinite(b)]
    if b.size == 0:
        return float("nan")
    below, above = (b <= 0).sum(), (b >= 0).sum()
    return float(min(1.0, 2 * (min(below, above) + 1) / (b.size + 1)))


# -- multiple comparisons --------------------------------------------------------------------


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error); NaN stays NaN and is not
    counted in the family."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m:
        order = finite[np.argsort(p[finite], kind="stable")]
        stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
        out[order] = np.minimum(stepped, 1.0)
    return out


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate); NaN stays NaN and is not
    counted in the family."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = stats.false_discovery_control(p[finite], method="bh")
    return out


def adjust(
    table: pd.DataFrame, p_column: str, family: Sequence[str] = (), rows: np.ndarray | None = None
) -> pd.DataFrame:
    """``table`` with ``{p_column}_holm`` and ``{p_column}_bh`` beside ``p_column``: adjusted
    within each group of the ``family`` columns (e.g. a comparison: the family is then every
    metric x layer x position of it), over ``rows`` only (the metrics; baselines get NaN)."""
    rows = np.ones(len(table), bool) if rows is None else np.asarray(rows, bool)
    holm_p, bh_p = np.full(len(table), np.nan), np.full(len(table), np.nan)
    keys = table[list(family)].astype(str).agg("|".join, axis=1) if family else None
    for key in [None] if keys is None else keys[rows].unique():
        part = rows if key is None else rows & (keys == key).to_numpy()
        holm_p[part] = holm(table.loc[part, p_column])
        bh_p[part] = benjamini_hochberg(table.loc[part, p_column])
    at = table.columns.get_loc(p_column) + 1
    out = table.copy()
    out.insert(at, f"{p_column}_holm", holm_p)
    out.insert(at + 1, f"{p_column}_bh", bh_p)
    return out


def pool_tokens(tokens: pd.DataFrame, x: str, y: str, min_nucleus: int) -> pd.DataFrame:
    """Tokens of every prompt pooled, keeping nuclei of at least ``min_nucleus`` tokens.

    NaN/inf values are kept, so that :func:`correlate` counts them (``n_dropped_nonfinite``)
    as it leaves them out, rather than losing them uncounted here."""
    keep = tokens["nucleus_size"] >= min_nucleus
    return tokens.loc[keep, ["id", x, y]]


def finite_rows(frame: pd.DataFrame, *columns: str) -> np.ndarray:
    """Mask of the rows whose ``columns`` are all finite."""
    return np.isfinite(frame[list(columns)].to_numpy(dtype=np.float64)).all(axis=1)


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
    """Wilcoxon signed-rank test of d = b - a over pairs, with two effect sizes.

    The one sign convention of every paired table: ``a`` is the reference (no noise, the
    shortest context, the non-conflicting prompt), ``b`` the condition, and a difference is
    "condition minus reference". ``rank_biserial`` is the matched-pairs rank-biserial
    correlation (W+ - W-) / (W+ + W-) over the non-zero differences, in [-1, 1] (1: every b
    exceeds its a); ``cohens_dz`` is mean(d) / std(d, ddof=1). A pair with a non-finite value
    is dropped (``n_dropped``); zero differences are left out of the ranks as in Wilcoxon's
    original test (``n_zero``).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = b[keep] - a[keep]
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
        w_plus, w_minus = signed_rank_sums(nonzero)
        res = stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided")
        out |= {
            "w_plus": w_plus,
            "w_minus": w_minus,
            "wilcoxon_p": float(res.pvalue),
            "rank_biserial": (w_plus - w_minus) / (w_plus + w_minus),
        }
    return out


def signed_rank_sums(d: np.ndarray) -> tuple[float, float]:
    """(W+, W-): the sums of the ranks of |d| over the positive and the negative differences
    (zeros left out, ties at midranks)."""
    nonzero = d[d != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    return float(ranks[nonzero > 0].sum()), float(ranks[nonzero < 0].sum())


def rank_biserial(d: np.ndarray) -> float:
    """The matched-pairs rank-biserial correlation (W+ - W-) / (W+ + W-); NaN if all d = 0."""
    w_plus, w_minus = signed_rank_sums(d)
    total = w_plus + w_minus
    return (w_plus - w_minus) / total if total else float("nan")


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
    examples, with p, N and bootstrap CIs, and the direction in which the metric is sparser.
    A name that is no sparsity metric (a length baseline) has no direction and stays out of
    the Holm and Benjamini-Hochberg adjustment, which is over every metric x layer x position."""
    from .sparsity import (
        SPARSER,
        sparser_when,
    )  # here, not above: figures import stats without torch

    records = []
    for (layer, position), part in samples.groupby(["layer", "position"], sort=True):
        for metric in metrics:
            corr = correlate(part[x], part[metric], n_boot=n_boot, seed=seed)
            records.append(
                {
                    "layer": layer,
                    "position": position,
                    "metric": metric,
                    "sparser_when": sparser_when(metric) if metric in SPARSER else None,
                    **corr,
                }
            )
    table = pd.DataFrame.from_records(records)
    rows = table["metric"].isin(list(SPARSER)).to_numpy()
    return adjust(adjust(table, "spearman_p", rows=rows), "pearson_p", rows=rows)


# -- correctness: do per-prompt confidence metrics separate correct from incorrect answers?
#
# Do per-prompt confidence metrics separate correct from incorrect answers?
#
# Rank statistics (Mann-Whitney U, AUROC), reliability bins and cross-validated classifiers
# on one row per prompt. Labels may be bool, 0/1 or the upstream ``yes`` / ``no`` strings
# (spec 5.4); ``buggy`` and missing labels are left out, never read as incorrect. Classifiers
# are judged by AUROC and balanced accuracy next to the majority-class baseline, because
# upstream's 96% "accuracy" was the majority rate of a 3.5%-correct set (spec 6, 8.4).

nan = float("nan")
Z95 = 1.959963984540054  # two-sided 95% normal quantile, for the Wilson interval

_LABELS = {"yes": 1.0, "no": 0.0, "true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0}


def _labels(values: Sequence | np.ndarray | pd.Series) -> np.ndarray:
    """Labels as float 1 (correct), 0 (incorrect) or NaN (buggy, missing, anything else)."""
    out = np.full(len(values), np.nan)
    for i, v in enumerate(np.asarray(values, dtype=object)):
        if isinstance(v, bool | np.bool_):
            out[i] = float(v)
        elif isinstance(v, int | float | np.integer | np.floating):
            out[i] = float(v) if v in (0, 1) else np.nan
        elif isinstance(v, str):
            out[i] = _LABELS.get(v.strip().lower(), np.nan)
    return out


def compare_groups(df: pd.DataFrame, metrics: list[str], correct: str = "correct") -> pd.DataFrame:
    """Per metric: group sizes, means, medians, Mann-Whitney U (two-sided) and AUROC.

    ``auroc`` is P(metric of a random correct prompt > that of a random incorrect one), ties
    counting 1/2, i.e. U / (n_correct n_incorrect); ``auroc_best`` = max(auroc, 1 - auroc)
    with ``direction`` saying whether "higher" or "lower" values predict correct. Non-finite
    metric values are dropped for that metric only (``n_dropped``); an empty group gives NaN.
    """
    y = _labels(df[correct])
    labelled = ~np.isnan(y)
    records = []
    for metric in metrics:
        values = df[metric].to_numpy(dtype=np.float64)
        keep = labelled & np.isfinite(values)
        pos = values[keep & (y == 1)]
        neg = values[keep & (y == 0)]
        rec = {
            "metric": metric,
            "n": int(keep.sum()),
            "n_dropped": int((labelled & ~np.isfinite(values)).sum()),
            "n_correct": int(pos.size),
            "n_incorrect": int(neg.size),
            "mean_correct": float(pos.mean()) if pos.size else nan,
            "mean_incorrect": float(neg.mean()) if neg.size else nan,
            "median_correct": float(np.median(pos)) if pos.size else nan,
            "median_incorrect": float(np.median(neg)) if neg.size else nan,
            **rank_test(pos, neg),
        }
        records.append(rec)
    return pd.DataFrame.from_records(records)


def rank_test(pos: np.ndarray, neg: np.ndarray) -> dict:
    """Mann-Whitney U (two-sided) of ``pos`` against ``neg``, and AUROC = U / (n_pos n_neg):
    P(a random ``pos`` value > a random ``neg`` value), ties 1/2; ``auroc_best`` and
    ``direction`` say which way separates better. NaN (direction None) if a side is empty."""
    if not (pos.size and neg.size):
        return {"u": nan, "p": nan, "auroc": nan, "auroc_best": nan, "direction": None}
    mw = stats.mannwhitneyu(pos, neg, alternative="two-sided")
    auroc = float(mw.statistic) / (pos.size * neg.size)
    return {
        "u": float(mw.statistic),
        "p": float(mw.pvalue),
        "auroc": auroc,
        "auroc_best": max(auroc, 1 - auroc),
        "direction": "higher" if auroc >= 0.5 else "lower",
    }


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """U / (n_pos n_neg) from midranks, without the test (for bootstrap resamples)."""
    ranks = stats.rankdata(np.concatenate([pos, neg]))
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n: stays inside [0, 1] and is sane at k = 0, n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, center - half)  # exact ends, not 1 - 1e-16
    hi = 1.0 if k == n else min(1.0, center + half)
    return float(lo), float(hi)


def accuracy_record(correct: Sequence) -> dict:
    """n, correct, accuracy (None when there is nothing to score) and its Wilson 95% interval."""
    k, n = int(np.sum(correct)), len(correct)
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else None, "ci_lo": lo, "ci_hi": hi}


def accuracy_by_bins(values: Sequence[float], correct: Sequence, bins: int = 5) -> pd.DataFrame:
    """Accuracy with a Wilson 95% interval in quantile (equal-count) bins of a metric.

    Bins are right-closed, (lo, hi], the first one closed on both sides. A value that fills
    several quantile edges (e.g. entropy 0 of all-singleton answers, 27-97% of CoT/CoD prompts,
    spec 5.4) becomes its own bin with lo = hi rather than being merged with its neighbours
    (whose intervals are then open at that value), so there are at most ``bins`` bins and empty
    ones are not listed. Non-finite values and unlabelled rows are left out.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    x = np.asarray(values, dtype=np.float64)
    y = _labels(correct)
    keep = np.isfinite(x) & ~np.isnan(y)
    x, y = x[keep], y[keep]
    columns = ["lo", "hi", "n", "n_correct", "accuracy", "ci_lo", "ci_hi"]
    if x.size == 0:
        return pd.DataFrame(columns=columns)
    edges = np.quantile(x, np.linspace(0, 1, bins + 1))
    uniq, counts = np.unique(edges, return_counts=True)
    point = counts > 1
    # interval j covers (uniq[j-1], uniq[j]]; point bin j covers {uniq[j]} exactly
    j = np.clip(np.searchsorted(uniq, x, side="left"), 1, max(uniq.size - 1, 1))
    at_edge = np.isin(x, uniq[point])
    point_idx = np.searchsorted(uniq, x)
    key = np.where(at_edge, 2 * point_idx, 2 * j - 1)
    records = []
    for k in np.unique(key):
        mask = key == k
        n = int(mask.sum())
        hits = int(y[mask].sum())
        idx = k // 2 if k % 2 == 0 else (k + 1) // 2
        lo, hi = (uniq[idx], uniq[idx]) if k % 2 == 0 else (uniq[max(idx - 1, 0)], uniq[idx])
        ci_lo, ci_hi = wilson_interval(hits, n)
        records.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "n": n,
                "n_correct": hits,
                "accuracy": hits / n,
                "ci_lo": ci_lo,
                "ci_hi": ci_hi,
            }
        )
    return pd.DataFrame.from_records(records, columns=columns)


def _models(seed: int) -> dict:
    """Both models impute medians inside the pipeline, so folds never see test-fold statistics."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def imputer() -> SimpleImputer:
        return SimpleImputer(strategy="median", keep_empty_features=True)

    return {
        "logistic_regression": make_pipeline(
            imputer(),
            StandardScaler(),
            LogisticRegression(class_weight="balanced", max_iter=1000),
        ),
        "gradient_boosting": make_pipeline(
            imputer(),
            HistGradientBoostingClassifier(class_weight="balanced", random_state=seed),
        ),
    }


def classify(features: pd.DataFrame, y: np.ndarray, seed: int, folds: int = 5) -> dict:
    """Stratified K-fold AUROC and balanced accuracy of two classifiers, with a majority baseline.

    Logistic regression (standardized) and histogram gradient boosting, both with balanced
    class weights. AUROC comes from predicted probabilities, not hard labels (upstream's
    cosine-only AUROC did the latter, spec 6). ``folds`` is lowered to the minority-class
    count; with fewer than 2 examples of a class the result has a ``skipped`` reason and no
    scores. Stds are over folds (ddof=1). Every value is JSON-serializable.
    """
    from sklearn.model_selection import StratifiedKFold, cross_validate

    labels = _labels(y)
    if np.isnan(labels).any():
        raise ValueError("y must hold only correct/incorrect labels (bool, 0/1, yes/no)")
    if len(labels) != len(features):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    target = labels.astype(np.int64)
    n, n_pos = int(target.size), int(target.sum())
    minority = min(n_pos, n - n_pos)
    out: dict = {
        "n": n,
        "n_positive": n_pos,
        "features": [str(c) for c in features.columns],
        "folds": int(min(folds, minority)),
        "seed": int(seed),
        "majority_baseline": {
            "class": int(n_pos >= n - n_pos),
            "accuracy": max(n_pos, n - n_pos) / n if n else float("nan"),
            "balanced_accuracy": 0.5,
        },
    }
    if minority < 2:
        out["folds"] = 0
        out["skipped"] = (
            f"need at least 2 examples of each class for stratified CV; "
            f"have {n_pos} correct and {n - n_pos} incorrect"
        )
        return out
    x = features.to_numpy(dtype=np.float64)
    cv = StratifiedKFold(n_splits=out["folds"], shuffle=True, random_state=seed)
    scoring = {"auroc": "roc_auc", "balanced_accuracy": "balanced_accuracy", "accuracy": "accuracy"}
    out["models"] = {}
    for name, model in _models(seed).items():
        res = cross_validate(model, x, target, cv=cv, scoring=scoring, error_score="raise")
        auroc, bal, acc = (res[f"test_{s}"] for s in scoring)
        out["models"][name] = {
            "auroc_mean": float(auroc.mean()),
            "auroc_std": float(auroc.std(ddof=1)),
            "balanced_accuracy_mean": float(bal.mean()),
            "balanced_accuracy_std": float(bal.std(ddof=1)),
            "accuracy_mean": float(acc.mean()),
            "auroc_folds": [float(v) for v in auroc],
        }
    return out


def au_eu_quadrant(au: Sequence[float], eu: Sequence[float]) -> np.ndarray:
    """Label each point by its side of the AU and EU medians, e.g. "low AU, high EU".

    Replaces upstream's k-means on unscaled (AU, EU), whose clusters were bands along AU
    because AU spans ~0-4 and EU ~0.02-0.12 (spec 5.6). Medians are over the points with both
    values finite; "high" means strictly above the median, so a point at the median is "low"
    (with many AU = 0 prompts the median may be 0). Non-finite AU or EU -> "missing".
    """
    a = np.asarray(au, dtype=np.float64)
    e = np.asarray(eu, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(e)
    out = np.full(a.size, "missing", dtype=object)
    if not ok.any():
        return out
    high_a = a[ok] > np.median(a[ok])
    high_e = e[ok] > np.median(e[ok])
    out[ok] = [
        f"{'high' if ha else 'low'} AU, {'high' if he else 'low'} EU"
        for ha, he in zip(high_a, high_e, strict=True)
    ]
    return out


def bootstrap_ci(
    statistic, samples: Sequence[np.ndarray], n_boot: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)``, each sample resampled with
    replacement on its own (strata keep their sizes); NaN resamples are left out."""
    if n_boot < 1 or any(s.size == 0 for s in samples):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array(
        [statistic(*(s[rng.integers(0, s.size, s.size)] for s in samples)) for _ in range(n_boot)]
    )
    if not np.isfinite(values).any():
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def kruskal_h(*groups: np.ndarray) -> float:
    """Kruskal-Wallis H with the tie correction (scipy's), NaN when every value is tied."""
    values = np.concatenate(groups)
    n = values.size
    ranks = stats.rankdata(values)
    _, counts = np.unique(values, return_counts=True)
    ties = 1 - float((counts**3 - counts).sum()) / (n**3 - n) if n > 1 else 0.0
    if ties <= 0:
        return float("nan")
    bounds = np.cumsum([0, *(g.size for g in groups)])
    sums = np.array([ranks[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    sizes = np.array([g.size for g in groups], dtype=np.float64)
    h = 12 / (n * (n + 1)) * float((sums**2 / sizes).sum()) - 3 * (n + 1)
    return h / ties


def kruskal_test(
    groups: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float | int]:
    """Kruskal-Wallis test across ``groups`` (non-finite values dropped, empty groups left
    out) with the effect size epsilon^2 = H / (n - 1), in [0, 1], and its bootstrap CI
    (resampling within each group)."""
    groups = [g[np.isfinite(g)] for g in (np.asarray(g, dtype=np.float64) for g in groups)]
    groups = [g for g in groups if g.size]
    n = int(sum(g.size for g in groups))
    nan = float("nan")
    out: dict[str, float | int] = {"n": n, "n_groups": len(groups), "h": nan, "p": nan}
    out |= {"epsilon_sq": nan, "epsilon_sq_lo": nan, "epsilon_sq_hi": nan}
    if len(groups) < 2 or n < 3:
        return out
    h = kruskal_h(*groups)
    if not np.isfinite(h):
        return out

    def epsilon_sq(*gs: np.ndarray) -> float:
        return kruskal_h(*gs) / (n - 1)

    lo, hi = bootstrap_ci(epsilon_sq, groups, n_boot, seed, level)
    return out | {
        "h": h,
        "p": float(stats.chi2.sf(h, len(groups) - 1)),
        "epsilon_sq": h / (n - 1),
        "epsilon_sq_lo": lo,
        "epsilon_sq_hi": hi,
    }


def binned_means(
    x: Sequence[float], y: Sequence[float], bins: int = 5, max_levels: int = 10
) -> pd.DataFrame:
    """Mean and SEM of y per bin of x: one bin per value when x has at most ``max_levels``
    values (an ordinal label), else ``bins`` equal-count (quantile) bins, right-closed, the
    first closed on both sides. Non-finite pairs are left out; empty bins are not listed."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    columns = ["lo", "hi", "x_mean", "n", "mean", "sem"]
    values = np.unique(x)
    if values.size <= max_levels:
        idx, edges = np.searchsorted(values, x), np.repeat(values, 2).reshape(-1, 2)
    else:
        q = np.quantile(x, np.linspace(0, 1, bins + 1))
        idx = np.clip(np.searchsorted(q, x, side="left") - 1, 0, bins - 1)
        edges = np.column_stack([q[:-1], q[1:]])
    records = []
    for b in np.unique(idx):
        part = y[idx == b]
        sem = float(part.std(ddof=1) / np.sqrt(part.size)) if part.size > 1 else float("nan")
        records.append(
            {
                "lo": float(edges[b, 0]),
                "hi": float(edges[b, 1]),
                "x_mean": float(x[idx == b].mean()),
                "n": int(part.size),
                "mean": float(part.mean()),
                "sem": sem,
            }
        )
    return pd.DataFrame.from_records(records, columns=columns)


def per_example(
    tokens: pd.DataFrame, key: str, columns: Sequence[str], how: Sequence[str] = ("mean", "max")
) -> pd.DataFrame:
    """One row per ``key`` value (in order of first appearance): ``n_tokens`` and, per column,
    ``{column}_{how}`` over its tokens. NaN tokens (e.g. STOPS of a one-token nucleus) are
    left out, never read as 0; a column with no finite token gives NaN."""
    finite = tokens[[key]].join(tokens[list(columns)].where(np.isfinite(tokens[list(columns)])))
    grouped = finite.groupby(key, sort=False)
    out = grouped[list(columns)].agg(list(how))
    out.columns = [f"{c}_{h}" for c, h in out.columns]
    return out.reset_index().assign(n_tokens=grouped.size().to_numpy())[
        [key, "n_tokens", *out.columns]
    ]
