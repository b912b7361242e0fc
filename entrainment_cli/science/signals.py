"""Is a confidence signal any better than the standard ones? Per-example baselines, and the
uncertainty-quality metrics of every signal against correctness (LM-Polygraph's set).

Baselines come from per-token tables a run already saved (no model call): mean token
log-prob, sequence log-prob (log of the maximum sequence probability), perplexity, mean and
max token entropy, mean nucleus size, each over a scope of tokens (the answer's, or the whole
generation); and the model-free ones, prompt and response length in tokens (a long answer is
often a wrong one: a signal that does not beat length says little). Every per-token quantity
of the table is also averaged per scope, so STOPS, LogTokU and per-token sparsity are scored
beside the baselines.

Metrics take errors as the positive class and an uncertainty score ``u`` that rises towards
errors: a signal whose low values mean "wrong" (log-prob, STOPS) is negated first, and its
declared direction is reported. Ties in ``u`` are broken by expectation over random order, so
a constant signal scores exactly like chance. Bootstrap CIs resample examples; one seed gives
every signal of a run the same resamples. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

# value -> direction that predicts an error ("higher": high values mean a likely error)
BASELINES = {
    "mean_logprob": "lower",
    "sequence_logprob": "lower",
    "perplexity": "higher",
    "mean_entropy": "higher",
    "max_entropy": "higher",
    "mean_nucleus_size": "higher",
    "length": "higher",  # prompt_ and response_: tokens, the model-free baseline
}
# per-token quantities averaged per scope, with the direction that predicts an error
TOKEN_MEANS = {
    "topp_entropy": "higher",
    "topp_entropy_norm": "higher",
    "stops": "lower",  # near-synonyms in the nucleus: whichever is sampled, the meaning holds
    "logtoku_au": "higher",
    "logtoku_eu": "higher",
}
# multi-sample estimators over K sampled answers (``samples_<name>``, ``--generations``)
SAMPLE_ESTIMATORS = {
    "semantic_entropy": "higher",
    "semantic_entropy_weighted": "higher",
    "distinct_answers": "higher",
    "lexical_similarity": "lower",  # answers that agree word for word: likely right
    "eigenscore": "higher",
}
METRICS = ["roc_auc", "pr_auc", "prr", "prr_50", "aurc", "ece", "brier"]
ECE_BINS = 10


def per_example(
    tokens: pd.DataFrame, key: str, scopes: Mapping[str, Mapping[object, Sequence[int]] | None]
) -> pd.DataFrame:
    """One row per example of ``tokens`` (``key``, ``step`` and per-token columns): for each
    scope, the baselines and the mean of each known per-token quantity and hidden-state
    metric (``h<layer>_<metric>``) over that scope's steps.

    ``scopes`` maps a scope name to {example: steps}, or to None for every step of the
    example. An example with no step in a scope gets NaN there; non-finite per-token values
    are left out of means and maxima (a K = 1 token has no STOPS), never read as 0.
    """
    columns = [c for c in tokens.columns if c in TOKEN_MEANS or _hidden(c)]
    out = {}
    for scope, steps in scopes.items():
        part = tokens if steps is None else _select(tokens, key, steps)
        groups = part.groupby(key, sort=False)
        frame = pd.DataFrame(index=pd.Index(tokens[key].unique(), name=key))
        if "logprob" in part:
            lp = groups["logprob"]
            frame["mean_logprob"] = lp.mean()
            frame["sequence_logprob"] = lp.sum(min_count=1)
            frame["perplexity"] = np.exp(-frame["mean_logprob"])
        if "entropy" in part:
            frame["mean_entropy"] = groups["entropy"].mean()
            frame["max_entropy"] = groups["entropy"].max()
        if "nucleus_size" in part:
            frame["mean_nucleus_size"] = groups["nucleus_size"].mean()
        for col in columns:
            finite = part[col].where(np.isfinite(part[col]))
            frame[col] = finite.groupby(part[key], sort=False).mean()
        out[scope] = frame.add_prefix(f"{scope}_")
    return pd.concat(out.values(), axis=1).reset_index()


def _hidden(column: str) -> bool:
    return (
        column.startswith("h") and "_" in column and column[1:].split("_")[0].lstrip("-").isdigit()
    )


def _select(tokens: pd.DataFrame, key: str, steps: Mapping[object, Sequence[int]]) -> pd.DataFrame:
    pairs = pd.DataFrame(
        [(k, int(s)) for k, ss in steps.items() for s in ss], columns=[key, "step"]
    ).astype({key: tokens[key].dtype})
    return tokens.merge(pairs, on=[key, "step"])


def describe(signal: str) -> tuple[str, str | None]:
    """(kind, direction) of a signal named ``<scope>_<quantity>``: kind is ``baseline`` (the
    standard signals), ``token`` (a per-token confidence signal's mean), ``sparsity`` (a
    hidden-state metric), ``samples`` (a multi-sample estimator) or ``other``; direction says
    which values predict an error, None when unknown."""
    from .sparsity import SPARSER

    quantity = signal.split("_", 1)[1] if "_" in signal else signal
    if quantity in BASELINES:
        return "baseline", BASELINES[quantity]
    if quantity in TOKEN_MEANS:
        return "token", TOKEN_MEANS[quantity]
    if signal.startswith("samples_") and quantity in SAMPLE_ESTIMATORS:
        return "samples", SAMPLE_ESTIMATORS[quantity]
    metric = quantity.split("_", 1)[1] if _hidden(quantity) else None
    if metric in SPARSER:  # sparser = harder, so the sparser side predicts an error
        return "sparsity", "higher" if SPARSER[metric] > 0 else "lower"
    return "other", None


# -- the metrics ---------------------------------------------------------------------------------


def _harmonic(n: int) -> np.ndarray:
    """H[m] = 1 + 1/2 + ... + 1/m for m = 0..n (H[0] = 0)."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


