"""`entrain qa rankmath` end to end on a tiny random Llama, checked against independent math."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from test_sparsity import reference
from transformers import AutoModelForCausalLM, AutoTokenizer

from entrainment_cli.data import registry
from entrainment_cli.engines.probe import HiddenProbe
from entrainment_cli.runs.rundir import read_manifest

METRICS = "l1,top10_energy,eff_rank,hoyer,l0_norm"
NAMES = ["l1", "top10_energy", "eff_rank", "hoyer", "l0_outlier"]


def _run(cli, model, run_dir, *extra):
    return cli(
        "qa",
        "rankmath",
        "--model",
        model,
        "--run-dir",
        run_dir,
        "--metrics",
        METRICS,
        "--batch-size",
        "4",
        "--n-boot",
        "200",
        "--quiet",
        *extra,
    )


@pytest.fixture(scope="module")
def finished(tiny_llama, tmp_path_factory):
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app

    out = tmp_path_factory.mktemp("rm") / "run"
    args = [
        "qa",
        "rankmath",
        "--model",
        str(tiny_llama),
        "--run-dir",
        str(out),
        "--metrics",
        METRICS,
        "--layers",
        "1,-1",
        "--batch-size",
        "4",
        "--n-boot",
        "200",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_tables_and_manifest(finished, tiny_llama):
    samples = pd.read_parquet(finished / "tables" / "samples.parquet")
    data = registry.load(registry.get_spec("math500"))
    assert list(samples.columns) == [
        "id",
        "level",
        "subject",
        "prompt",
        "n_prompt_tokens",
        "layer",
        "position",
        *NAMES,
    ]
    assert len(samples) == 2 * len(data.rows) and not samples.duplicated(["id", "layer"]).any()
    assert samples[samples.layer == -1]["id"].tolist() == data.ids  # dataset order
    m = read_manifest(finished)
    assert m["status"] == "done" and m["command"] == "qa rankmath"
    assert m["dataset"]["data_source"] == "sample" and m["seed"] == 0
    assert m["model"]["source"] == "local" and len(m["model"]["weights_sha256"]) == 64
    assert m["counts"]["probed"] == len(data.rows) and m["prompt_format"] == "chat"
    assert m["versions"]["torch"].startswith("2.13") and m["timings"]["probe"]["prompts"] > 0
    for stem in (
        "levels_layer-1_last-prompt",
        "levels_layer1_last-prompt",
        "layer_profile_last-prompt",
    ):
        assert (finished / "figures" / f"{stem}.png").stat().st_size > 10_000
        assert (finished / "figures" / f"{stem}.pdf").is_file()


def test_metrics_match_an_independent_pass(finished, tiny_llama):
    """Re-tokenize the saved prompt, run the full model unbatched, recompute with NumPy."""
    samples = pd.read_parquet(finished / "tables" / "samples.parquet")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    for row in samples[samples.layer == -1].head(6).itertuples():
        assert row.prompt.startswith("<|im_start|>system") and row.prompt.endswith("assistant\n")
        ids = tok(row.prompt, add_special_tokens=False, return_tensors="pt").input_ids
        assert ids.shape[1] == row.n_prompt_tokens
        with torch.no_grad():
            h = model(ids, output_hidden_states=True).hidden_states[-1][0, -1].numpy()
        for name in NAMES:
            assert getattr(row, name) == pytest.approx(reference(name, h), rel=1e-4, abs=1e-6)


def test_summary_and_correlations_recomputed(finished):
    samples = pd.read_parquet(finished / "tables" / "samples.parquet")
    summary = pd.read_csv(finished / "tables" / "summary.csv")
    corr = pd.read_csv(finished / "tables" / "correlations.csv")
    part = samples[samples.layer == -1]
    for level, group in part.groupby("level"):
        row = summary[(summary.layer == -1) & (summary.level == level) & (summary.metric == "l1")]
        row = row.iloc[0]
        values = group["l1"].to_numpy()
        assert row["n"] == len(values)
        assert row["mean"] == pytest.approx(values.mean())
        assert row["std"] == pytest.approx(values.std(ddof=1))
        assert row["sem"] == pytest.approx(values.std(ddof=1) / np.sqrt(len(values)))
        assert row["median"] == pytest.approx(np.median(values))
    c = corr[(corr.layer == -1) & (corr.metric == "hoyer")].iloc[0]
    rho, p = stats.spearmanr(part["level"], part["hoyer"])
    r, _ = stats.pearsonr(part["level"], part["hoyer"])
    assert c["n"] == len(part)  # over all problems, not the 5 level means
    assert c["spearman_rho"] == pytest.approx(rho) and c["spearman_p"] == pytest.approx(p)
    assert c["pearson_r"] == pytest.approx(r)
    assert c["spearman_lo"] <= rho <= c["spearman_hi"]
    assert c["sparser_when"] == "higher"


def test_interrupted_run_resumes_to_the_same_table(cli, ctrl_c, tiny_llama, tmp_path):
    whole = tmp_path / "whole"
    assert _run(cli, tiny_llama, whole).exit_code == 0
    part = tmp_path / "part"
    with ctrl_c(HiddenProbe, "measure", 3):
        assert _run(cli, tiny_llama, part).exit_code == 130  # interrupted, as after Ctrl-C
    m = read_manifest(part)
    assert m["status"] == "failed" and not (part / "tables" / "samples.parquet").exists()
    assert len(list((part / "tables" / "shards" / "samples").glob("*.parquet"))) == 2
    assert not (part / ".lock").exists()
    result = _run(cli, tiny_llama, part, "--resume")
    assert result.exit_code == 0, result.output
    m = read_manifest(part)
    assert m["status"] == "done" and m["resumed"] == 1 and m["counts"]["already_done"] == 8
    a = pd.read_parquet(whole / "tables" / "samples.parquet")
    b = pd.read_parquet(part / "tables" / "samples.parquet")
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(
        pd.read_csv(whole / "tables" / "summary.csv"), pd.read_csv(part / "tables" / "summary.csv")
    )


def test_resume_with_other_settings_is_refused(cli, tiny_llama, finished):
    before = (finished / "tables" / "samples.parquet").read_bytes()
    result = _run(cli, tiny_llama, finished, "--resume", "--layers", "0")
    assert result.exit_code == 2 and "different settings" in result.stderr
    assert (finished / "tables" / "samples.parquet").read_bytes() == before


def test_limit_per_level_and_positions(cli, tiny_llama, tmp_path):
    out = tmp_path / "r"
    result = _run(cli, tiny_llama, out, "--limit", "2", "--positions", "last-prompt,mean-prompt")
    assert result.exit_code == 0, result.output
    s = pd.read_parquet(out / "tables" / "samples.parquet")
    assert s.groupby("level")["id"].nunique().tolist() == [2] * 5
    assert set(s["position"]) == {"last-prompt", "mean-prompt"}


def test_plot_rebuilds_figures_and_compares(cli, finished, tiny_llama, tmp_path):
    for f in (finished / "figures").iterdir():
        f.unlink()
    result = cli("plot", finished)
    assert result.exit_code == 0, result.output
    assert (finished / "figures" / "levels_layer-1_last-prompt.png").is_file()
    assert (finished / "figures" / "layer_profile_last-prompt.png").is_file()
    other = tmp_path / "other"
    assert _run(cli, tiny_llama, other, "--limit", "1").exit_code == 0
    result = cli("plot", finished, other, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cmp" / "rankmath_compare.png").stat().st_size > 10_000
    assert cli("plot", finished, other).exit_code == 2  # comparison needs --out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--dataset", "nope"],
            "unknown --dataset 'nope'; use one of "
            + ", ".join(sorted(n for n, s in registry.REGISTRY.items() if "level" in s.fields)),
        ),
        (["--dataset", "gsm8k"], "unknown --dataset 'gsm8k'; use one of math500, math_train"),
        (["--layers", "7"], "layer 7 is out of range; this model has 3 blocks"),
        (["--metrics", "l1,sparsiness"], "unknown metric 'sparsiness'; known metrics: l1,"),
        (["--positions", "first"], "unknown position 'first'"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--model", "/no/such/dir"], "model directory /no/such/dir does not exist"),
        (["--model", "missing.gguf"], "model file missing.gguf does not exist"),
        (["--resume"], "--resume needs --run-dir"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tiny_llama, tmp_path, args, message):
    argv = ["qa", "rankmath", "--quiet"]
    if "--model" not in args:
        argv += ["--model", tiny_llama]
    result = cli(*argv, *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_bad_data_file_names_the_line(cli, tiny_llama, tmp_path):
    rows = registry.load(registry.get_spec("math500")).rows
    path = tmp_path / "math.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n" + '{"problem": "x", \n')
    result = cli("qa", "rankmath", "--model", tiny_llama, "--data-file", path)
    assert result.exit_code == 2 and "line 2: not valid JSON" in result.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    result = cli("qa", "rankmath", "--model", tiny_llama, "--data-file", empty)
    assert result.exit_code == 2 and "no problems selected" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_controls_tables_figure_and_report(finished):
    """Length rows beside the metrics, controls recomputed from samples, the figure drawn and
    the report listing the controlled statistic beside the raw one."""
    from entrainment_cli.plots.report import load_run
    from entrainment_cli.science import controls

    tables = finished / "tables"
    samples = pd.read_parquet(tables / "samples.parquet")
    corr = pd.read_csv(tables / "correlations.csv")
    final = samples[samples.layer == -1]
    first = corr[corr.layer == -1].iloc[:2]
    assert list(first["metric"]) == ["n_prompt_tokens", "n_prompt_chars"]
    assert first["sparser_when"].isna().all() and first["spearman_p_holm"].isna().all()
    chars = final["prompt"].str.len()
    assert first.iloc[1]["spearman_rho"] == pytest.approx(
        stats.spearmanr(final["level"], chars).statistic
    )
    metric_rows = corr[corr.metric.isin(NAMES)]
    p = metric_rows["spearman_p"].to_numpy()
    assert (metric_rows["spearman_p_holm"].to_numpy() >= p - 1e-12).all()
    assert np.allclose(metric_rows["spearman_p_holm"], controls.stats.holm(p))

    ctrl = pd.read_csv(tables / "controls.csv")
    assert set(ctrl["verdict"].dropna()) <= {"beyond length", "explained by length", "no effect"}
    row = ctrl[(ctrl.layer == -1) & (ctrl.metric == "l1")].iloc[0]
    expected = controls.partial_spearman(final["level"], final["l1"], final["n_prompt_tokens"])
    assert row["partial_rho"] == pytest.approx(expected)
    assert row["spearman_rho"] == pytest.approx(stats.spearmanr(final["level"], final["l1"])[0])
    base = pd.read_csv(tables / "baselines.csv").set_index("baseline")
    assert list(base.index) == ["n_prompt_tokens", "n_prompt_chars", "tfidf"]
    assert (finished / "figures" / "controls.png").stat().st_size > 10_000
    names = list(load_run(finished).stats["statistic"])
    assert "partial rho(level, l1 | n_prompt_tokens) [layer -1, last-prompt]" in names
    assert names.index("Spearman rho(level, l1) raw [layer -1, last-prompt]") + 1 == names.index(
        "partial rho(level, l1 | n_prompt_tokens) [layer -1, last-prompt]"
    )


def test_results_json_and_the_terminal_table(finished):
    """Every run ends with results.json (one schema) and prints its headline statistics, the
    length baseline and the controlled figure among them."""
    from entrainment_cli.plots.report import load_run, terminal_rows

    results = json.loads((finished / "results.json").read_text())
    stats_ = load_run(finished).stats
    assert results["schema"] == 1 and results["command"] == "qa rankmath"
    assert results["data_source"] == "sample"
    assert results["headline"]["statistic"] == stats_["statistic"].iloc[0]
    assert [r["statistic"] for r in results["statistics"]] == list(stats_["statistic"])
    shown = list(terminal_rows(stats_)["statistic"])
    assert shown[0] == stats_["statistic"].iloc[0] and len(shown) <= 8
    assert any(s.startswith("baseline n_prompt_tokens") for s in shown)
    assert any(s.startswith("partial rho(level, l1 | n_prompt_tokens)") for s in shown)
