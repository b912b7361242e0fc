"""The statistics of each kind of label, checked against scipy and scikit-learn."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from entrainment_cli.errors import UserError
from entrainment_cli.science import labels, stats


def _frame(n=60, seed=0):
    rng = np.random.default_rng(seed)
    score = rng.integers(1, 6, n).astype(float)
    group = rng.choice(["a", "b", "c"], n)
    m1 = score * 0.8 + rng.normal(0, 1, n) + (group == "c") * 1.5
    m2 = rng.normal(0, 1, n)
    m2[3] = np.nan  # left out, never read as 0
    return pd.DataFrame(
        {
            "score": score,
            "hard": np.where(score >= 3, "hard", "easy"),
            "group": group,
            "layer": np.repeat([-1, 2], n // 2),
            "m1": m1,
            "m2": m2,
        }
    )


def test_label_kind():
    assert labels.label_kind(pd.Series([1, 2, 3, None], name="x")) == "numeric"
    assert labels.label_kind(pd.Series(["1.5", "2", "7"], name="x")) == "numeric"
    assert labels.label_kind(pd.Series([0, 1, 1, None], name="x")) == "binary"
    assert labels.label_kind(pd.Series(["yes", "no"], name="x")) == "binary"
    assert labels.label_kind(pd.Series([True, False, True], name="x")) == "binary"
    with pytest.raises(
        UserError,
        match=r"^--label 'x' is neither numeric nor two-valued "
        r"\(3 values: a, b, c\); for ordered text give their order with --label-order a,b,c, "
        r"for categories use --group",
    ):
        labels.label_kind(pd.Series(["a", "b", "c"], name="x"))
    with pytest.raises(UserError, match="has 1 distinct value"):
        labels.label_kind(pd.Series([4, 4, None], name="x"))


def test_numeric_label_is_pearson_and_spearman_per_group():
    df = _frame()
    table = labels.numeric_table(df, "score", ["m1", "m2"], by=["layer"], n_boot=200, seed=3)
    assert len(table) == 4 and list(table.columns[:2]) == ["layer", "metric"]
    for row in table.itertuples():
        part = df[df.layer == row.layer]
        keep = part[row.metric].notna()
        x, y = part.loc[keep, "score"], part.loc[keep, row.metric]
        assert row.n == keep.sum()
        assert row.pearson_r == pytest.approx(sps.pearsonr(x, y).statistic)
        assert row.pearson_p == pytest.approx(sps.pearsonr(x, y).pvalue)
        assert row.spearman_rho == pytest.approx(sps.spearmanr(x, y).statistic)
        assert row.spearman_lo < row.spearman_rho < row.spearman_hi
    again = labels.numeric_table(df, "score", ["m1", "m2"], by=["layer"], n_boot=200, seed=3)
    pd.testing.assert_frame_equal(table, again)  # seeded


def test_binned_means_per_label_value_and_quantiles():
    df = _frame()
    table = labels.binned_table(df, "score", ["m1"])
    assert list(table["lo"]) == [1, 2, 3, 4, 5] and (table["lo"] == table["hi"]).all()
    for row in table.itertuples():
        values = df.loc[df.score == row.lo, "m1"]
        assert row.n == len(values) and row.mean == pytest.approx(values.mean())
        assert row.sem == pytest.approx(sps.sem(values))
    cont = stats.binned_means(df["m2"].fillna(0), df["m1"], bins=4)
    assert len(stats.binned_means(np.arange(12.0), np.arange(12.0), max_levels=12)) == 12
    assert cont["n"].sum() == len(df) and len(cont) == 4
    assert (cont["n"] - len(df) / 4).abs().max() <= 1


def test_binary_label_is_auroc_and_mann_whitney():
    df = _frame()
    table = labels.binary_table(df, "hard", ["m1", "m2"], n_boot=300, seed=1).set_index("metric")
    for metric in ("m1", "m2"):
        row = table.loc[metric]
        keep = df[metric].notna()
        y = (df.loc[keep, "hard"] == "hard").astype(int)
        x = df.loc[keep, metric]
        assert (row.positive, row.negative) == ("hard", "easy")
        assert row.n == keep.sum() and row.n_positive == y.sum()
        assert row.auroc == pytest.approx(roc_auc_score(y, x))
        mw = sps.mannwhitneyu(x[y == 1], x[y == 0], alternative="two-sided")
        assert row.u == pytest.approx(mw.statistic) and row.p == pytest.approx(mw.pvalue)
        assert row.auroc_lo <= row.auroc <= row.auroc_hi
        assert row.rank_biserial == pytest.approx(2 * row.auroc - 1)
        assert row.direction == ("higher" if row.auroc >= 0.5 else "lower")
    assert table.loc["m1", "auroc"] > 0.6 and table.loc["m2", "n_dropped"] == 1


def test_group_column_is_kruskal_wallis_with_epsilon_squared():
    df = _frame(n=90, seed=2)
    summary, kw = labels.group_tables(df, "group", ["m1", "m2"], n_boot=300, seed=0)
    for metric in ("m1", "m2"):
        row = kw.set_index("metric").loc[metric]
        groups = [g[metric].dropna() for _, g in df.groupby("group")]
        ref = sps.kruskal(*groups)
        n = sum(len(g) for g in groups)
        assert row.h == pytest.approx(ref.statistic) and row.p == pytest.approx(ref.pvalue)
        assert row.epsilon_sq == pytest.approx(ref.statistic / (n - 1))
        assert row.n == n and row.n_groups == 3
        assert row.epsilon_sq_lo <= row.epsilon_sq_hi
    s = summary[summary.metric == "m1"].set_index("group")
    for name, part in df.groupby("group"):
        assert s.loc[name, "mean"] == pytest.approx(part["m1"].mean())
        assert s.loc[name, "sem"] == pytest.approx(sps.sem(part["m1"]))
    assert kw.set_index("metric").loc["m1", "p"] < 0.01  # group c is shifted
    ties = stats.kruskal_h(np.array([1.0, 1, 2]), np.array([2.0, 3, 3, 3]))
    assert ties == pytest.approx(sps.kruskal([1, 1, 2], [2, 3, 3, 3]).statistic)


def test_pairs_under_conditions_are_paired_wilcoxon_with_rank_biserial():
    rng = np.random.default_rng(5)
    n = 30
    a = rng.normal(0, 1, n)
    b = a - 0.4 + rng.normal(0, 0.5, n)
    df = pd.DataFrame(
        {
            "pair": np.tile([f"p{i}" for i in range(n)], 2),
            "cond": np.repeat(["x", "y"], n),
            "m": np.concatenate([a, b]),
        }
    ).iloc[:-1]  # the last pair lacks its "y": dropped, counted
    row = labels.paired_table(df, "pair", "cond", ["m"], n_boot=300, seed=0).iloc[0]
    d = b[:-1] - a[:-1]  # condition (y) minus reference (x)
    ref = sps.wilcoxon(b[:-1], a[:-1])
    assert (row.a, row.b, row.n, row.n_dropped) == ("x", "y", n - 1, 1)
    assert row.wilcoxon_p == pytest.approx(ref.pvalue)
    ranks = sps.rankdata(np.abs(d))
    r = (ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum()
    assert row.rank_biserial == pytest.approx(r) and row.rank_biserial < 0
    assert row.rank_biserial_lo <= r <= row.rank_biserial_hi
    assert row.mean_diff == pytest.approx(d.mean())
    with pytest.raises(UserError, match=r"'p0' has more than one row with --condition 'cond' 'x'"):
        labels.paired_table(pd.concat([df, df.iloc[:1]]), "pair", "cond", ["m"], n_boot=10)
    with pytest.raises(UserError, match="pairs need two conditions"):
        labels.paired_table(df[df.cond == "x"], "pair", "cond", ["m"], n_boot=10)


def test_bootstrap_ci_covers_the_mean_and_is_seeded():
    x = np.random.default_rng(0).normal(2, 1, 200)
    lo, hi = stats.bootstrap_ci(np.mean, [x], 500, seed=4)
    assert lo < 2 < hi and (lo, hi) == stats.bootstrap_ci(np.mean, [x], 500, seed=4)
    half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert hi - lo == pytest.approx(2 * half, rel=0.15)
