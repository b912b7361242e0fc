"""What the hidden state knows (science/estimators.py) and PRR at 50% maximum rejection
(science/signals.py), each against an independent computation: numpy's inverse and
log-determinant, scikit-learn, scipy, brute force, or a worked example."""

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import entropy
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from entrainment_cli.science import controls, signals
from entrainment_cli.science import estimators as est

# -- Mahalanobis and relative Mahalanobis distance ---------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(200, 8), (40, 96)])  # n > d, and d > n (singular sample)
def test_mahalanobis_matches_numpy_inverse_of_the_same_covariance(n, d):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) * rng.uniform(0.1, 30, d) + rng.normal(size=d)
    y = rng.normal(size=(25, d)) * 3
    mu, sd = x.mean(axis=0), x.std(axis=0)
    # the documented covariance: Ledoit-Wolf on standardized coordinates, scaled back
    cov = LedoitWolf().fit((x - mu) / sd).covariance_ * np.outer(sd, sd)
    diff = y - mu
    expected = np.array([v @ np.linalg.inv(cov) @ v for v in diff])
    got = est.mahalanobis(y, *est.gaussian_fit(x))
    assert got == pytest.approx(expected, rel=1e-8)
    assert est.mahalanobis(mu[None], *est.gaussian_fit(x)) == pytest.approx([0.0], abs=1e-12)


def _conditions(n_pairs: int, d: int, shift: float, seed: int = 0):
    """Pairs of a reference row and a shifted row; the shifted one moved by ``shift`` along
    one coordinate."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(n_pairs, d))
    moved = rng.normal(size=(n_pairs, d))
    moved[:, 0] += shift
    x = np.vstack([ref, moved])
    condition = np.array(["ref"] * n_pairs + ["shifted"] * n_pairs)
    pair = np.concatenate([np.arange(n_pairs), np.arange(n_pairs)])
    return x, condition, pair


def test_cross_fitting_never_scores_a_row_with_a_fit_that_saw_it():
    x, condition, pair = _conditions(30, 12, shift=1.0)
    reference = condition == "ref"
    out = est.shift_distances(x, reference, groups=pair, folds=5, seed=3)
    assert list(out.columns) == ["fold", "md", "md_background", "rmd"]
    assert sorted(out["fold"].unique()) == [0, 1, 2, 3, 4]
    # a pair never straddles folds, so both of its rows are scored by one fit that saw neither
    assert (
        (pd.DataFrame({"pair": pair, "fold": out["fold"]}).groupby("pair").nunique() == 1)
        .all()
        .all()
    )
    for k in range(5):
        test = out["fold"].to_numpy() == k
        fit_ref = est.gaussian_fit(x[~test & reference])
        fit_all = est.gaussian_fit(x[~test])
        got = out.loc[test, ["md", "md_background"]].to_numpy()
        assert got[:, 0] == pytest.approx(est.mahalanobis(x[test], *fit_ref))
        assert got[:, 1] == pytest.approx(est.mahalanobis(x[test], *fit_all))
    assert out["rmd"].to_numpy() == pytest.approx((out["md"] - out["md_background"]).to_numpy())


def test_a_nonfinite_vector_is_in_no_fit_and_scores_nan():
    x, condition, pair = _conditions(20, 6, shift=1.0)
    x[3, 2] = np.nan
    out = est.shift_distances(x, condition == "ref", groups=pair, seed=0)
    assert out.loc[3, ["md", "md_background", "rmd"]].isna().all()
    assert np.isfinite(out.drop(index=3)[["md", "rmd"]].to_numpy()).all()
    fold = out["fold"].to_numpy()  # a fold whose reference fit would have held row 3:
    k = fold[0] if fold[0] != fold[3] else fold[1]
    rows = fold == k
    train = (fold != k) & (condition == "ref") & (np.arange(40) != 3)
    expected = est.mahalanobis(x[rows], *est.gaussian_fit(x[train]))
    assert out.loc[rows, "md"].to_numpy() == pytest.approx(expected)
    frame = out.assign(condition=condition)
    row = est.shift_auroc(frame, ["md"], "condition", "ref", n_boot=20).iloc[0]
    assert row.n_nonfinite == 1 and row.n_reference == 19


def test_cross_fitting_removes_the_in_sample_advantage_of_the_reference():
    """Both conditions drawn from one correlated distribution, d > n: scored in sample, the
    reference looks closer to its own fit (AUROC near 1); cross-fitted, it sits at chance."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 32)) @ rng.normal(size=(32, 64)) + rng.normal(0, 0.3, (80, 64))
    condition = np.repeat(["ref", "same"], 40)
    pair = np.tile(np.arange(40), 2)
    reference = condition == "ref"
    in_sample = est.mahalanobis(x, *est.gaussian_fit(x[reference]))
    assert roc_auc_score(~reference, in_sample) > 0.85
    crossed = est.shift_distances(x, reference, groups=pair, seed=0)
    frame = crossed.assign(condition=condition, pair=pair)
    table = est.shift_auroc(frame, ["md", "rmd"], "condition", "ref", groups="pair", n_boot=300)
    assert (table["auroc_lo"] < 0.5).all() and (table["auroc_hi"] > 0.5).all()


