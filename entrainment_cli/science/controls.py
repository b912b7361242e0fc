"""Controls: does a signal say anything beyond the simplest explanation of its label?

Harder problems are longer, noisier questions are longer, and a hidden-state metric of the
last prompt token can track length alone. So every study that relates a metric to a label
reports, with the same statistic and CI:

- the model-free baselines: prompt length in tokens and in characters, and a cross-validated
  lexical baseline (TF-IDF of the prompt into ridge or logistic regression);
- the signal beyond length: the partial Spearman correlation of label and metric given prompt
  length (ranks residualized on the ranks of length), and the incremental cross-validated
  value of adding the metric to length (R^2 for a numeric label, AUROC for a two-valued one);
- a verdict per metric: ``explained by length`` when the raw CI excludes 0 and the controlled
  one does not.

Units: rows are independent unless ``groups`` names their unit (a pair, question or prompt);
then bootstrap CIs and p-values resample whole units and CV folds never split one. Pure
functions on arrays and frames, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import stats

LENGTHS = ("n_prompt_tokens", "n_prompt_chars")  # the model-free length baselines
LENGTH = "n_prompt_tokens"  # what the controlled statistics control for
MIN_CV = 20  # examples needed for the cross-validated baselines
FOLDS = 5


# -- partial Spearman --------------------------------------------------------------------------


def _residual(v: np.ndarray, z: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones_like(z), z])
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)
    return v - design @ coef


def partial_spearman(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> float:
    """Spearman correlation of x and y given z: the Pearson correlation of the ranks of x and
    y, each residualized on the ranks of z by least squares. NaN when a residual is constant."""
    rx, ry, rz = (sps.rankdata(np.asarray(v, dtype=np.float64)) for v in (x, y, z))
    ex, ey = _residual(rx, rz), _residual(ry, rz)
    denom = np.sqrt((ex * ex).sum() * (ey * ey).sum())
    return float((ex * ey).sum() / denom) if denom > 1e-12 * max(ex.size, 1) ** 2 else np.nan


def partial_test(
    x: Sequence[float],
    y: Sequence[float],
    z: Sequence[float],
    groups: Sequence | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Partial Spearman of x and y given z with N, a bootstrap CI over units and a p-value:
    Student's t on n - 3 degrees of freedom when rows are the units, else the bootstrap's
    (see :func:`stats.bootstrap_p`), so repeated rows of one unit never shrink it."""
    x, y, z = (np.asarray(v, dtype=np.float64) for v in (x, y, z))
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    x, y, z = x[keep], y[keep], z[keep]
    g = np.arange(x.size) if groups is None else np.asarray(groups)[keep]
    members = stats.unit_members(g)
    out: dict[str, Any] = {"n": int(x.size), "n_units": len(members)}
    out |= {"partial_rho": np.nan, "partial_p": np.nan, "partial_lo": np.nan, "partial_hi": np.nan}
    if x.size < 4:
        return out
    rho = partial_spearman(x, y, z)
    if not np.isfinite(rho):
        return out
    boots = stats.cluster_bootstrap(
        lambda idx: partial_spearman(x[idx], y[idx], z[idx]), members, n_boot, seed
    )
    lo, hi = stats.percentile_ci(boots, level)
    if len(members) == x.size:
        df = x.size - 3
        t = rho * np.sqrt(df / max(1 - rho * rho, 1e-300))
        p = float(2 * sps.t.sf(abs(t), df))
    else:
        p = stats.bootstrap_p(boots)
    return out | {
        "partial_rho": rho,
        "partial_p": p,
        "partial_lo": float(lo),
        "partial_hi": float(hi),
    }


# -- cross-validated values ------------------------------------------------------------------


