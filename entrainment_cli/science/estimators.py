"""What the hidden state knows beyond a scalar metric: distribution-shift distances, a
supervised ceiling, and the multi-sample estimators of answer uncertainty.

- Shift: Mahalanobis distance (MD) to a Gaussian fitted on the reference condition and relative
  MD (RMD, Ren et al. 2021), cross-fitted over grouped folds so no example is scored by a fit
  that saw it, then AUROC of the reference against each shifted condition.
- Ceiling: a cross-validated linear probe on the saved vectors, penalty chosen by nested CV,
  outer and inner folds grouped so a pair, question or cluster never straddles train and test.
- Multi-sample: over K sampled answers of one question, semantic entropy over answer classes,
  the number of distinct classes, lexical similarity (mean pairwise ROUGE-L) and EigenScore.

Pure functions on arrays and frames, no I/O; every score is float64 whatever the input dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from . import controls

# penalties searched by the probe's inner CV: ridge alpha, and C = 1 / alpha for logistic
PENALTIES = np.logspace(-2, 5, 8)
SHIFT_DIRECTION = "higher score = more shifted"
EIGENSCORE_ALPHA = 1e-3


# -- Mahalanobis and relative Mahalanobis distance ---------------------------------------------


def gaussian_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, precision) of a Gaussian fitted to the rows of ``x`` (n, d).

    The covariance is Ledoit-Wolf shrunk (sklearn's ``LedoitWolf``) because d (576 for the
    embedded model) often exceeds n and the sample covariance is then singular. It is shrunk on
    standardized coordinates, so the target is the diagonal of the sample covariance rather
    than a multiple of the identity that a few massive-activation coordinates would set;
    covariance = D C_LW D with D = diag(std) (a constant coordinate gets std 1)."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    precision = LedoitWolf().fit((x - mean) / std).precision_
    return mean, precision / np.outer(std, std)


def mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance (x - mean)^T P (x - mean) of each row of ``x``: the MD of
    Lee et al. 2018 and Ren et al. 2021, who use the squared form (it matters for RMD, a
    difference of two)."""
    diff = np.asarray(x, dtype=np.float64) - mean
    return ((diff @ precision) * diff).sum(axis=1)


