"""Uncertainty-quality metrics and per-example baselines (science/signals.py), each against an
independent computation: scikit-learn, brute force over orders, and a worked PRR example."""

import itertools

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import AutoTokenizer

from entrainment_cli import signals as run_signals
from entrainment_cli.science import answers
from entrainment_cli.science import signals as s


def _data(seed: int, n: int = 40, levels: int | None = 6):
    rng = np.random.default_rng(seed)
    err = (rng.random(n) < 0.4).astype(float)
    u = err + rng.normal(0, 1, n)
    if levels:  # many ties
        u = np.round(u * levels / 4)
    return u, err


@pytest.mark.parametrize("seed", range(4))
def test_roc_and_pr_auc_match_sklearn_with_ties(seed):
    u, err = _data(seed)
    assert s.roc_auc(u, err) == pytest.approx(roc_auc_score(err, u), abs=1e-12)
    assert s.pr_auc(u, err) == pytest.approx(average_precision_score(err, u), abs=1e-12)


def _aurc_brute(u, err):
    """Mean over every order of the tied examples of the mean risk over coverages."""
    values = []
    for perm in itertools.permutations(range(len(u))):
        order = sorted(range(len(u)), key=lambda i: (u[i], perm[i]))
        risk = np.cumsum(np.asarray(err)[order]) / np.arange(1, len(u) + 1)
        values.append(risk.mean())
    return float(np.mean(values))


def test_aurc_breaks_ties_by_expectation_over_orders():
    u = [1, 1, 2, 2, 2, 3, 0]
    err = [1, 0, 0, 1, 0, 1, 0]
    assert s.aurc(u, err) == pytest.approx(_aurc_brute(u, err), abs=1e-12)
    curve = s.risk_coverage(u, err)
    assert curve["risk"].mean() == pytest.approx(s.aurc(u, err))
    # by hand: the u=0 answer (right), then the u=1 pair (one wrong: 1/2 expected per slot)
    assert curve["risk"].tolist()[:3] == pytest.approx([0, 0.5 / 2, 1 / 3])


def test_prr_worked_example_from_lm_polygraphs_definition():
    """LM-Polygraph (ue_metrics/pred_rej_area.py, 0.7.0): PRA = mean over k = 1..n of the
    mean quality of the k least uncertain answers; PRR = (PRA - PRA_random) / (PRA_oracle -
    PRA_random), the oracle ranking by quality and random at the mean quality. By hand:
    sorted by u, quality is [1, 0, 1, 1, 0]; running means 1, 1/2, 2/3, 3/4, 3/5 sum to
    211/60; the oracle's [1, 1, 1, 0, 0] give 1, 1, 1, 3/4, 3/5 = 261/60; random is 3/5 at
    every k (180/60). PRR = (211 - 180) / (261 - 180) = 31/81; AURC = 1 - 211/300 = 89/300.
    Errors have u 0.35 and 0.8, right answers 0.1, 0.4, 0.7: ROC-AUC = 4/6; by descending u
    the errors come 1st (precision 1) and 4th (2/4): AP = (1 + 1/2) / 2 = 3/4.
    lm-polygraph 0.7.0 cannot be a dev dependency (its hydra-core pins antlr4-python3-runtime
    4.9, our math-verify[antlr4_13_2] needs 4.13.2: pip's ResolutionImpossible); its
    ue_metrics code, run on these inputs, gives PRA 211/300 and oracle 261/300 to float
    precision; its random baseline is a 1000-shuffle Monte Carlo estimate (0.5952 here, so
    PRR 0.393) of the mean quality 3/5, which is used here exactly."""
    u = [0.1, 0.4, 0.35, 0.8, 0.7]
    err = [0, 0, 1, 1, 0]
    assert s.prr(u, err) == pytest.approx(31 / 81, abs=1e-12)
    assert s.aurc(u, err) == pytest.approx(89 / 300, abs=1e-12)
    assert s.roc_auc(u, err) == pytest.approx(4 / 6, abs=1e-12)
    assert s.pr_auc(u, err) == pytest.approx(3 / 4, abs=1e-12)
    assert s.prr(err, err) == pytest.approx(1.0)  # the oracle itself
    assert s.prr([-x for x in u], err) < 0  # worse than chance when turned around


@pytest.mark.parametrize("seed", range(3))
def test_prr_matches_the_rejection_curve_definition_untied(seed):
    u, err = _data(seed, levels=None)
    q = 1 - err

    def pra(est):
        order = np.argsort(est, kind="stable")
        return np.mean(np.cumsum(q[order]) / np.arange(1, q.size + 1))

    expected = (pra(u) - q.mean()) / (pra(-q) - q.mean())
    assert s.prr(u, err) == pytest.approx(expected, abs=1e-12)


