"""Do per-prompt confidence metrics separate correct from incorrect answers?

Rank statistics (Mann-Whitney U, AUROC), reliability bins and cross-validated classifiers
on one row per prompt. Labels may be bool, 0/1 or the upstream ``yes`` / ``no`` strings
(spec 5.4); ``buggy`` and missing labels are left out, never read as incorrect. Classifiers
are judged by AUROC and balanced accuracy next to the majority-class baseline, because
upstream's 96% "accuracy" was the majority rate of a 3.5%-correct set (spec 6, 8.4).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

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
