"""Correctness analysis on synthetic data with a known answer."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from entrainment_cli.science.stats import (
    accuracy_by_bins,
    au_eu_quadrant,
    classify,
    compare_groups,
    wilson_interval,
)


def _frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < 0.3
    return pd.DataFrame(
        {
            "correct": correct,
            "perfect_up": np.where(correct, 10.0, 0.0) + rng.random(n),
            "perfect_down": np.where(correct, 0.0, 10.0) + rng.random(n),
            "noise": rng.normal(size=n),
            "weak": correct * 0.5 + rng.normal(size=n),
            "ties": rng.integers(0, 3, n).astype(float),
        }
    )


def test_perfect_separation_both_directions():
    out = compare_groups(_frame(), ["perfect_up", "perfect_down"]).set_index("metric")
    assert out.loc["perfect_up", "auroc"] == 1.0
    assert out.loc["perfect_up", "direction"] == "higher"
    assert out.loc["perfect_down", "auroc"] == 0.0
    assert out.loc["perfect_down", "auroc_best"] == 1.0
    assert out.loc["perfect_down", "direction"] == "lower"
    assert out.loc["perfect_up", "mean_correct"] > 10 > out.loc["perfect_up", "mean_incorrect"]


def test_independent_metric_near_half():
    out = compare_groups(_frame(n=4000, seed=1), ["noise"]).iloc[0]
    assert abs(out["auroc"] - 0.5) < 0.03
    assert out["auroc_best"] >= 0.5


@pytest.mark.parametrize("metric", ["noise", "weak", "ties"])
def test_matches_sklearn_and_scipy(metric):
    df = _frame()
    row = compare_groups(df, [metric]).iloc[0]
    y = df["correct"].to_numpy()
    x = df[metric].to_numpy()
    assert row["auroc"] == pytest.approx(roc_auc_score(y, x), abs=1e-12)
    mw = stats.mannwhitneyu(x[y], x[~y], alternative="two-sided")
    assert row["u"] == pytest.approx(mw.statistic)
    assert row["p"] == pytest.approx(mw.pvalue, rel=1e-12)
    assert row["n_correct"] == y.sum() and row["n_incorrect"] == (~y).sum()
    assert row["median_correct"] == pytest.approx(np.median(x[y]))


def test_ties_count_half():
    df = pd.DataFrame({"correct": ["yes", "no"], "m": [1.0, 1.0]})
    assert compare_groups(df, ["m"]).iloc[0]["auroc"] == 0.5


def test_nan_dropped_per_metric_and_string_labels():
    df = pd.DataFrame(
        {
            "correct": ["yes", "yes", "no", "no", "buggy", "yes"],
            "a": [1.0, np.nan, 0.0, 0.5, 9.0, 2.0],
            "b": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    )
    out = compare_groups(df, ["a", "b"]).set_index("metric")
    assert out.loc["a", ["n", "n_dropped", "n_correct", "n_incorrect"]].tolist() == [4, 1, 2, 2]
    assert out.loc["b", ["n", "n_dropped", "n_correct", "n_incorrect"]].tolist() == [5, 0, 3, 2]
    assert out.loc["a", "auroc"] == 1.0  # the buggy row's 9.0 is not counted
    assert out.loc["a", "mean_correct"] == 1.5


def test_empty_group_gives_nan():
    df = pd.DataFrame({"correct": [1, 1, 1], "m": [1.0, 2.0, np.nan]})
    row = compare_groups(df, ["m"]).iloc[0]
    assert row["n_correct"] == 2 and row["n_incorrect"] == 0
    assert np.isnan(row["auroc"]) and np.isnan(row["p"]) and np.isnan(row["mean_incorrect"])
    assert row["direction"] is None


def test_accuracy_by_bins_hand_made():
    values = np.arange(10, dtype=float)  # quantile edges 0, 1.8, 3.6, 5.4, 7.2, 9
    correct = [0, 0, 1, 0, 1, 1, 1, 0, 1, 1]
    out = accuracy_by_bins(values, correct, bins=5)
    assert out["n"].tolist() == [2, 2, 2, 2, 2]
    assert out["accuracy"].tolist() == [0.0, 0.5, 1.0, 0.5, 1.0]
    assert out["lo"].iloc[0] == 0.0 and out["hi"].iloc[-1] == 9.0
    assert (out["ci_lo"] <= out["accuracy"]).all() and (out["accuracy"] <= out["ci_hi"]).all()


def test_accuracy_by_bins_point_mass_and_counts():
    rng = np.random.default_rng(2)
    values = np.concatenate([np.zeros(600), rng.random(400)])  # 60% singletons at 0
    correct = np.concatenate([np.ones(600), np.zeros(400)]).astype(int)
    values[3] = np.nan
    out = accuracy_by_bins(values, correct, bins=5)
    assert out["n"].sum() == 999
    assert len(out) == 3  # {0}, then two 20% bins
    assert (out.iloc[0]["lo"], out.iloc[0]["hi"], out.iloc[0]["accuracy"]) == (0.0, 0.0, 1.0)
    assert out.iloc[1:]["accuracy"].tolist() == [0.0, 0.0]
    assert out.iloc[1:]["n"].tolist() == [200, 200]


def test_accuracy_by_bins_constant_and_empty():
    out = accuracy_by_bins([1.0, 1.0, 1.0, 1.0], [1, 0, 1, 1])
    assert out["n"].tolist() == [4] and out["accuracy"].tolist() == [0.75]
    assert accuracy_by_bins([np.nan], [1]).empty


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_classify_separable():
    rng = np.random.default_rng(3)
    n = 200
    y = (rng.random(n) < 0.4).astype(int)
    x = pd.DataFrame({"signal": y * 3.0 + rng.normal(size=n), "noise": rng.normal(size=n)})
    x.loc[::17, "signal"] = np.nan  # imputed inside the pipeline
    out = classify(x, y, seed=0)
    json.dumps(out)
    assert out["folds"] == 5 and out["n"] == n and out["n_positive"] == y.sum()
    assert out["features"] == ["signal", "noise"]
    share = max(y.mean(), 1 - y.mean())
    assert out["majority_baseline"]["accuracy"] == pytest.approx(share)
    for model in out["models"].values():
        assert model["auroc_mean"] > 0.9
        assert len(model["auroc_folds"]) == 5


def test_classify_imbalanced_uninformative():
    rng = np.random.default_rng(4)
    n = 300
    y = np.r_[np.ones(270), np.zeros(30)].astype(bool)
    x = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    out = classify(x, y, seed=1)
    assert out["majority_baseline"]["accuracy"] == pytest.approx(0.9)
    assert out["majority_baseline"]["class"] == 1
    for model in out["models"].values():
        assert abs(model["balanced_accuracy_mean"] - 0.5) < 0.12
        assert abs(model["auroc_mean"] - 0.5) < 0.15


def test_classify_reduces_folds_and_degenerate():
    x = pd.DataFrame({"a": np.arange(20.0)})
    y = np.r_[np.zeros(17), np.ones(3)]
    assert classify(x, y, seed=0)["folds"] == 3
    out = classify(x, np.ones(20), seed=0)
    json.dumps(out)
    assert "skipped" in out and "models" not in out and out["n_positive"] == 20
    out = classify(x, np.r_[np.zeros(19), np.ones(1)], seed=0)
    assert "skipped" in out and "models" not in out
    with pytest.raises(ValueError):
        classify(x, np.r_[np.zeros(19), [2]], seed=0)


def test_quadrants_at_medians():
    au = np.array([0.0, 1.0, 2.0, 3.0, 4.0, np.nan])
    eu = np.array([0.5, 0.1, 0.3, 0.2, 0.4, 0.1])
    labels = au_eu_quadrant(au, eu)  # medians of the 5 finite points: AU 2.0, EU 0.3
    assert labels.tolist() == [
        "low AU, high EU",
        "low AU, low EU",
        "low AU, low EU",  # exactly at both medians
        "high AU, low EU",
        "high AU, high EU",
        "missing",
    ]