def test_a_planted_shift_is_found_and_the_auroc_states_its_positive_class():
    x, condition, pair = _conditions(60, 16, shift=6.0, seed=2)
    crossed = est.shift_distances(x, condition == "ref", groups=pair, seed=0)
    frame = crossed.assign(condition=condition, pair=pair)
    table = est.shift_auroc(frame, ["md", "rmd"], "condition", "ref", groups="pair", n_boot=200)
    assert list(table["score"]) == ["md", "rmd"]
    assert (table["positive"] == "shifted").all() and (table["reference"] == "ref").all()
    assert (table["direction"] == "higher score = more shifted").all()
    assert (table[["n_reference", "n_shifted"]] == 60).all().all()
    md = table.set_index("score").loc["md"]
    assert md.auroc > 0.9 and md.auroc_lo <= md.auroc <= md.auroc_hi
    assert md.auroc == pytest.approx(roc_auc_score(condition == "shifted", crossed["md"]))
    assert table.set_index("score").loc["rmd", "auroc"] > 0.9


def test_shift_auroc_leaves_out_nonfinite_scores_and_tests_each_condition():
    frame = pd.DataFrame(
        {"cond": ["a", "b", "c", "a", "b", "c", "a"], "s": [1, 2, 0, 0.5, np.nan, 3, 0.2]}
    )
    table = est.shift_auroc(frame, ["s"], "cond", "a", n_boot=50)
    assert list(table["positive"]) == ["b", "c"]
    b = table.set_index("positive").loc["b"]
    assert b.n_nonfinite == 1 and b.n_shifted == 1 and b.auroc == 1.0
    c = table.set_index("positive").loc["c"]  # 0 and 3 against 1, 0.5, 0.2: 3 of 6 pairs
    assert c.auroc == pytest.approx(3 / 6)


def test_shift_auroc_over_pairs_matches_sklearn_and_resamples_pairs():
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {
            "s": rng.normal(size=80),
            "cond": np.tile(["ref", "new"], 40),
            "pair": np.repeat(range(40), 2),
        }
    )
    frame.loc[frame.cond == "new", "s"] += 1
    paired = est.shift_auroc(frame, ["s"], "cond", "ref", groups="pair", n_boot=400).iloc[0]
    assert paired.auroc == pytest.approx(roc_auc_score(frame.cond == "new", frame.s))
    assert 0.5 < paired.auroc_lo < paired.auroc < paired.auroc_hi and paired.p < 0.01
    rows = est.shift_auroc(frame, ["s"], "cond", "ref", n_boot=400).iloc[0]
    assert rows.auroc == paired.auroc and (rows.auroc_lo, rows.auroc_hi) != (
        paired.auroc_lo,
        paired.auroc_hi,
    )


# -- the supervised ceiling ----------------------------------------------------------------------