def shift_distances(
    x: np.ndarray,
    reference: np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Cross-fitted MD and RMD of every row of ``x`` (n, d); ``reference`` marks the rows of the
    reference condition. One row per input row, in order: ``fold``, ``md`` (to the reference
    fit), ``md_background`` and ``rmd`` = md - md_background.

    Rows are split into seeded grouped folds (:func:`controls.folds`, the controls' own: a
    group never straddles two); the rows of fold k, reference or shifted, are scored by the
    reference fit on the reference rows outside fold k, and by the background fit on every
    row outside fold k (all conditions: Ren et al.'s background model
    of all the data, which RMD subtracts so that what is common to every condition, e.g. the
    prompt template, does not count as shift). So no example is ever scored by a fit that saw
    it, every score comes from a fit of about the same size (a held-out MD grows as the fit
    shrinks, so mixing fit sizes would bias the comparison), and both members of a pair
    (same group) are scored by one fit. Higher = farther from the reference. A row with a
    non-finite value is in no fit and scores NaN (counted by :func:`shift_auroc`).
    """
    x = np.asarray(x, dtype=np.float64)
    reference = np.asarray(reference, dtype=bool)
    splits = controls.folds(np.zeros(len(x)), "numeric", groups, seed, folds)
    if not splits:
        raise ValueError("cross-fitting needs at least 2 groups")
    fold = np.full(len(x), -1, dtype=np.int64)
    for k, (_, test) in enumerate(splits):
        fold[test] = k
    md = np.full(len(x), np.nan)
    background = np.full(len(x), np.nan)
    finite = np.isfinite(x).all(axis=1)
    for k in range(len(splits)):
        test, train = (fold == k) & finite, (fold != k) & finite
        if (train & reference).sum() < 2:
            raise ValueError(f"fold {k} leaves fewer than 2 finite reference rows to fit")
        md[test] = mahalanobis(x[test], *gaussian_fit(x[train & reference]))
        background[test] = mahalanobis(x[test], *gaussian_fit(x[train]))
    return pd.DataFrame(
        {"fold": fold, "md": md, "md_background": background, "rmd": md - background}
    )


# -- AUROC of the reference against each shifted condition ----------------------------------


def shift_auroc(
    frame: pd.DataFrame,
    scores: Sequence[str],
    condition: str,
    reference: object,
    groups: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per score column and shifted condition (every value of ``condition`` but ``reference``,
    in order of first appearance): AUROC of the reference rows against that condition's rows,
    the shifted condition positive and a higher score meaning more shifted (``positive``,
    ``direction``), with its bootstrap CI and p as the controls score a prediction
    (:func:`controls.score_prediction`: over the units of the ``groups`` column, a pair drawn
    whole, else over rows by class). Non-finite scores are left out (``n_nonfinite``)."""
    cond = frame[condition].to_numpy()
    shifted = [c for c in dict.fromkeys(frame[condition].dropna().tolist()) if c != reference]
    nan = float("nan")
    records = []
    for score in scores:
        values = frame[score].to_numpy(dtype=np.float64)
        for c in shifted:
            rows = (cond == reference) | (cond == c)
            keep = rows & np.isfinite(values)
            positive = (cond[keep] == c).astype(np.float64)
            units = None if groups is None else frame[groups].to_numpy()[keep]
            both = 0 < positive.sum() < positive.size
            scored = (
                controls.score_prediction(values[keep], positive, "binary", units, n_boot, seed)
                if both
                else {"value": nan, "lo": nan, "hi": nan, "p": nan}
            )
            records.append(
                {
                    "score": score,
                    "reference": str(reference),
                    "positive": str(c),
                    "direction": SHIFT_DIRECTION,
                    "n_reference": int((positive == 0).sum()),
                    "n_shifted": int(positive.sum()),
                    "n_nonfinite": int((rows & ~np.isfinite(values)).sum()),
                    "mean_reference": _mean(values[keep][positive == 0]),
                    "mean_shifted": _mean(values[keep][positive == 1]),
                    "auroc": scored["value"],
                    "auroc_lo": scored["lo"],
                    "auroc_hi": scored["hi"],
                    "p": scored["p"],
                }
            )
    return pd.DataFrame.from_records(records)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


# -- the supervised ceiling: a cross-validated linear probe ------------------------------------


def _probe_model(binary: bool, inner: list, seed: int):
    """Standardize, then ridge (numeric) or L2 logistic regression with balanced class weights
    (two-valued), the penalty chosen over :data:`PENALTIES` on the ``inner`` splits: R^2 for
    ridge, ROC-AUC for logistic."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if binary:
        model = LogisticRegression(class_weight="balanced", max_iter=5000, random_state=seed)
        grid = {"logisticregression__C": list(1 / PENALTIES)}
        scoring = "roc_auc"
    else:
        model, grid, scoring = Ridge(), {"ridge__alpha": list(PENALTIES)}, "r2"
    return GridSearchCV(make_pipeline(StandardScaler(), model), grid, cv=inner, scoring=scoring)


def linear_probe(
    x: np.ndarray,
    y: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    folds: int = 5,
    inner_folds: int = 3,
    seed: int = 0,
    n_boot: int = 1000,
) -> tuple[dict, np.ndarray]:
    """(record, out-of-fold predictions): how well a linear read-out of the vectors ``x`` (n, d)
    predicts the label ``y``, the ceiling for any scalar metric of the same vectors.

    ``y`` with exactly two distinct values is binary (positive = the larger, as in
    ``labels.binary_values``), else numeric. Outer folds are the controls' seeded grouped
    folds (:func:`controls.folds`, stratified for a binary label, fewer when there are fewer
    groups of a class); in each training part the penalty is chosen by an inner grouped CV of
    that part alone, so the test fold informs neither the weights, the standardization nor the
    penalty. The out-of-fold predictions (ridge predictions; logistic log-odds) are scored as
    the controls score the TF-IDF baseline, the metrics' own statistic
    (:func:`controls.score_prediction`: ``statistic`` Spearman rho or AUROC of the positive,
    ``value``, ``lo``, ``hi``, ``p``; the bootstrap resamples ``groups`` when given), so the
    ceiling, the baselines and the metrics read on one scale. Rows with a non-finite label or
    vector are left out (``n_dropped``, NaN prediction); too few groups or too few of a class
    give a ``skipped`` reason instead of scores.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    keep = np.isfinite(y) & np.isfinite(x).all(axis=1)
    pred = np.full(len(y), np.nan)
    xs, ys, gs = x[keep], y[keep], g[keep]
    values = np.unique(ys)
    kind = "binary" if values.size == 2 else "numeric"
    record: dict = {
        "kind": kind,
        "n_dropped": int((~keep).sum()),
        "n_groups": int(np.unique(gs).size),
        "dim": int(x.shape[1]),
        "seed": int(seed),
    }
    target = (ys == values[-1]).astype(np.float64) if kind == "binary" else ys
    outer = controls.folds(target, kind, gs, seed, folds) if values.size >= 2 else []
    if not outer:
        return record | {"folds": 0, "skipped": "need 2 groups of each class to cross-fit"}, pred
    penalties = []
    oof = np.full(ys.size, np.nan)
    for f, (train, test) in enumerate(outer):
        inner = controls.folds(target[train], kind, gs[train], seed, inner_folds)
        if not inner:
            return record | {"folds": 0, "skipped": f"fold {f} leaves too few groups to tune"}, pred
        search = _probe_model(kind == "binary", inner, seed).fit(xs[train], target[train])
        chosen = float(next(iter(search.best_params_.values())))
        penalties.append(1 / chosen if kind == "binary" else chosen)  # alpha, for either model
        model = search.best_estimator_
        oof[test] = (
            model.decision_function(xs[test]) if kind == "binary" else model.predict(xs[test])
        )
    pred[keep] = oof
    record |= {"folds": len(outer), "inner_folds": inner_folds, "penalty_by_fold": penalties}
    if kind == "binary":
        record |= {"positive": float(values[-1]), "negative": float(values[0])}
    units = None if groups is None else gs
    return record | controls.score_prediction(oof, target, kind, units, n_boot, seed), pred


# -- multi-sample estimators over K answers of one question ------------------------------------


def semantic_entropy(
    classes: Sequence, logprobs: Sequence[float] | np.ndarray | None = None
) -> float:
    """Entropy (nats) of the answer-equivalence classes of K sampled answers (Farquhar et al.
    2024): the answers' spread over meanings rather than over wordings.

    Without ``logprobs``, the discrete version: p_c = (answers in class c) / K. With one
    log-likelihood per answer (Farquhar et al. pass the mean token log-prob), the
    probability-weighted version of their code: each answer's probability is normalized over
    the K answers, p_c sums its class's answers, and H = -sum_c p_c ln p_c (repeated answers
    count each time they were sampled)."""
    inverse, _ = pd.factorize(pd.Series(list(classes), dtype=object), use_na_sentinel=False)
    if logprobs is None:
        p = np.bincount(inverse) / inverse.size
        return float(-(p * np.log(p)).sum())
    lp = np.asarray(logprobs, dtype=np.float64)
    lp = lp - logsumexp(lp)
    log_pc = np.array([logsumexp(lp[inverse == c]) for c in range(inverse.max() + 1)])
    return float(-(np.exp(log_pc) * log_pc).sum())


def distinct_answers(classes: Sequence) -> int:
    """Number of distinct answer-equivalence classes among the K answers (LM-Polygraph's
    NumSemSets with exact classes): 1 when every sample agrees, K when none do."""
    return int(pd.Series(list(classes), dtype=object).nunique(dropna=False))


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two token sequences, bit-parallel
    (Crochemore et al. 2001): O(len(b)) big-integer steps instead of a len(a) x len(b) table,
    so long chain-of-thought answers stay cheap."""
    masks: dict = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts on whitespace tokens: LCS / len(a) and LCS / len(b) combined
    harmonically (beta = 1), 0 when either is empty. Symmetric. rouge_score, which LM-Polygraph
    calls, also lowercases, drops punctuation and stems; pass text normalized that way to
    match it."""
    ta, tb = a.split(), b.split()
    lcs = lcs_length(ta, tb) if ta and tb else 0
    if lcs == 0:
        return 0.0
    recall, precision = lcs / len(ta), lcs / len(tb)
    return 2 * precision * recall / (precision + recall)


def lexical_similarity(answers: Sequence[str]) -> float:
    """Mean ROUGE-L F1 over the K (K - 1) / 2 pairs of answers (LM-Polygraph's
    LexicalSimilarity, whose uncertainty is minus this): 1 when all are equal. NaN if K < 2."""
    pairs = [
        rouge_l(answers[i], answers[j])
        for i in range(len(answers))
        for j in range(i + 1, len(answers))
    ]
    return float(np.mean(pairs)) if pairs else float("nan")


def eigenscore(embeddings: np.ndarray, alpha: float = EIGENSCORE_ALPHA) -> float:
    """EigenScore (INSIDE, Chen et al. ICLR 2024) of K answer embeddings Z (K, d):
    (1/K) sum_i ln lambda_i of Z J_d Z^T + alpha I_K, J_d = I_d - 1 1^T / d.

    J_d centers each embedding over its own d coordinates, as in the paper (and torch.cov of
    the K x d matrix in the authors' code); the K x K matrix is their sentence covariance,
    whose log-determinant measures the volume the answers span: low when they agree, high
    when they scatter. The paper's form: no 1/(d - 1) (the code's torch.cov has one, and
    log10), which shifts the score by a constant where eigenvalues dominate alpha. The authors
    embed an answer by the middle layer's hidden state at its last token."""
    z = np.asarray(embeddings, dtype=np.float64)
    z = z - z.mean(axis=1, keepdims=True)
    eig = np.linalg.eigvalsh(z @ z.T + alpha * np.eye(len(z)))
    return float(np.log(eig).mean())