def folds(
    y: np.ndarray, kind: str, groups: np.ndarray | None, seed: int, n_folds: int = FOLDS
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded (train, test) index pairs; a unit of ``groups`` is never split, and a two-valued
    label is stratified. Fewer folds when there are fewer units (or minority units)."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    g = np.arange(y.size) if groups is None else np.asarray(groups)
    n_units = np.unique(g).size
    if kind == "binary":
        minority = min(np.unique(g[y == v]).size for v in (0, 1))
        k = min(n_folds, minority)
        if k < 2:
            return []
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(cv.split(np.zeros(y.size), y, g))
    k = min(n_folds, n_units)
    if k < 2:
        return []
    return list(GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(y, y, g))


def out_of_fold(model, features, y: np.ndarray, splits, kind: str) -> np.ndarray:
    """Each example's prediction by a clone of ``model`` fitted without its fold (for a
    two-valued label, the probability of 1)."""
    from sklearn.base import clone

    pred = np.full(y.size, np.nan)
    for train, test in splits:
        fitted = clone(model).fit(features[train], y[train])
        pred[test] = (
            fitted.predict_proba(features[test])[:, 1]
            if kind == "binary"
            else fitted.predict(features[test])
        )
    return pred


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Out-of-sample R^2 = 1 - SS_res / SS_tot (negative when worse than the mean)."""
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else np.nan


def _score(kind: str):
    """R^2, or AUROC of the 1s (midranks: fast enough for every bootstrap resample)."""
    if kind == "binary":
        return lambda y, p: stats.auroc(p[y == 1], p[y == 0]) if 0 < y.sum() < y.size else np.nan
    return r2


def _linear(kind: str):
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "binary":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return make_pipeline(StandardScaler(), LinearRegression())


def incremental(
    y: Sequence[float],
    length: Sequence[float],
    metric: Sequence[float],
    kind: str,
    groups: Sequence | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The cross-validated value of length alone and of length plus the metric (R^2 of a
    linear regression for a numeric label; AUROC of a logistic regression for a two-valued
    0/1 one), the same folds for both, and their difference with a bootstrap CI over units
    (the out-of-fold predictions resampled, not refitted)."""
    y, length, metric = (np.asarray(v, dtype=np.float64) for v in (y, length, metric))
    keep = np.isfinite(y) & np.isfinite(length) & np.isfinite(metric)
    y, length, metric = y[keep], length[keep], metric[keep]
    g = None if groups is None else np.asarray(groups)[keep]
    name = "auroc" if kind == "binary" else "r2"
    out: dict[str, Any] = {f"cv_{name}_length": np.nan, f"cv_{name}_both": np.nan}
    out |= {"cv_gain": np.nan, "cv_gain_lo": np.nan, "cv_gain_hi": np.nan, "cv_folds": 0}
    splits = folds(y, kind, g, seed) if y.size >= MIN_CV else []
    if not splits:
        return out
    score = _score(kind)
    base = out_of_fold(_linear(kind), length[:, None], y, splits, kind)
    both = out_of_fold(_linear(kind), np.column_stack([length, metric]), y, splits, kind)
    members = stats.unit_members(np.arange(y.size) if g is None else g)
    boots = stats.cluster_bootstrap(
        lambda idx: score(y[idx], both[idx]) - score(y[idx], base[idx]), members, n_boot, seed
    )
    lo, hi = stats.percentile_ci(boots, level)
    b, f = score(y, base), score(y, both)
    return out | {
        f"cv_{name}_length": b,
        f"cv_{name}_both": f,
        "cv_gain": f - b,
        "cv_gain_lo": lo,
        "cv_gain_hi": hi,
        "cv_folds": len(splits),
    }


def lexical_baseline(
    texts: Sequence[str],
    y: Sequence[float],
    kind: str,
    groups: Sequence | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """The label predicted from the prompt's words alone: TF-IDF (unigrams and bigrams, fitted
    inside each training fold) into ridge regression (numeric label) or logistic regression
    (two-valued 0/1 label), scored out of fold with the metrics' own statistic (Spearman rho
    or AUROC, with a bootstrap CI). None with fewer than ``MIN_CV`` examples."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline

    y = np.asarray(y, dtype=np.float64)
    texts = np.asarray([str(t) for t in texts], dtype=object)
    keep = np.isfinite(y)
    y, texts = y[keep], texts[keep]
    g = None if groups is None else np.asarray(groups)[keep]
    splits = folds(y, kind, g, seed) if y.size >= MIN_CV else []
    if not splits:
        return None
    head = LogisticRegression(max_iter=1000) if kind == "binary" else Ridge(alpha=1.0)
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), head)
    pred = out_of_fold(model, texts, y, splits, kind)
    return score_prediction(pred, y, kind, g, n_boot, seed) | {"cv_folds": len(splits)}


def score_prediction(
    pred: np.ndarray, y: np.ndarray, kind: str, groups, n_boot: int, seed: int
) -> dict[str, Any]:
    """A cross-validated prediction (or any score) scored like a metric: Spearman rho with the
    label (numeric) or AUROC for the label's 1s (two-valued), with a bootstrap CI over units;
    pairs with a non-finite value are left out."""
    pred, y = np.asarray(pred, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(pred) & np.isfinite(y)
    pred, y = pred[keep], y[keep]
    groups = None if groups is None else np.asarray(groups)[keep]
    if kind == "binary":
        pos, neg = pred[y == 1], pred[y == 0]
        rank = stats.rank_test(pos, neg)
        if groups is None or np.unique(groups).size == y.size:
            lo, hi = stats.bootstrap_ci(stats.auroc, [pos, neg], n_boot, seed)
        else:  # pairs: resample them whole

            def auroc(idx: np.ndarray) -> float:
                yb, pb = y[idx], pred[idx]
                return stats.auroc(pb[yb == 1], pb[yb == 0]) if 0 < yb.sum() < yb.size else np.nan

            boots = stats.cluster_bootstrap(auroc, stats.unit_members(groups), n_boot, seed)
            lo, hi = stats.percentile_ci(boots)
            rank["p"] = stats.bootstrap_p(boots - 0.5)
        return {"statistic": "auroc", "value": rank["auroc"], "lo": float(lo), "hi": float(hi),
                "p": rank["p"], "n": int(y.size)}  # fmt: skip
    corr = stats.correlate(y, pred, groups=groups, n_boot=n_boot, seed=seed)
    return {"statistic": "spearman_rho", "value": corr["spearman_rho"], "lo": corr["spearman_lo"],
            "hi": corr["spearman_hi"], "p": corr["spearman_p"], "n": corr["n"]}  # fmt: skip


# -- the controls table ------------------------------------------------------------------------


def verdict(raw_lo: float, raw_hi: float, lo: float, hi: float) -> str:
    """'beyond length' (the controlled CI excludes 0), 'explained by length' (the raw CI does,
    the controlled one does not), 'no effect' (neither does), '' (a CI is undefined)."""
    if not all(np.isfinite([raw_lo, raw_hi, lo, hi])):
        return ""
    if lo > 0 or hi < 0:
        return "beyond length"
    if raw_lo > 0 or raw_hi < 0:
        return "explained by length"
    return "no effect"


def with_lengths(frame: pd.DataFrame, text: str = "prompt") -> pd.DataFrame:
    """``frame`` with ``n_prompt_chars`` (the length of ``text``) beside ``n_prompt_tokens``."""
    if "n_prompt_chars" in frame:
        return frame
    return frame.assign(n_prompt_chars=frame[text].astype(str).str.len())


def controls_table(
    frame: pd.DataFrame,
    label: str,
    kind: str,
    metrics: Sequence[str],
    by: Sequence[str] = ("layer", "position"),
    groups: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    note: str = "",
) -> pd.DataFrame:
    """Per group of ``by`` and metric: the raw Spearman rho of label and metric with its CI,
    the partial rho given prompt length (``LENGTH``) with CI and p (Holm and BH over the
    metric x layer x position family), the incremental cross-validated value of the metric
    over length, and the verdict; the lengths first, as rows of their own (raw only; the
    characters also given the tokens). ``label`` is numeric, or 0/1 for a two-valued
    ``kind``; ``groups`` names the unit column (pairs, questions); ``note`` says what a
    design holds fixed or manipulates."""
    records = []
    parts = frame.groupby(list(by), sort=True, dropna=False) if by else [((), frame)]
    for key, part in parts:
        keys = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        g = None if groups is None else part[groups].to_numpy()
        y = pd.to_numeric(part[label], errors="coerce").to_numpy(dtype=np.float64)
        length = part[LENGTH].to_numpy(dtype=np.float64)
        for metric in [*LENGTHS, *metrics]:
            m = part[metric].to_numpy(dtype=np.float64)
            raw = stats.correlate(y, m, groups=g, n_boot=n_boot, seed=seed)
            if metric == LENGTH:  # nothing is left of length given length
                ctrl = {"n": raw["n"], "n_units": raw["n_units"]}
                ctrl |= dict.fromkeys(
                    ["partial_rho", "partial_p", "partial_lo", "partial_hi"], np.nan
                )
                gain = {}
            else:
                ctrl = partial_test(y, m, length, g, n_boot, seed)
                gain = incremental(y, length, m, kind, g, n_boot, seed)
            records.append(
                {
                    **keys,
                    "metric": metric,
                    "kind": "baseline" if metric in LENGTHS else "metric",
                    "label": label,
                    "controlled_for": LENGTH,
                    "n": ctrl["n"],
                    "n_units": ctrl["n_units"],
                    "spearman_rho": raw["spearman_rho"],
                    "spearman_p": raw["spearman_p"],
                    "spearman_lo": raw["spearman_lo"],
                    "spearman_hi": raw["spearman_hi"],
                    **{k: v for k, v in ctrl.items() if k not in ("n", "n_units")},
                    **gain,
                    "verdict": verdict(
                        raw["spearman_lo"],
                        raw["spearman_hi"],
                        ctrl["partial_lo"],
                        ctrl["partial_hi"],
                    ),
                    "note": "; ".join(s for s in (note, stats.units_note(ctrl["n_units"])) if s),
                }
            )
    table = pd.DataFrame.from_records(records)
    if not len(table):
        return table
    return stats.adjust(table, "partial_p", rows=(table["kind"] == "metric").to_numpy())


def baselines_table(
    frame: pd.DataFrame,
    label: str,
    kind: str,
    text: str | None = "prompt",
    groups: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """The model-free baselines once per example: each length scored with the metrics' own
    statistic (Spearman rho, or AUROC for a two-valued label), and the cross-validated
    TF-IDF baseline of ``text`` where there are at least ``MIN_CV`` examples."""
    y = pd.to_numeric(frame[label], errors="coerce").to_numpy(dtype=np.float64)
    g = None if groups is None else frame[groups].to_numpy()
    records = []
    for name in LENGTHS:
        scored = score_prediction(frame[name].to_numpy(), y, kind, g, n_boot, seed)
        records.append({"baseline": name, "label": label, **scored, "cv_folds": 0})
    if text is not None:
        lexical = lexical_baseline(frame[text], y, kind, g, n_boot, seed)
        records.append(
            {"baseline": "tfidf", "label": label, **lexical}
            if lexical is not None
            else {"baseline": "tfidf", "label": label, "note": f"fewer than {MIN_CV} examples"}
        )
    return pd.DataFrame.from_records(records)


def study_controls(
    frame: pd.DataFrame,
    label: str,
    kind: str,
    metrics: Sequence[str],
    by: Sequence[str] = ("layer", "position"),
    groups: str | None = None,
    text: str | None = "prompt",
    note: str = "",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """The two control tables of a study's per-example ``frame`` (one row per example x
    ``by``): ``controls`` (:func:`controls_table`) and ``baselines`` (:func:`baselines_table`,
    on each example once)."""
    frame = with_lengths(frame)
    once = frame.drop_duplicates("id") if "id" in frame else frame
    return {
        "controls": controls_table(frame, label, kind, metrics, by, groups, n_boot, seed, note),
        "baselines": baselines_table(once, label, kind, text, groups, n_boot, seed),
    }