def _planted(n: int = 200, d: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    return x, x @ w / np.sqrt(d) + rng.normal(0, 0.3, n)


def test_probe_recovers_a_planted_direction_and_not_a_shuffled_label():
    x, y = _planted()
    record, pred = est.linear_probe(x, y, n_boot=200, seed=0)
    assert record["kind"] == "numeric" and record["statistic"] == "spearman_rho"
    assert record["folds"] == 5 and len(record["penalty_by_fold"]) == 5
    assert record["value"] > 0.85 and record["lo"] > 0.75 and record["n"] == 200
    assert np.isfinite(pred).all()
    shuffled = np.random.default_rng(1).permutation(y)
    record, _ = est.linear_probe(x, shuffled, n_boot=200, seed=0)
    assert abs(record["value"]) < 0.2
    assert record["lo"] < 0 < record["hi"]


def test_probe_on_a_two_valued_label_reports_auroc_of_the_larger_value():
    x, y = _planted(seed=5)
    label = np.where(y > np.median(y), 3.0, 1.0)
    record, pred = est.linear_probe(x, label, n_boot=200, seed=0)
    assert record["kind"] == "binary" and record["statistic"] == "auroc"
    assert (record["positive"], record["negative"]) == (3.0, 1.0)
    assert record["value"] > 0.85 and record["lo"] > 0.75
    assert record["value"] == pytest.approx(roc_auc_score(label == 3.0, pred))
    # the chosen penalties are alphas of the grid (C = 1 / alpha for the logistic model)
    assert all(np.isclose(est.PENALTIES, a).any() for a in record["penalty_by_fold"])
    shuffled = np.random.default_rng(2).permutation(label)
    record, _ = est.linear_probe(x, shuffled, n_boot=200, seed=0)
    assert abs(record["value"] - 0.5) < 0.12
    assert record["lo"] < 0.5 < record["hi"]


@pytest.mark.parametrize("kind", ["numeric", "binary"])
def test_the_probes_folds_never_split_a_group(kind):
    """The probe's outer and inner folds are controls.folds: every group in one test fold."""
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 37, 300)
    y = (groups % 3 == 0).astype(float) if kind == "binary" else rng.normal(size=300)
    splits = controls.folds(y, kind, groups, seed=7)
    fold = np.full(300, -1)
    for k, (train, test) in enumerate(splits):
        assert not set(groups[train]) & set(groups[test])
        fold[test] = k
    per_group = pd.DataFrame({"g": groups, "f": fold}).groupby("g")["f"].nunique()
    assert (per_group == 1).all() and set(fold) == set(range(5))


def test_probe_with_groups_does_not_learn_a_group_by_heart():
    """Five near-copies per group share a random label: folds that split groups would let the
    probe recall a copy's label (high rho); grouped, nothing is there to learn."""
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(40, 64))
    groups = np.repeat(np.arange(40), 5)
    x = centers[groups] + rng.normal(0, 0.05, (200, 64))
    y = rng.normal(size=40)[groups]
    leaky, _ = est.linear_probe(x, y, n_boot=100, seed=0)
    grouped, _ = est.linear_probe(x, y, groups=groups, n_boot=100, seed=0)
    assert leaky["value"] > 0.8
    assert abs(grouped["value"]) < 0.35 and grouped["n_groups"] == 40


def test_probe_predictions_of_a_fold_never_see_its_labels():
    """Nested CV: the labels of a test fold inform neither the weights nor the penalty, so
    scrambling them leaves that fold's out-of-fold predictions exactly as they were."""
    x, y = _planted(n=120, d=32, seed=4)
    groups = np.repeat(np.arange(40), 3)
    _, pred = est.linear_probe(x, y, groups=groups, n_boot=10, seed=1)
    test = np.zeros(120, dtype=bool)
    test[controls.folds(y, "numeric", groups, seed=1)[2][1]] = True  # the probe's (y-free)
    scrambled = y.copy()
    scrambled[test] = np.random.default_rng(0).normal(size=test.sum()) * 100
    _, again = est.linear_probe(x, scrambled, groups=groups, n_boot=10, seed=1)
    assert again[test] == pytest.approx(pred[test], abs=1e-12)
    assert not np.allclose(again[~test], pred[~test])  # the other folds trained on them


def test_probe_folds_count_the_groups_of_the_rarer_class():
    """Positives in 3 groups only: 3 outer folds, so each has a positive group to test."""
    x, y = _planted(n=150, d=16, seed=6)
    groups = np.repeat(np.arange(30), 5)
    label = (groups < 3).astype(float)
    x[label == 1] += 1.0
    record, pred = est.linear_probe(x, label, groups=groups, n_boot=50)
    assert record["folds"] == 3 and np.isfinite(pred).all()


def test_probe_leaves_out_nonfinite_rows_and_skips_what_cannot_be_cross_fitted():
    x, y = _planted(n=60)
    y[3] = np.nan
    x[7, 2] = np.inf
    record, pred = est.linear_probe(x, y, n_boot=50)
    assert record["n"] == 58 and record["n_dropped"] == 2
    assert np.isnan(pred[[3, 7]]).all() and np.isfinite(np.delete(pred, [3, 7])).all()
    record, pred = est.linear_probe(x[:4], np.array([0, 0, 0, 1.0]))
    assert record["folds"] == 0 and "skipped" in record and np.isnan(pred).all()


