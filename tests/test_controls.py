"""Controls: each statistic against an independent computation, and the two synthetic studies
(a metric that is a function of length; one that is not)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from entrainment_cli.science import controls, labels, stats


def test_holm_and_bh_on_a_hand_worked_family():
    p = [0.01, 0.04, 0.03, np.nan, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> cummax
    np.testing.assert_allclose(stats.holm(p), [0.03, 0.06, 0.06, np.nan, 0.02])
    # BH: p_(i) m / i = 0.02, 0.02, 0.04, 0.04, then the running minimum from the top
    np.testing.assert_allclose(stats.benjamini_hochberg(p), [0.02, 0.04, 0.04, np.nan, 0.02])
    table = pd.DataFrame({"g": ["x", "x", "y", "y"], "p": [0.01, 0.04, 0.2, 0.5]})
    out = stats.adjust(table, "p", family=["g"], rows=np.array([True, True, True, False]))
    assert list(out.columns) == ["g", "p", "p_holm", "p_bh"]
    np.testing.assert_allclose(out["p_holm"], [0.02, 0.04, 0.2, np.nan])


def test_partial_spearman_is_the_first_order_partial_of_spearman_rhos():
    rng = np.random.default_rng(0)
    z = rng.normal(size=80)
    x = z + rng.normal(size=80)
    y = z**3 + 0.5 * rng.normal(size=80)
    r = lambda a, b: sps.spearmanr(a, b).statistic  # noqa: E731
    expected = (r(x, y) - r(x, z) * r(y, z)) / np.sqrt((1 - r(x, z) ** 2) * (1 - r(y, z) ** 2))
    assert controls.partial_spearman(x, y, z) == pytest.approx(expected)
    out = controls.partial_test(x, y, z, n_boot=300, seed=1)
    t = expected * np.sqrt(77 / (1 - expected**2))
    assert out["partial_p"] == pytest.approx(2 * sps.t.sf(abs(t), 77))
    assert out["partial_lo"] < expected < out["partial_hi"] and out["n_units"] == 80


def test_grouped_p_values_do_not_shrink_with_repeated_rows():
    """Tokens of one prompt are one unit: repeating every prompt's rows 50 times must leave
    the grouped p-value where it was, while a p treating rows as independent collapses."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=12), rng.normal(size=12)
    ids = np.arange(12)
    once = stats.correlate(x, y, groups=ids, n_boot=500, seed=0)
    rep = stats.correlate(
        np.repeat(x, 50), np.repeat(y, 50), groups=np.repeat(ids, 50), n_boot=500, seed=0
    )
    naive = sps.spearmanr(np.repeat(x, 50), np.repeat(y, 50)).pvalue
    assert rep["n"] == 600 and rep["n_units"] == 12
    assert rep["spearman_p"] > 0.05 and naive < 0.01
    assert rep["spearman_p"] == pytest.approx(once["spearman_p"], abs=0.15)
    two = stats.correlate([1, 2, 3, 4], [1, 3, 2, 4], groups=[0, 0, 1, 1], n_boot=50)
    assert "fewer than 5" in two["note"]


def test_bootstrap_p_by_hand():
    boots = np.array([0.1, 0.2, -0.1, 0.3, 0.4, 0.5, 0.2, 0.1, 0.3])  # 1 of 9 at or below 0
    assert stats.bootstrap_p(boots) == pytest.approx(2 * (1 + 1) / 10)
    assert stats.bootstrap_p(np.ones(99)) == pytest.approx(2 / 100)


def test_incremental_r2_and_auroc_against_a_direct_fit():
    rng = np.random.default_rng(5)
    n = 60
    length = rng.normal(size=n)
    metric = rng.normal(size=n)
    y = length + 2 * metric + 0.3 * rng.normal(size=n)
    out = controls.incremental(y, length, metric, "numeric", n_boot=200, seed=4)
    splits = controls.folds(y, "numeric", None, 4)
    base, both = np.empty(n), np.empty(n)
    for train, test in splits:  # ordinary least squares by hand, per fold
        for cols, pred in ((length[:, None], base), (np.column_stack([length, metric]), both)):
            design = np.column_stack([np.ones(n), cols])
            coef, *_ = np.linalg.lstsq(design[train], y[train], rcond=None)
            pred[test] = design[test] @ coef
    r2 = lambda p: 1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()  # noqa: E731
    assert out["cv_r2_length"] == pytest.approx(r2(base))
    assert out["cv_r2_both"] == pytest.approx(r2(both))
    assert out["cv_gain_lo"] > 0.5 and out["cv_folds"] == 5

    yb = (y > np.median(y)).astype(float)
    out = controls.incremental(yb, length, metric, "binary", n_boot=200, seed=4)
    pred = np.empty(n)
    for train, test in controls.folds(yb, "binary", None, 4):
        fit = LogisticRegression(max_iter=1000)
        scale = StandardScaler().fit(length[train, None])
        fit.fit(scale.transform(length[train, None]), yb[train])
        pred[test] = fit.predict_proba(scale.transform(length[test, None]))[:, 1]
    assert out["cv_auroc_length"] == pytest.approx(roc_auc_score(yb, pred))
    assert out["cv_auroc_both"] > out["cv_auroc_length"]