def test_weighted_metrics_equal_the_duplicated_sample():
    """A bootstrap weight k counts an example k times: the same as resampling it k times."""
    u, err = _data(7, n=25)
    rng = np.random.default_rng(3)
    w = rng.multinomial(25, np.full(25, 1 / 25), size=5)
    got = s._ranking_metrics(u, err, w)
    for b in range(5):
        idx = np.repeat(np.arange(25), w[b])
        uu, ee = u[idx], err[idx]
        assert got["roc_auc"][b] == pytest.approx(roc_auc_score(ee, uu), abs=1e-12)
        assert got["pr_auc"][b] == pytest.approx(average_precision_score(ee, uu), abs=1e-12)
        assert got["aurc"][b] == pytest.approx(s.aurc(uu, ee), abs=1e-12)
        assert got["prr"][b] == pytest.approx(s.prr(uu, ee), abs=1e-12)


def test_calibration_is_cross_fitted_platt_and_ece_brier_by_hand():
    u, err = _data(11, n=60, levels=None)
    ok = (1 - err).astype(int)
    p = s.calibrated(u, ok, seed=5)
    cv = StratifiedKFold(5, shuffle=True, random_state=5)
    model = make_pipeline(StandardScaler(), LogisticRegression())
    ref = cross_val_predict(model, u[:, None], ok, cv=cv, method="predict_proba")[:, 1]
    assert p == pytest.approx(ref, abs=1e-12)
    assert s.brier(p, ok) == pytest.approx(np.mean((p - ok) ** 2))
    ece = sum(
        abs(ok[m].mean() - p[m].mean()) * m.mean()
        for b in range(10)
        if (m := (np.floor(p * 10).clip(max=9) == b)).any()
    )
    assert s.ece(p, ok) == pytest.approx(ece, abs=1e-12)
    assert np.isnan(s.calibrated(u[:5], [1, 1, 1, 1, 0], seed=0)).all()  # one wrong: no folds


def _frame(n=30, seed=0):
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < 0.6
    return pd.DataFrame(
        {
            "id": [f"x{i}" for i in range(n)],
            "correct": correct,
            "answer_mean_logprob": np.where(correct, -0.2, -1.0) + rng.normal(0, 0.5, n),
            "answer_mean_entropy": np.where(correct, 0.5, 1.5) + rng.normal(0, 0.7, n),
            "generation_stops": rng.random(n),
        }
    )


def test_score_signals_orients_by_direction_and_reports_cis():
    frame = _frame()
    table, curves = s.score_signals(frame, ["answer_mean_logprob", "answer_mean_entropy",
                                            "generation_stops"], n_boot=200, seed=1)  # fmt: skip
    row = table.set_index("signal").loc["answer_mean_logprob"]
    err = ~frame["correct"]
    assert row["direction"] == "lower"  # low log-prob predicts an error: scored as -logprob
    assert row["roc_auc"] == pytest.approx(roc_auc_score(err, -frame["answer_mean_logprob"]))
    assert row["roc_auc_lo"] <= row["roc_auc"] <= row["roc_auc_hi"]
    assert row["prr_lo"] < row["prr"] < row["prr_hi"]
    assert table.set_index("signal").loc["answer_mean_entropy", "direction"] == "higher"
    assert list(table["prr"]) == sorted(table["prr"], reverse=True)  # best PRR first
    assert set(curves["signal"]) == {*table["signal"], "oracle", "random"}
    part = curves[curves["signal"] == "answer_mean_entropy"]
    assert part["risk"].mean() == pytest.approx(
        table.set_index("signal").loc["answer_mean_entropy", "aurc"]
    )
    # the gain over the best baseline: 0 for itself; for STOPS a paired bootstrap, redone here
    # by duplicating the examples of the same seeded draws
    t = table.set_index("signal")
    best = t["vs_baseline"].iloc[0]
    assert t.loc[best, ["prr_gain", "prr_gain_lo", "prr_gain_hi"]].tolist() == [0, 0, 0]
    stops = t.loc["generation_stops"]
    assert stops.prr_gain == pytest.approx(stops.prr - t.loc[best, "prr"])
    w = np.random.default_rng(1).multinomial(30, np.full(30, 1 / 30), size=200)
    u_best = frame[best] * (-1 if t.loc[best, "direction"] == "lower" else 1)
    diffs = []
    for wb in w:
        idx = np.repeat(np.arange(30), wb)
        e = err.to_numpy()[idx]
        diffs.append(s.prr(-frame["generation_stops"].to_numpy()[idx], e) - s.prr(u_best[idx], e))
    assert [stops.prr_gain_lo, stops.prr_gain_hi] == pytest.approx(
        np.nanpercentile(diffs, [2.5, 97.5])
    )
    again, _ = s.score_signals(frame, ["answer_mean_logprob"], n_boot=200, seed=1)
    assert again.iloc[0].to_dict() == row.to_dict() | {"signal": "answer_mean_logprob"}