# -- multi-sample estimators -------------------------------------------------------------------


def test_semantic_entropy_discrete_by_hand():
    # classes a, a, b, c: frequencies 1/2, 1/4, 1/4
    assert est.semantic_entropy(["a", "a", "b", "c"]) == pytest.approx(
        -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))
    )
    assert est.semantic_entropy(["x"] * 5) == 0.0
    assert est.semantic_entropy([1, 2, 3, 4]) == pytest.approx(np.log(4))
    assert est.distinct_answers(["a", "a", "b", "c"]) == 3
    assert est.distinct_answers(["7", "7"]) == 1


def test_semantic_entropy_probability_weighted_by_hand():
    # answer probabilities 0.2, 0.2, 0.1 normalize to 0.4, 0.4, 0.2: classes a = 0.8, b = 0.2
    got = est.semantic_entropy(["a", "a", "b"], np.log([0.2, 0.2, 0.1]))
    assert got == pytest.approx(-(0.8 * np.log(0.8) + 0.2 * np.log(0.2)))
    assert got == pytest.approx(entropy([0.8, 0.2]))
    # equal likelihoods: the discrete version
    assert est.semantic_entropy(list("aabc"), [-3.0] * 4) == pytest.approx(
        est.semantic_entropy(list("aabc"))
    )


def _lcs_table(a, b):
    t = np.zeros((len(a) + 1, len(b) + 1), dtype=int)
    for i, j in itertools.product(range(len(a)), range(len(b))):
        t[i + 1, j + 1] = t[i, j] + 1 if a[i] == b[j] else max(t[i, j + 1], t[i + 1, j])
    return int(t[-1, -1])


def test_rouge_l_by_hand_and_lcs_against_the_dynamic_programme():
    # LCS of "the cat sat on the mat" (6) and "the cat on mat today" (5): "the cat on mat" = 4;
    # recall 4/6, precision 4/5, F = 2 (4/6)(4/5) / (4/6 + 4/5) = 8/11
    assert est.rouge_l("the cat sat on the mat", "the cat on mat today") == pytest.approx(8 / 11)
    assert est.rouge_l("the cat on mat today", "the cat sat on the mat") == pytest.approx(8 / 11)
    assert est.rouge_l("a b c", "a b c") == 1.0
    assert est.rouge_l("a b", "c d") == 0.0 and est.rouge_l("", "a") == 0.0
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = list(rng.integers(0, 4, rng.integers(0, 70)))
        b = list(rng.integers(0, 4, rng.integers(0, 70)))
        assert est.lcs_length(a, b) == _lcs_table(a, b)


def test_lexical_similarity_is_the_mean_over_pairs():
    # pairs: (x y, x y) = 1, (x y, z) = 0, (x y, z) = 0
    assert est.lexical_similarity(["x y", "x y", "z"]) == pytest.approx(1 / 3)
    assert np.isnan(est.lexical_similarity(["only one"]))


def test_eigenscore_against_slogdet():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 32)) + rng.normal(size=32)
    centered = z - z.mean(axis=1, keepdims=True)  # J_d: each embedding over its coordinates
    sign, logdet = np.linalg.slogdet(centered @ centered.T + 1e-3 * np.eye(6))
    assert sign == 1
    assert est.eigenscore(z) == pytest.approx(logdet / 6, rel=1e-10)
    assert est.eigenscore(z.astype(np.float16)) == pytest.approx(logdet / 6, rel=1e-2)


def test_eigenscore_of_identical_answers_by_hand():
    # K equal rows: Z J Z^T = s 1 1^T with s = ||z - mean(z)||^2, eigenvalues K s and 0 (K - 1
    # times), so EigenScore = (ln(K s + alpha) + (K - 1) ln alpha) / K
    z = np.tile([1.0, 2.0, 4.0], (4, 1))
    s = ((z[0] - z[0].mean()) ** 2).sum()
    expected = (np.log(4 * s + 1e-3) + 3 * np.log(1e-3)) / 4
    assert est.eigenscore(z) == pytest.approx(expected, rel=1e-9)
    spread = est.eigenscore(np.random.default_rng(1).normal(size=(4, 3)) * 3)
    assert spread > est.eigenscore(z)  # scattered answers span more volume


# -- PRR at 50% maximum rejection ---------------------------------------------------------------