def test_grouped_folds_never_split_a_unit():
    y = np.tile([0.0, 1.0], 20)
    groups = np.repeat(np.arange(20), 2)  # a pair: one row per condition
    for kind in ("numeric", "binary"):
        for train, test in controls.folds(y, kind, groups, seed=2):
            assert not set(groups[train]) & set(groups[test])


def test_lexical_baseline_equals_sklearn_on_the_same_folds():
    rng = np.random.default_rng(1)
    words = np.array(["alpha", "beta", "gamma", "delta", "hard", "easy", "prove", "sum"])
    texts = [" ".join(rng.choice(words, 6)) for _ in range(40)]
    y = np.array([t.count("hard") - t.count("easy") + rng.normal(0, 0.3) for t in texts])
    out = controls.lexical_baseline(texts, y, "numeric", n_boot=100, seed=0)
    pred = np.empty(y.size)
    for train, test in controls.folds(y, "numeric", None, 0):
        model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), Ridge())
        model.fit([texts[i] for i in train], y[train])
        pred[test] = model.predict([texts[i] for i in test])
    assert out["statistic"] == "spearman_rho"
    assert out["value"] == pytest.approx(sps.spearmanr(y, pred).statistic)
    assert out["value"] > 0.5
    assert controls.lexical_baseline(texts[:10], y[:10], "numeric") is None


def _study(metric_of_length: bool, n=120, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    level = rng.integers(1, 6, n).astype(float)
    tokens = (20 * level + rng.normal(0, 15, n)).round().clip(5)  # harder problems are longer
    if metric_of_length:
        metric = np.log(tokens) + rng.normal(0, 0.01, n)
    else:
        metric = 0.5 * level + rng.normal(0, 0.5, n)
    return pd.DataFrame(
        {
            "id": [f"q{i}" for i in range(n)],
            "layer": -1,
            "position": "last-prompt",
            "level": level,
            "n_prompt_tokens": tokens,
            "prompt": ["word " * int(t) for t in tokens],
            "gini": metric,
        }
    )


def test_a_metric_that_is_a_function_of_length_is_explained_by_length():
    table = controls.controls_table(
        controls.with_lengths(_study(True)), "level", "numeric", ["gini"], n_boot=300
    )
    row = table.set_index("metric").loc["gini"]
    assert row["spearman_lo"] > 0.5  # the raw effect is strong
    assert row["partial_lo"] < 0 < row["partial_hi"]
    assert row["verdict"] == "explained by length"
    assert row["cv_gain_lo"] < 0.05
    assert table.set_index("metric").loc["n_prompt_tokens", "kind"] == "baseline"


def test_a_metric_independent_of_length_keeps_its_effect():
    table = controls.controls_table(
        controls.with_lengths(_study(False)), "level", "numeric", ["gini"], n_boot=300
    )
    row = table.set_index("metric").loc["gini"]
    assert row["partial_lo"] > 0.2 and row["verdict"] == "beyond length"
    assert row["cv_gain_lo"] > 0
    assert row["partial_p_holm"] == pytest.approx(row["partial_p"])  # a family of one


def test_baselines_score_length_with_the_metrics_statistic():
    frame = controls.with_lengths(_study(False))
    table = controls.baselines_table(frame, "level", "numeric", n_boot=100).set_index("baseline")
    rho = sps.spearmanr(frame["level"], frame["n_prompt_tokens"]).statistic
    assert table.loc["n_prompt_tokens", "value"] == pytest.approx(rho)
    assert table.loc["n_prompt_chars", "statistic"] == "spearman_rho"
    assert table.loc["tfidf", "cv_folds"] == 5
    frame["hard"] = (frame["level"] >= 3).astype(float)
    binary = controls.baselines_table(frame, "hard", "binary", text=None, n_boot=100)
    row = binary.set_index("baseline").loc["n_prompt_tokens"]
    expected = roc_auc_score(frame["hard"], frame["n_prompt_tokens"])
    assert row["statistic"] == "auroc" and row["value"] == pytest.approx(expected)


def test_paired_difference_is_condition_minus_reference():
    frame = pd.DataFrame(
        {
            "pair": [1, 1, 2, 2, 3, 3, 4, 4],
            "cond": ["ref", "shift"] * 4,
            "m": [1.0, 3.0, 2.0, 5.0, 0.0, 1.0, 4.0, 4.5],
        }
    )
    row = labels.paired_table(frame, "pair", "cond", ["m"], n_boot=50).iloc[0]
    assert (row["a"], row["b"]) == ("ref", "shift")
    assert row["mean_diff"] == pytest.approx(np.mean([2, 3, 1, 0.5])) and row["rank_biserial"] == 1
    assert row["mean_a"] == pytest.approx(frame.loc[frame.cond == "ref", "m"].mean())