def _grouped(u: np.ndarray, err: np.ndarray, w: np.ndarray):
    """Per tie group of ``u`` (ascending): weighted errors and totals, shape (B, groups)."""
    order = np.argsort(u, kind="stable")
    us = u[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(us)) + 1])
    ws = w[:, order]
    total = np.add.reduceat(ws, starts, axis=1)
    errors = np.add.reduceat(ws * err[order], starts, axis=1)
    return errors, total


def _ranking_metrics(u: np.ndarray, err: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """ROC-AUC, PR-AUC (average precision), AURC and PRR for each row of integer weights
    ``w`` (B, n): a weight k counts the example k times, as in a bootstrap resample. NaN where
    a row has no error or no correct answer."""
    errors, total = _grouped(u, err, w)
    correct = total - errors
    n = total.sum(axis=1)
    e = errors.sum(axis=1)
    c = n - e
    both = (e > 0) & (c > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        # P(u of an error > u of a correct answer), ties counting 1/2
        below = np.cumsum(correct, axis=1) - correct
        roc = (errors * (below + 0.5 * correct)).sum(axis=1) / (e * c)
        # average precision with errors positive: thresholds at each distinct u, descending
        tp = np.cumsum(errors[:, ::-1], axis=1)
        seen = np.cumsum(total[:, ::-1], axis=1)
        precision = np.where(seen > 0, tp / np.maximum(seen, 1), 0.0)
        ap = (errors[:, ::-1] * precision).sum(axis=1) / e
        # risk-coverage: keep the k least uncertain, k = 1..n; within a tie group the errors
        # arrive at the group's mean rate (the expectation over orders of the tied examples)
        h = _harmonic(int(n.max()))
        ends = np.cumsum(total, axis=1).astype(np.int64)
        begins = ends - total.astype(np.int64)
        before = np.cumsum(errors, axis=1) - errors
        rate = np.where(total > 0, errors / np.maximum(total, 1), 0.0)
        dh = h[ends] - h[begins]
        aurc = (before * dh + rate * (total - begins * dh)).sum(axis=1) / n
        oracle = ((n - c) - c * (h[n.astype(np.int64)] - h[c.astype(np.int64)])) / n
        random = e / n
        prr = (random - aurc) / (random - oracle)
    nan = np.nan
    return {
        "roc_auc": np.where(both, roc, nan),
        "pr_auc": np.where(both, ap, nan),
        "aurc": np.where(both, aurc, nan),
        "prr": np.where(both, prr, nan),
        "prr_50": _rejection_prr(errors, total, 0.5),
    }


def _rejection_prr(errors: np.ndarray, total: np.ndarray, max_rejection: float) -> np.ndarray:
    """PRR over rejecting at most ``max_rejection`` of the examples, per row of the tie
    groups of :func:`_grouped`: LM-Polygraph's ``PredictionRejectionArea(max_rejection)``,
    whose curves keep k = n - r + 1 .. n examples with r = int(max_rejection n) (rejecting 0
    .. r - 1) and are averaged over those r points, the oracle's and random's alike. It tells
    how well a signal ranks the examples one would really reject (a half at most), where the
    full PRR also counts keeping just the few most confident. Ties as in the full PRR (errors
    of a tie group arrive at its mean rate); NaN with no error, no correct answer, or r < 2
    (the curves then meet at their one point)."""
    n = total.sum(axis=1)
    e = errors.sum(axis=1)
    c = n - e
    r = np.floor(max_rejection * n)
    m = (n - r)[:, None]  # the curves start after keeping m examples
    h = _harmonic(int(n.max()))
    ends = np.cumsum(total, axis=1)
    begins = ends - total
    before = np.cumsum(errors, axis=1) - errors
    rate = np.where(total > 0, errors / np.maximum(total, 1), 0.0)
    # sum over kept k in (a, b] of (before + rate (k - begins)) / k, the group's expected risk
    a, b = np.maximum(begins, m).astype(np.int64), np.maximum(ends, m).astype(np.int64)
    area = ((before - rate * begins) * (h[b] - h[a]) + rate * (b - a)).sum(axis=1) / r
    # the oracle keeps the c correct answers first: risk (k - c) / k once k > c
    start = np.maximum(n - r, c).astype(np.int64)
    oracle = ((n - start) - c * (h[n.astype(np.int64)] - h[start])) / r
    random = e / n
    with np.errstate(invalid="ignore", divide="ignore"):
        prr = (random - area) / (random - oracle)
    return np.where((e > 0) & (c > 0) & (r >= 2), prr, np.nan)


def roc_auc(u: Sequence[float], err: Sequence[int]) -> float:
    """P(u of an error > u of a correct answer), ties 1/2: ROC-AUC with errors positive."""
    return float(_one(u, err)["roc_auc"])


def pr_auc(u: Sequence[float], err: Sequence[int]) -> float:
    """Average precision for errors as the positive class (the area under the step-wise
    precision-recall curve, as scikit-learn's ``average_precision_score``)."""
    return float(_one(u, err)["pr_auc"])


def aurc(u: Sequence[float], err: Sequence[int]) -> float:
    """Area under the risk-coverage curve: mean over k = 1..n of the error rate among the k
    least uncertain examples (Geifman et al. 2019); lower is better."""
    return float(_one(u, err)["aurc"])


def prr(u: Sequence[float], err: Sequence[int], max_rejection: float = 1.0) -> float:
    """Prediction-rejection ratio: (AURC_random - AURC) / (AURC_random - AURC_oracle), i.e. the
    area between the random and the signal's rejection curves over that between random and
    the oracle (Malinin et al. 2017; LM-Polygraph). 1 = oracle, 0 = chance, < 0 worse.
    ``max_rejection`` < 1: the curves only up to rejecting that share (:func:`_rejection_prr`;
    0.5 is the table's ``prr_50``)."""
    if max_rejection == 1:
        return float(_one(u, err)["prr"])
    u = np.asarray(u, dtype=np.float64)
    errors, total = _grouped(u, np.asarray(err, dtype=np.float64), np.ones((1, u.size)))
    return float(_rejection_prr(errors, total, max_rejection)[0])


def _one(u, err) -> dict[str, float]:
    u = np.asarray(u, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64)
    return {k: v[0] for k, v in _ranking_metrics(u, err, np.ones((1, u.size))).items()}


def risk_coverage(u: Sequence[float], err: Sequence[int]) -> pd.DataFrame:
    """The risk-coverage curve: for k = 1..n kept (least uncertain first), coverage k/n and
    the expected error rate among them (ties broken at random, in expectation)."""
    u = np.asarray(u, dtype=np.float64)
    err = np.asarray(err, dtype=np.float64)
    errors, total = _grouped(u, err, np.ones((1, u.size)))
    rate = np.repeat(errors[0] / total[0], total[0].astype(np.int64))
    k = np.arange(1, u.size + 1)
    return pd.DataFrame({"coverage": k / u.size, "risk": np.cumsum(rate) / k})


def oracle_random_curves(err: Sequence[int]) -> pd.DataFrame:
    """The risk-coverage curves of the oracle (every correct answer kept first) and of a random
    order (the error rate at every coverage), in the layout of :func:`risk_coverage`."""
    err = np.asarray(err, dtype=np.float64)
    k = np.arange(1, err.size + 1)
    oracle = risk_coverage(err, err).assign(signal="oracle")
    random = pd.DataFrame({"coverage": k / err.size, "risk": err.mean(), "signal": "random"})
    return pd.concat([oracle, random], ignore_index=True)


def calibrated(u: Sequence[float], correct: Sequence[int], seed: int, folds: int = 5) -> np.ndarray:
    """Cross-fitted Platt scaling: P(correct) for each example from a logistic regression on the
    standardized signal fitted on the other folds (stratified, shuffled with ``seed``; folds
    lowered to the smaller class's count). NaN everywhere when a class has fewer than 2."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(u, dtype=np.float64)[:, None]
    y = np.asarray(correct, dtype=np.int64)
    k = min(folds, int(y.sum()), int((1 - y).sum()))
    p = np.full(y.size, np.nan)
    if k < 2:
        return p
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression())
        p[test] = model.fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return p


def _calibration_metrics(p: np.ndarray, correct: np.ndarray, w: np.ndarray) -> dict:
    """ECE (``ECE_BINS`` equal-width bins of p: sum of |accuracy - mean p| weighted by the bin's
    share) and Brier score (mean (p - correct)^2) per row of weights ``w``."""
    n = w.sum(axis=1)
    brier = (w * (p - correct) ** 2).sum(axis=1) / n
    bins = np.minimum((p * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    ece = np.zeros(w.shape[0])
    for b in range(ECE_BINS):
        inside = bins == b
        if inside.any():
            wb = w[:, inside]
            gap = (wb * (correct[inside] - p[inside])).sum(axis=1)
            ece += np.abs(gap) / n
    return {"ece": ece, "brier": brier}


def ece(p: Sequence[float], correct: Sequence[int]) -> float:
    """Expected calibration error of probabilities ``p`` of being correct (Naeini et al. 2015)."""
    return _calibration(p, correct)["ece"]


def brier(p: Sequence[float], correct: Sequence[int]) -> float:
    """Brier score of probabilities ``p`` of being correct (Brier 1950)."""
    return _calibration(p, correct)["brier"]


def _calibration(p, correct) -> dict[str, float]:
    p = np.asarray(p, dtype=np.float64)
    metrics = _calibration_metrics(p, np.asarray(correct, float), np.ones((1, p.size)))
    return {k: float(v[0]) for k, v in metrics.items()}


def score_signals(
    frame: pd.DataFrame,
    signals: Sequence[str],
    correct: str = "correct",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per signal, best PRR first: every metric with its percentile bootstrap CI, the
    degenerate cases named in ``note``, and ``prr_gain`` over the best baseline; the
    risk-coverage curves of every signal and of the oracle and random orders).

    A signal with no declared direction (see :func:`describe`) is read as "higher values
    predict an error" and says so. Non-finite values are counted (``n_nonfinite``) and left
    out for that signal only. The bootstrap draws the same resamples for signals defined on
    the same examples; ECE and Brier resample the cross-fitted predictions (the calibration
    is not refitted per resample). ``prr_gain`` is PRR minus that of the baseline with the
    best PRR (``vs_baseline``), on the examples where both are finite, with a paired
    bootstrap CI: above 0 at the CI's lower end, the signal beats every standard one.
    """
    y = frame[correct].to_numpy(dtype=np.float64)
    tail = (1 - level) / 2 * 100
    resamples: dict[bytes, np.ndarray] = {}

    def weights(keep: np.ndarray) -> np.ndarray:  # drawn once per set of examples
        if keep.tobytes() not in resamples:
            n = int(keep.sum())
            draw = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=n_boot)
            resamples[keep.tobytes()] = draw.astype(np.float64)
        return resamples[keep.tobytes()]

    def ci(values: np.ndarray) -> tuple[float, float]:
        lo, hi = np.nanpercentile(values, [tail, 100 - tail])
        return float(lo), float(hi)

    rows, curves, oriented = [], [], {}
    for name in signals:
        kind, declared = describe(name)
        sign = -1.0 if declared == "lower" else 1.0
        oriented[name] = sign * frame[name].to_numpy(dtype=np.float64)
        keep = np.isfinite(oriented[name])
        u, ok = oriented[name][keep], y[keep]
        err = 1.0 - ok
        n, n_err = int(keep.sum()), int(err.sum())
        row = {
            "signal": name,
            "kind": kind,
            "direction": declared or "higher (assumed)",
            "n": n,
            "n_nonfinite": int((~keep).sum()),
            "n_errors": n_err,
            "error_rate": n_err / n if n else np.nan,
            "note": _note(n, n_err, u),
        }
        for m in METRICS:
            row |= {m: np.nan, f"{m}_lo": np.nan, f"{m}_hi": np.nan}
        if 0 < n_err < n:
            w = weights(keep)
            point = _ranking_metrics(u, err, np.ones((1, n)))
            boot = _ranking_metrics(u, err, w)
            p = calibrated(u, ok, seed)
            if np.isfinite(p).all():
                point |= _calibration_metrics(p, ok, np.ones((1, n)))
                boot |= _calibration_metrics(p, ok, w)
            for m in METRICS:
                if m in point:
                    lo, hi = ci(boot[m])
                    row |= {m: float(point[m][0]), f"{m}_lo": lo, f"{m}_hi": hi}
            curves.append(risk_coverage(u, err).assign(signal=name))
        rows.append(row)
    table = pd.DataFrame.from_records(rows)
    if len(table):
        table = table.sort_values("prr", ascending=False, na_position="last", kind="stable")
        table = table.reset_index(drop=True)
        table = table.join(_gains(table, oriented, y, weights, ci))
    columns = ["signal", "coverage", "risk"]
    if not curves:
        return table, pd.DataFrame(columns=columns)
    curves.append(oracle_random_curves(1.0 - y))  # over every example, beside the signals'
    return table, pd.concat(curves, ignore_index=True)[columns]


def _gains(table, oriented, y, weights, ci) -> pd.DataFrame:
    """Per row of ``table``: the best baseline's name, and PRR(signal) - PRR(baseline) with a
    paired bootstrap CI over the examples both have; NaN where either is undefined."""
    baselines = table[(table["kind"] == "baseline") & np.isfinite(table["prr"])]
    gains = ["prr_gain", "prr_gain_lo", "prr_gain_hi"]
    out = pd.DataFrame(np.nan, index=table.index, columns=gains)
    out.insert(0, "vs_baseline", None)
    if baselines.empty:
        return out
    best = baselines["signal"].iloc[0]  # the table is sorted by PRR
    for i, name in table["signal"].items():
        keep = np.isfinite(oriented[name]) & np.isfinite(oriented[best])
        err = 1.0 - y[keep]
        out.loc[i, "vs_baseline"] = best
        if not 0 < err.sum() < err.size:
            continue
        w = weights(keep)
        gain = [
            _ranking_metrics(oriented[name][keep], err, ws)["prr"]
            - _ranking_metrics(oriented[best][keep], err, ws)["prr"]
            for ws in (np.ones((1, err.size)), w)
        ]
        out.loc[i, gains] = [float(gain[0][0]), *ci(gain[1])]
    return out


def _note(n: int, n_err: int, u: np.ndarray) -> str:
    """Why some metrics are missing, or a warning about what they mean."""
    if n == 0:
        return "no finite value: signal undefined for every example"
    if n_err == 0:
        return f"all {n} answers correct: no error to detect, metrics undefined"
    if n_err == n:
        return f"all {n} answers wrong: no correct answer to keep, metrics undefined"
    notes = []
    if np.ptp(u) == 0:
        notes.append("constant signal: ranks like chance")
    if min(n_err, n - n_err) < 2:
        notes.append("fewer than 2 of a class: calibration undefined")
    return "; ".join(notes)