def test_prr_at_half_rejection_worked_example():
    """Eight answers; by ascending u, errors at positions 3, 6 and 8: err = [0,0,1,0,0,1,0,1].
    LM-Polygraph's max_rejection 0.5 keeps k = 5..8 (r = int(0.5 * 8) = 4 points).
    Risk (errors among the k kept): k=5: 1/5, 6: 2/6, 7: 2/7, 8: 3/8; in 840ths 168, 280, 240,
    315, sum 1003, area 1003/3360. Oracle [0,0,0,0,0,1,1,1]: 0, 1/6, 2/7, 3/8 = 695/3360.
    Random: 3/8 = 1260/3360. PRR_50 = (1260 - 1003) / (1260 - 695) = 257/565.
    Full PRR over k = 1..8: risks 0, 0, 1/3, 1/4, 1/5, 1/3, 2/7, 3/8 = 1493/840, oracle
    695/840, random 3/8 * 8 = 2520/840: (2520 - 1493) / (2520 - 695) = 1027/1825."""
    err = np.array([0, 0, 1, 0, 0, 1, 0, 1])
    u = np.arange(8) / 10
    perm = np.random.default_rng(0).permutation(8)  # input order does not matter
    assert signals.prr(u[perm], err[perm], max_rejection=0.5) == pytest.approx(257 / 565)
    assert signals.prr(u[perm], err[perm]) == pytest.approx(1027 / 1825)
    assert signals.prr(err, err, max_rejection=0.5) == pytest.approx(1.0)  # the oracle


def _lm_polygraph_prr(u, err, max_rejection):
    """LM-Polygraph's PredictionRejectionArea(max_rejection) on quality 1 - err, normalized
    by its oracle (the quality itself as the estimator) and the exact random baseline."""
    q = 1.0 - np.asarray(err, dtype=float)
    n = q.size
    r = int(max_rejection * n)

    def area(estimator):
        kept = np.cumsum(q[np.argsort(estimator, kind="stable")])[-r:]
        return np.sum(kept / np.arange(n - r + 1, n + 1)) / r

    return (area(u) - q.mean()) / (area(-q) - q.mean())


@pytest.mark.parametrize(("seed", "max_rejection"), [(0, 0.5), (1, 0.5), (2, 0.3), (3, 1.0)])
def test_prr_matches_lm_polygraphs_rejection_area_untied(seed, max_rejection):
    rng = np.random.default_rng(seed)
    err = (rng.random(37) < 0.4).astype(float)
    u = err + rng.normal(0, 1, 37)
    expected = _lm_polygraph_prr(u, err, max_rejection)
    assert signals.prr(u, err, max_rejection) == pytest.approx(expected, abs=1e-12)
    errors, total = signals._grouped(u, err, np.ones((1, 37)))
    assert signals._rejection_prr(errors, total, 1.0)[0] == pytest.approx(signals.prr(u, err))


def test_prr_at_half_rejection_breaks_ties_by_expectation_over_orders():
    u = np.array([1, 1, 2, 2, 2, 3, 0, 3])
    err = np.array([1, 0, 0, 1, 0, 1, 0, 0])
    values = []
    for perm in itertools.permutations(range(8)):
        order = np.lexsort((np.array(perm), u))  # one order of the tied examples
        values.append(_lm_polygraph_prr(np.argsort(order), err, 0.5))
    assert signals.prr(u, err, 0.5) == pytest.approx(np.mean(values), abs=1e-12)


def test_prr_50_in_the_weighted_bootstrap_and_the_signals_table():
    rng = np.random.default_rng(5)
    err = (rng.random(30) < 0.4).astype(float)
    u = np.round(err + rng.normal(0, 1, 30), 1)
    w = rng.multinomial(30, np.full(30, 1 / 30), size=4)
    got = signals._ranking_metrics(u, err, w)["prr_50"]
    for b in range(4):
        idx = np.repeat(np.arange(30), w[b])
        assert got[b] == pytest.approx(signals.prr(u[idx], err[idx], 0.5), abs=1e-12)
    frame = pd.DataFrame({"generation_mean_entropy": u, "correct": 1 - err})
    table, _ = signals.score_signals(frame, ["generation_mean_entropy"], n_boot=100)
    row = table.iloc[0]
    assert row.prr_50 == pytest.approx(signals.prr(u, err, 0.5))
    assert row.prr_50_lo <= row.prr_50 <= row.prr_50_hi
    assert np.isnan(signals.prr([0.1, 0.2, 0.3], [0, 1, 0], 0.5))  # r = 1: one point only
