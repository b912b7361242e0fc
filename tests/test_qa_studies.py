"""`entrain qa accuracy | deepmath | longreason | conflict` end to end on a tiny random Llama
(3 blocks, 512-token context), and the statistics and parser they rest on, checked against
scipy / sklearn / independent formulas."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score
from transformers import AutoTokenizer

from entrainment_cli.data import registry
from entrainment_cli.errors import UserError
from entrainment_cli.runs.rundir import RunDir, read_manifest
from entrainment_cli.science import stats
from entrainment_cli.science.answers import parse_choice
from entrainment_cli.science.stats import compare_groups

METRICS = "l1,top5_energy,hoyer,eff_rank"
NAMES = ["l1", "top5_energy", "hoyer", "eff_rank"]


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _figures(run_dir) -> set[str]:
    return {p.name for p in (run_dir / "figures").iterdir()}


def _replot(cli, run_dir, stem: str) -> None:
    """Delete the figures and rebuild them from the tables alone; compare two runs."""
    before = _figures(run_dir)
    for f in (run_dir / "figures").iterdir():
        f.unlink()
    _ok(cli("plot", run_dir))
    assert _figures(run_dir) == before
    other = run_dir.with_name(run_dir.name + "-again")
    shutil.copytree(run_dir, other)
    out = run_dir.with_name(run_dir.name + "-cmp")
    _ok(cli("plot", run_dir, other, "--out", out, "--quiet"))
    assert (out / f"{stem}_compare.png").stat().st_size > 10_000


# -- statistics ------------------------------------------------------------------------------


def test_paired_test_known_answer_and_scipy():
    a = np.array([11.0, 8.0, 13.0, 14.0, 5.0, 7.0, np.nan])
    b = np.array([10.0, 10.0, 10.0, 10.0, 10.0, 7.0, 1.0])
    out = stats.paired_test(b, a)  # d = a - b (the second minus the first)
    # d = 1, -2, 3, 4, -5, 0 (+ one NaN pair): ranks of |d| without the zero are 1..5
    assert out["n"] == 6 and out["n_dropped"] == 1 and out["n_zero"] == 1
    assert out["w_plus"] == 8 and out["w_minus"] == 7
    assert out["rank_biserial"] == pytest.approx(1 / 15)
    d = np.array([1, -2, 3, 4, -5, 0.0])
    assert out["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    ref = sps.wilcoxon(a[:6], b[:6], zero_method="wilcox")
    assert out["wilcoxon_p"] == pytest.approx(ref.pvalue)
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x - 0.5 + rng.normal(scale=0.3, size=40)
    out = stats.paired_test(y, x)
    assert out["wilcoxon_p"] == pytest.approx(sps.wilcoxon(x, y).pvalue)
    assert out["mean_diff"] == pytest.approx((x - y).mean()) and out["rank_biserial"] > 0.8
    assert stats.paired_test(x, x + 1)["rank_biserial"] == 1.0
    with pytest.raises(ValueError):
        stats.paired_test([1, 2], [1, 2, 3])


def test_linear_fit_band_matches_the_matrix_formula():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, 30)
    y = 2 * x + 1 + rng.normal(size=30)
    grid = np.linspace(0, 10, 7)
    params, band = stats.linear_fit_band(x, y, grid)
    ref = sps.linregress(x, y)
    assert params["slope"] == pytest.approx(ref.slope)
    assert params["intercept"] == pytest.approx(ref.intercept)
    assert params["r2"] == pytest.approx(ref.rvalue**2) and params["n"] == 30
    design = np.column_stack([np.ones_like(x), x])
    beta, res, *_ = np.linalg.lstsq(design, y, rcond=None)
    cov = res[0] / (30 - 2) * np.linalg.inv(design.T @ design)
    g = np.column_stack([np.ones_like(grid), grid])
    se = np.sqrt(np.einsum("ij,jk,ik->i", g, cov, g))
    t = sps.t.ppf(0.975, 28)
    np.testing.assert_allclose(band["fit"], g @ beta)
    np.testing.assert_allclose(band["hi"] - band["fit"], t * se)
    np.testing.assert_allclose(band["fit"] - band["lo"], t * se)
    params, band = stats.linear_fit_band([1, 1, 1], [1, 2, 3], grid)  # no spread in x
    assert np.isnan(params["slope"]) and band["fit"].isna().all()


def test_point_biserial_and_auroc_match_scipy_and_sklearn():
    rng = np.random.default_rng(2)
    correct = rng.random(80) < 0.4
    metric = correct * 0.7 + rng.normal(size=80)
    pb = stats.correlate(correct.astype(float), metric, n_boot=100)
    ref = sps.pointbiserialr(correct, metric)
    assert pb["pearson_r"] == pytest.approx(ref.statistic)
    assert pb["pearson_p"] == pytest.approx(ref.pvalue)
    df = pd.DataFrame({"correct": correct, "m": metric})
    row = compare_groups(df, ["m"]).iloc[0]
    assert row["auroc"] == pytest.approx(roc_auc_score(correct, metric))


# -- the letter parser -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("**D.**", "D"),
        ("The answer is (B).", "B"),
        ("Answer: C", "C"),
        ("answer:E", "E"),
        ("I think the answer is D", "D"),
        ("A good guess would be C", "C"),
        ("A", "A"),
        ("A) 6 marbles", "A"),
        ("A. Tom is a visitor.", "A"),
        ("I'm going with (E)", "E"),
        ("Option B is right", "B"),
        ("Dina finished third, so D.", "D"),
        ("It is C", "C"),
    ],
)
def test_parse_choice_finds_the_letter(reply, letter):
    assert parse_choice(reply) == letter


@pytest.mark.parametrize(
    "reply",
    [
        "The capital is Paris.",  # upstream: 'T','h','e' -> E
        "Everything depends on it",
        "answer is e",  # lower case never counts
        "I am not sure.",
        "A dog barked.",
        "Because Dave said so",
        "the best is B-52 bomber",
        "Bob's choice",
        "",
    ],
)
def test_parse_choice_takes_no_letter_out_of_words(reply):
    assert parse_choice(reply) is None


def test_parse_choice_letter_sets():
    assert parse_choice("(H)", "ABCDEFGHIJ") == "H"
    assert parse_choice("(H)") is None  # not an option of A-E
    assert parse_choice("I", "ABCDEFGHIJ") == "I"
    assert parse_choice("I think so", "ABCDEFGHIJ") is None
    with pytest.raises(ValueError):
        parse_choice("B", "abc")


# -- the registry: splits, hub-less datasets, grouped JSON -----------------------------------


def test_registry_splits_and_hubless_sample(tmp_path, caplog):
    caplog.set_level("WARNING", logger="entrain")
    spec = registry.get_spec("longreason")
    with pytest.raises(UserError, match="dataset 'longreason' has no split '5k'; its splits: "):
        registry.load(spec, None, "5k")
    data = registry.load(spec, None, "64k")
    assert data.source == "sample" and data.identity()["split"] == "64k"
    assert {r["split"] for r in data.rows} == {"64k"} and len(data.rows) == 4
    for name in ("deepmath", "longreason", "conflict"):
        s = registry.get_spec(name)
        rows = registry.load(s).rows
        assert rows and all(all(f in r for f in s.fields) for r in rows)
    conflict = registry.get_spec("conflict")
    assert registry.load(conflict).source == "sample" and "conflict has no hub copy" in caplog.text
    # upstream's data.json: {subject: [items]}
    items = registry.load(conflict).rows[:3]
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"Geo": items[:2], "Sci": items[2:]}))
    rows = registry.load(conflict, path).rows
    assert [r["subject"] for r in rows] == ["Geography"] * 3  # a row's own subject is kept
    bare = [{k: v for k, v in r.items() if k != "subject"} for r in items]
    path.write_text(json.dumps({"Geo": bare[:2], "Sci": bare[2:]}))
    assert [r["subject"] for r in registry.load(conflict, path).rows] == ["Geo", "Geo", "Sci"]
    path.write_text("\n".join(json.dumps(r) for r in items[:2]) + "\n")  # .json, JSON lines
    assert registry.load(conflict, path).rows == items[:2]


# -- qa deepmath -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deepmath_run(tiny_llama, tmp_path_factory):
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app

    out = tmp_path_factory.mktemp("dm") / "run"
    args = ["qa", "deepmath", "--model", tiny_llama, "--run-dir", out, "--sample", 12, "--seed", 3,
            "--layers", "1,-1", "--metrics", METRICS, "--n-boot", 100, "--quiet"]  # fmt: skip
    _ok(CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False))
    return out


def test_deepmath_seeded_sample_and_tables(deepmath_run, cli):
    data = registry.load(registry.get_spec("deepmath"))
    pick = np.sort(np.random.default_rng(3).choice(len(data.rows), 12, replace=False))
    samples = pd.read_parquet(deepmath_run / "tables" / "samples.parquet")
    last = samples[samples.layer == -1]
    assert last["id"].tolist() == [data.ids[i] for i in pick]
    assert last["difficulty"].tolist() == [float(data.rows[i]["difficulty"]) for i in pick]
    corr = pd.read_csv(deepmath_run / "tables" / "correlations.csv")
    assert len(corr) == 2 * (2 + len(NAMES))  # the two lengths first, as baselines
    c = corr[(corr.layer == -1) & (corr.metric == "hoyer")].iloc[0]
    assert c["n"] == 12
    assert c["pearson_r"] == pytest.approx(sps.pearsonr(last.difficulty, last.hoyer).statistic)
    rho = sps.spearmanr(last.difficulty, last.hoyer)
    assert c["spearman_rho"] == pytest.approx(rho.statistic)
    assert c["spearman_p"] == pytest.approx(rho.pvalue)
    expected = (np.sign(rho.statistic) > 0) and rho.pvalue < 0.05  # hoyer: sparser = higher
    assert bool(c["supports_sparser_when_harder"]) == expected
    fit = pd.read_csv(deepmath_run / "tables" / "fit.csv")
    f = fit[(fit.layer == -1) & (fit.metric == "l1")].iloc[0]
    assert f["slope"] == pytest.approx(sps.linregress(last.difficulty, last.l1).slope)
    band = pd.read_csv(deepmath_run / "tables" / "band.csv")
    assert len(band) == 2 * len(NAMES) * 50 and (band.lo <= band.fit).all()
    m = read_manifest(deepmath_run)
    assert m["status"] == "done" and m["seed"] == 3 and m["dataset"]["data_source"] == "sample"
    assert _figures(deepmath_run) == {
        f"{stem}.{e}" for stem in ("difficulty_scatter_layer1", "difficulty_scatter_layer-1",
                                   "controls") for e in ("png", "pdf")
    }  # fmt: skip
    _replot(cli, deepmath_run, "deepmath")


# -- qa conflict -----------------------------------------------------------------------------


def test_conflict_paired_tests(cli, tiny_llama, tmp_path):
    out = tmp_path / "c"
    _ok(cli("qa", "conflict", "--model", tiny_llama, "--run-dir", out, "--limit", 8,
            "--metrics", METRICS, "--quiet"))  # fmt: skip
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    assert len(samples) == 8 * 3 and set(samples.condition) == {
        "conflict",
        "nonconflict",
        "control",
    }
    assert samples[NAMES].dtypes.eq(np.float64).all()
    rows = registry.load(registry.get_spec("conflict")).rows
    first = samples.iloc[0]
    assert rows[0]["conflicting_knowledge"] in first.prompt and "True or False" in first.prompt
    paired = pd.read_csv(out / "tables" / "paired.csv")
    wide = samples.pivot(index="item", columns="condition", values="l1")
    summary = pd.read_csv(out / "tables" / "summary.csv").set_index(["condition", "metric"])
    for a in ("nonconflict", "control"):  # b - a: conflict minus its reference
        row = paired[(paired.a == a) & (paired.metric == "l1")].iloc[0]
        assert row["b"] == "conflict" and row["n"] == 8
        assert row["wilcoxon_p"] == pytest.approx(sps.wilcoxon(wide.conflict, wide[a]).pvalue)
        assert row["mean_diff"] == pytest.approx((wide.conflict - wide[a]).mean())
        # every pair is complete: the paired means are the summary's
        assert row["mean_a"] == pytest.approx(summary.loc[(a, "l1"), "mean"])
        assert row["mean_b"] == pytest.approx(summary.loc[("conflict", "l1"), "mean"])
    assert {"n_prompt_tokens", "n_prompt_chars"} <= set(paired.metric)  # the length confound
    ctrl = pd.read_csv(out / "tables" / "controls.csv")
    assert set(zip(ctrl.a, ctrl.b, strict=True)) == {("nonconflict", "conflict"),
                                                     ("control", "conflict")}  # fmt: skip
    assert ctrl["note"].str.contains("only the context differs").any()
    assert _figures(out) == {f"{s}.{e}" for s in ("conditions_layer-1", "controls")
                             for e in ("png", "pdf")}  # fmt: skip
    _replot(cli, out, "conflict")


# -- qa longreason ---------------------------------------------------------------------------


def test_plot_report_over_runs_of_several_commands(cli, deepmath_run, tiny_llama, tmp_path):
    conflict = tmp_path / "conflict"
    _ok(cli("qa", "conflict", "--model", tiny_llama, "--run-dir", conflict, "--limit", 4,
            "--metrics", METRICS, "--quiet"))  # fmt: skip
    other = tmp_path / "deepmath-2"
    shutil.copytree(deepmath_run, other)
    report = tmp_path / "report"
    _ok(cli("plot", deepmath_run, other, conflict, "--out", report, "--quiet"))
    assert (report / "qa-deepmath" / "deepmath_compare.png").stat().st_size > 10_000
    assert not (report / "qa-conflict" / "conflict_compare.png").exists()  # one run: no compare
    for rd, command in ((deepmath_run, "qa-deepmath"), (other, "qa-deepmath"),
                        (conflict, "qa-conflict")):  # fmt: skip
        copied = report / command / rd.name
        assert {p.name for p in copied.iterdir()} == _figures(rd)
        for p in copied.iterdir():
            assert p.read_bytes() == (rd / "figures" / p.name).read_bytes()
    assert cli("plot", deepmath_run, other).exit_code == 2  # comparing needs --out


def test_longreason_layers_skips_and_answers(cli, tiny_llama, tmp_path):
    out = tmp_path / "l"
    _ok(cli("qa", "longreason", "--model", tiny_llama, "--run-dir", out, "--splits", "8k,64k",
            "--limit", 3, "--engine", "hf", "--max-tokens", 3, "--metrics", METRICS,
            "--quiet"))  # fmt: skip
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    assert sorted(samples.layer.unique()) == [-1, 0, 1, 2, 3]  # all: embeddings .. 3, norm
    accuracy = pd.read_csv(out / "tables" / "accuracy.csv", dtype={"split": str})
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    # the 64k sample rows are longer than the tiny model's 512-token window: skipped, counted
    answers = pd.read_parquet(out / "tables" / "answers.parquet")
    too_long = answers.n_prompt_tokens + 3 > 512
    assert answers.skipped_too_long.tolist() == too_long.tolist()
    assert accuracy.set_index("split").skipped_too_long.to_dict() == {"8k": 0, "64k": 3}
    assert set(samples.split) == {"8k"} and read_manifest(out)["counts"]["skipped_too_long"] == 3
    assert answers[answers.skipped_too_long].reply.isna().all()
    done = answers[~answers.skipped_too_long]
    for row in done.itertuples():
        assert row.prediction == parse_choice(row.reply)
        assert row.correct == (row.prediction == row.gold)
    assert accuracy.iloc[0]["correct"] == int(done.correct.sum())
    assert len(tok(done.reply.iloc[0], add_special_tokens=False)["input_ids"]) <= 3
    profile = pd.read_csv(out / "tables" / "profile.csv", dtype={"split": str})
    p = profile[(profile.split == "8k") & (profile.layer == 2) & (profile.metric == "hoyer")]
    assert p["mean"].iloc[0] == pytest.approx(samples[samples.layer == 2].hoyer.mean())
    assert _figures(out) == {
        f"{s}.{e}" for s in ("layer_profile", "accuracy") for e in ("png", "pdf")
    }
    _replot(cli, out, "longreason")


def test_longreason_paired_splits(cli, tiny_llama, tmp_path):
    out = tmp_path / "l2"
    _ok(cli("qa", "longreason", "--model", tiny_llama, "--run-dir", out, "--splits", "8k,32k",
            "--layers", "-1", "--engine", "hf", "--max-tokens", 1, "--metrics", "l1",
            "--quiet"))  # fmt: skip
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    wide = samples.pivot(index="example_idx", columns="split", values="l1")
    paired = pd.read_csv(out / "tables" / "paired.csv", dtype={"a": str, "b": str})
    row = paired[paired.metric == "l1"].iloc[0]
    assert (row.a, row.b, row.n) == ("8k", "32k", 4)  # b - a: the longer split minus the first
    profile = pd.read_csv(out / "tables" / "profile.csv", dtype={"split": str})
    means = profile[profile.metric == "l1"].set_index("split")["mean"]
    assert (row.mean_a, row.mean_b) == (pytest.approx(means["8k"]), pytest.approx(means["32k"]))
    controls = pd.read_csv(out / "tables" / "controls.csv")
    assert controls["note"].str.contains("length is the manipulated variable").all()
    assert row["mean_diff"] == pytest.approx((wide["32k"] - wide["8k"]).mean())


# -- qa accuracy -----------------------------------------------------------------------------


@pytest.fixture
def scripted(script_engine, tiny_llama):
    """An engine whose answers are known: the gold answer boxed for every other problem."""
    gold = {i: str(r["answer"]) for i, r in zip(*_math(), strict=True)}
    order = sorted(gold)

    def reply(key):
        answer = gold[key] if order.index(key) % 2 == 0 else "-1"
        return f"So it is \\boxed{{{answer}}}."

    script_engine(tiny_llama, reply)
    return order


def _math():
    data = registry.load(registry.get_spec("math500"))
    return data.ids, data.rows


def test_accuracy_grades_and_associates(cli, tiny_llama, scripted, tmp_path):
    out = tmp_path / "a"
    _ok(cli("qa", "accuracy", "--model", tiny_llama, "--run-dir", out, "--engine", "hf",
            "--max-tokens", 32, "--metrics", METRICS, "--layers", "2,-1", "--n-boot", 100,
            "--quiet"))  # fmt: skip
    answers = pd.read_parquet(out / "tables" / "answers.parquet")
    ids, rows = _math()
    assert answers.id.tolist() == ids
    expected = [scripted.index(i) % 2 == 0 for i in ids]
    assert answers.correct.tolist() == expected
    assert answers.prediction.tolist() == [
        str(r["answer"]) if e else "-1" for r, e in zip(rows, expected, strict=True)
    ]
    by_level = pd.read_csv(out / "tables" / "accuracy_by_level.csv")
    for row in by_level.itertuples():
        part = answers[answers.level == row.level]
        assert (row.n, row.correct) == (len(part), part.correct.sum())
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    last = samples[samples.layer == -1]
    assoc = pd.read_csv(out / "tables" / "association.csv")
    a = assoc[(assoc.layer == -1) & (assoc.metric == "top5_energy")].iloc[0]
    ref = sps.pointbiserialr(last.correct, last.top5_energy)
    assert a["point_biserial_r"] == pytest.approx(ref.statistic)
    assert a["point_biserial_p"] == pytest.approx(ref.pvalue)
    assert a["auroc"] == pytest.approx(roc_auc_score(last.correct, last.top5_energy))
    means = last.groupby("level").top5_energy.mean()
    acc = answers.groupby("level").correct.mean()
    assert a["level_means_r"] == pytest.approx(np.corrcoef(acc, means)[0, 1])
    m = read_manifest(out)
    assert m["counts"]["correct"] == sum(expected) and m["engine"] == "hf"
    assert _figures(out) == {
        f"{stem}.{e}"
        for stem in [*(f"accuracy_levels_layer{x}_last-prompt" for x in (2, -1)),
                     "signals_rank", "risk_coverage", "controls"]
        for e in ("png", "pdf")
    }  # fmt: skip
    length = assoc[(assoc.layer == -1) & (assoc.metric == "n_prompt_tokens")].iloc[0]
    assert length["auroc"] == pytest.approx(roc_auc_score(last.correct, last.n_prompt_tokens))
    table = pd.read_csv(out / "tables" / "signals.csv").set_index("signal")
    # the model-free baselines of a graded run: prompt and response length in tokens
    assert table.loc["prompt_length", "kind"] == "baseline"
    assert table.loc["response_length", "n"] == len(answers)
    sparsity = table.loc["prompt_h-1_top5_energy"]  # more energy in the top 5% is sparser
    assert (sparsity.direction, sparsity.n) == ("higher", len(ids))
    assert sparsity.n_errors == len(ids) - sum(expected)
    assert sparsity.roc_auc == pytest.approx(1 - a["auroc"])  # errors positive: the mirror
    flat = table.loc["answer_mean_logprob"]  # the scripted engine's log-probs are all 0
    assert flat.roc_auc == 0.5 and flat.prr == 0 and "constant" in flat.note
    _replot(cli, out, "accuracy")


def test_accuracy_resumes_without_regenerating(
    cli, ctrl_c, tiny_llama, scripted, tmp_path, monkeypatch
):
    from entrainment_cli.engines.probe import HiddenProbe

    args = ["qa", "accuracy", "--model", tiny_llama, "--engine", "hf", "--max-tokens", 32,
            "--limit", 1, "--batch-size", 2, "--metrics", "l1", "--quiet"]  # fmt: skip
    whole = tmp_path / "whole"
    _ok(cli(*args, "--run-dir", whole))
    part = tmp_path / "part"
    with ctrl_c(HiddenProbe, "measure", 2):
        assert cli(*args, "--run-dir", part).exit_code == 130
    assert read_manifest(part)["status"] == "failed"
    monkeypatch.setattr(
        "entrainment_cli.pipeline.make_engine",
        lambda *a, **k: pytest.fail("a resumed run must not generate again"),
    )
    _ok(cli(*args, "--run-dir", part, "--resume"))
    assert read_manifest(part)["counts"]["already_done"] == 2
    for table in ("answers", "samples"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(whole / "tables" / f"{table}.parquet"),
            pd.read_parquet(part / "tables" / f"{table}.parquet"),
        )


def test_accuracy_real_generation(cli, tiny_llama, tmp_path):
    out = tmp_path / "g"
    _ok(cli("qa", "accuracy", "--model", tiny_llama, "--run-dir", out, "--engine", "hf",
            "--limit", 1, "--max-tokens", 4, "--metrics", "l1", "--quiet"))  # fmt: skip
    answers = pd.read_parquet(out / "tables" / "answers.parquet")
    assert len(answers) == 5 and (answers.n_generated <= 4).all()
    assert not answers.correct.any()  # a random model does not box the right answer
    assert read_manifest(out)["counts"]["no_boxed_answer"] == answers.prediction.isna().sum()
    gens = RunDir(out, read_manifest(out)).read_in_order("generations", ["id"], answers.id.tolist())
    values = pd.read_parquet(out / "tables" / "signal_values.parquet")
    assert values.generation_sequence_logprob.tolist() == pytest.approx(
        [sum(lp) for lp in gens.logprobs]
    )  # the engine's log-probs, saved beside the tokens
    table = pd.read_csv(out / "tables" / "signals.csv")
    scored = table[table.n > 0]  # answer-scope signals need a boxed answer: none here
    assert scored.note.str.startswith("all 5 answers wrong").all() and table.prr.isna().all()
    assert "prompt_h-1_l1" in set(scored.signal)


def test_accuracy_on_vllm_and_the_embedded_model(cli, vllm_engine, tmp_path):
    from entrainment_cli.science.answers import extract_boxed, math_equal

    out = tmp_path / "v"
    _ok(cli("qa", "accuracy", "--engine", "vllm", "--limit", 1, "--max-tokens", 24,
            "--metrics", "l1", "--run-dir", out, "--quiet"))  # fmt: skip
    m = read_manifest(out)
    assert m["engine"] == "vllm" and m["model"]["source"] == "embedded"
    answers = pd.read_parquet(out / "tables" / "answers.parquet")
    assert len(answers) == 5 and answers.output.str.len().gt(0).all()
    for row in answers.itertuples():
        assert row.prediction == extract_boxed(row.output)
        assert row.correct == math_equal(row.prediction, row.gold)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("study", ["accuracy", "deepmath", "longreason", "conflict"])
def test_layers_out_of_range_is_one_line(cli, tiny_llama, tmp_path, study):
    result = cli("qa", study, "--model", tiny_llama, "--layers", "9", "--quiet")
    assert result.exit_code == 2
    assert "layer 9 is out of range; this model has 3 blocks" in " ".join(result.stderr.split())
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["longreason", "--splits", "8k,5k"], "'longreason' has no split '5k'; its splits:"),
        (["longreason", "--engine", "fast"], "unknown --engine 'fast'"),
        (["deepmath", "--sample", "0"], "--sample must be at least 1"),
        (["conflict", "--metrics", "l1,spikiness"], "unknown metric 'spikiness'"),
        (["accuracy", "--max-tokens", "0"], "--max-tokens must be at least 1"),
        (["accuracy"], "fits the model's context of 512 tokens with --max-tokens 1024 to spare"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line(cli, tiny_llama, tmp_path, args, message):
    result = cli("qa", *args[:1], "--model", tiny_llama, *args[1:], "--quiet")
    assert result.exit_code == 2 and message in " ".join(result.stderr.split())
    assert not (tmp_path / "runs").exists()


def test_data_files_missing_fields_or_bad_values(cli, tiny_llama, tmp_path):
    conflict = registry.load(registry.get_spec("conflict")).rows[0]
    path = tmp_path / "c.jsonl"
    del conflict["parametric_knowledge"], conflict["main_entity"]
    path.write_text(json.dumps(conflict) + "\n")
    result = cli("qa", "conflict", "--model", tiny_llama, "--data-file", path)
    assert result.exit_code == 2
    assert "line 1: missing field(s) main_entity, parametric_knowledge" in result.stderr
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "difficulty": "hard"}) + "\n")
    result = cli("qa", "deepmath", "--model", tiny_llama, "--data-file", path)
    assert result.exit_code == 2 and "difficulty 'hard' is not a number" in result.stderr
    row = registry.load(registry.get_spec("longreason")).rows[0]
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps({**row, "answer": "F"}) + "\n")
    result = cli("qa", "longreason", "--model", tiny_llama, "--data-file", path, "--splits", "8k")
    assert result.exit_code == 2 and "answer 'F' is not one of the letters" in result.stderr
    result = cli("qa", "longreason", "--model", tiny_llama, "--data-file", path, "--splits", "16k")
    assert result.exit_code == 2 and "has no rows of split '16k'" in result.stderr
    path.write_text(json.dumps({k: v for k, v in row.items() if k != "split"}) + "\n")
    result = cli("qa", "longreason", "--model", tiny_llama, "--data-file", path)
    assert result.exit_code == 2 and "has no 'split' field, so it holds one split" in result.stderr
    assert not (tmp_path / "runs").exists()


COMMON = ["--model", "--data-file", "--limit", "--layers", "--metrics", "--batch-size", "--device",
          "--dtype", "--seed", "--run-dir", "--runs-dir", "--resume", "--quiet"]  # fmt: skip


@pytest.mark.parametrize(
    ("study", "generates", "says"),
    [
        ("accuracy", True, "point-biserial"),
        ("deepmath", False, "Spearman"),
        ("longreason", True, "skipped and counted"),
        ("conflict", False, "Wilcoxon signed-rank"),
    ],
)
def test_help_lists_the_common_options(cli, study, generates, says):
    result = cli("qa", study, "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for option in COMMON:
        assert option in text
    assert ("--engine" in text) == generates and ("--max-tokens" in text) == generates
    assert says in text