def test_degenerate_cases_are_reported_not_hidden():
    frame = _frame()
    frame["constant"] = 3.0
    frame["holey"] = frame["answer_mean_entropy"].where(np.arange(30) % 4 != 0)
    frame["empty"] = np.nan
    table, _ = s.score_signals(frame, ["constant", "holey", "empty"], n_boot=50)
    t = table.set_index("signal")
    rate = 1 - frame["correct"].mean()
    assert t.loc["constant", "roc_auc"] == 0.5 and t.loc["constant", "prr"] == 0
    assert t.loc["constant", "aurc"] == pytest.approx(rate)
    assert "constant signal" in t.loc["constant", "note"]
    assert t.loc["constant", "direction"] == "higher (assumed)"
    # NaNs counted and left out: the metrics are those of the finite rows, not of NaN -> 0
    keep = np.arange(30) % 4 != 0
    assert t.loc["holey", "n_nonfinite"] == 8 and t.loc["holey", "n"] == 22
    sub = frame[keep]
    assert t.loc["holey", "roc_auc"] == pytest.approx(roc_auc_score(~sub.correct, sub.holey))
    assert t.loc["empty", "n"] == 0 and "no finite value" in t.loc["empty", "note"]
    assert np.isnan(t.loc["empty", "prr"])
    for value, word in ((True, "correct"), (False, "wrong")):
        table, curves = s.score_signals(frame.assign(correct=value), ["holey"], n_boot=20)
        row = table.iloc[0]
        assert f"all 22 answers {word}" in row["note"] and "undefined" in row["note"]
        assert all(np.isnan(row[m]) for m in s.METRICS)
        assert curves.empty


def test_per_example_baselines_by_hand():
    tokens = pd.DataFrame(
        {
            "id": ["a"] * 4 + ["b"] * 2,
            "step": [0, 1, 2, 3, 0, 1],
            "logprob": [-0.1, -2.0, -0.5, -1.5, -0.3, -0.7],
            "entropy": [0.2, 1.0, 0.4, 3.0, 0.1, 0.9],
            "nucleus_size": [1, 5, 2, 9, 1, 3],
            "stops": [np.nan, 0.4, 0.6, 0.2, np.nan, 0.8],
            "h-1_l1": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        }
    )
    per = s.per_example(tokens, "id", {"answer": {"a": [1, 2], "b": []}, "generation": None})
    a = per.set_index("id").loc["a"]
    assert a["answer_mean_logprob"] == pytest.approx(-1.25)
    assert a["answer_sequence_logprob"] == pytest.approx(-2.5)
    assert a["answer_perplexity"] == pytest.approx(np.exp(1.25))
    assert a["answer_max_entropy"] == pytest.approx(1.0)
    assert a["answer_mean_nucleus_size"] == pytest.approx(3.5)
    assert a["generation_mean_entropy"] == pytest.approx(1.15)
    assert a["generation_stops"] == pytest.approx(0.4)  # the K = 1 NaN is left out, not 0
    assert a["generation_h-1_l1"] == pytest.approx(2.5)
    b = per.set_index("id").loc["b"]
    assert b[[c for c in per.columns if c.startswith("answer_")]].isna().all()  # no answer
    assert b["generation_sequence_logprob"] == pytest.approx(-1.0)
    assert s.describe("generation_h-1_l1") == ("sparsity", "lower")  # lower l1: sparser
    assert s.describe("prompt_h2_gini") == ("sparsity", "higher")
    assert s.describe("answer_stops") == ("token", "lower")
    assert s.describe("answer_perplexity") == ("baseline", "higher")
    assert s.describe("answer_h2_nonsense") == ("other", None)


@pytest.mark.parametrize(
    "text",
    [
        "Adding gives 12, so \\boxed{\\frac{3}{4}} it is.",
        "über café naïve — so the answer is \\boxed{ 42 }",
        "\\boxed{1} first, then \\boxed{x^2 + 1}",
        "no box at all",
    ],
)
def test_span_tokens_equals_the_full_offsets(tiny_llama, text):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    decoded, offsets = answers.token_offsets(tok, ids)
    span = answers.boxed_span(decoded)
    if span is None:
        assert answers.extract_boxed(decoded) is None
        return
    assert decoded[span[0] : span[1]] == answers.extract_boxed(decoded)
    steps = answers.span_tokens(tok, ids, *span)
    assert steps == answers.answer_tokens(offsets, *span)
    assert answers.extract_boxed(decoded) in tok.decode([ids[i] for i in steps])


def test_generation_signals_from_old_and_new_shards(tiny_llama):
    """Log-prob baselines from the engine's log-probs kept in the generation shards; a shard
    written before they were kept gives NaN (counted later), not a crash or a 0."""
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = tok("so it is \\boxed{12} then", add_special_tokens=False)["input_ids"]
    lps = list(-np.arange(1, len(ids) + 1) / 10)
    old = pd.DataFrame({"id": ["b"], "token_ids": [ids]})
    new = pd.DataFrame({"id": ["a"], "token_ids": [ids], "logprobs": [lps]})
    gens = pd.concat([new, old], ignore_index=True)  # as read_shards concatenates them
    out = run_signals._generation_signals(gens, tok).set_index("id")
    steps = answers.span_tokens(tok, ids, *answers.boxed_span(tok.decode(ids)))
    assert "12" in tok.decode([ids[i] for i in steps])
    assert out.loc["a", "answer_sequence_logprob"] == pytest.approx(sum(lps[i] for i in steps))
    assert out.loc["a", "generation_mean_logprob"] == pytest.approx(np.mean(lps))
    assert out.loc["b"].isna().all()
    assert list(run_signals._generation_signals(old, tok).columns) == ["id"]
