"""`entrain probe` end to end on a tiny random Llama and the bundled sample: per-example
metrics against an independent output_hidden_states pass, each question's statistics against
scipy/scikit-learn, and the errors (exit 2, nothing written)."""

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score
from test_sparsity import reference
from transformers import AutoModelForCausalLM, AutoTokenizer

from entrainment_cli.data import registry
from entrainment_cli.runs.rundir import read_manifest

NAMES = ["l1", "l1_rel", "top10_energy", "eff_rank", "hoyer", "gini"]
SAMPLE = registry.sample_path(registry.get_spec("probe"))


@pytest.fixture(scope="module")
def sample_rows():
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


@pytest.fixture(scope="module")
def csv_file(sample_rows, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "arith.csv"
    pd.DataFrame(sample_rows).to_csv(path, index=False)
    return path


def _invoke(*args):
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def template_run(tiny_llama, csv_file, tmp_path_factory):
    """A CSV file, a template, no chat, a numeric label, two layers and two positions."""
    out = tmp_path_factory.mktemp("probe") / "run"
    result = _invoke(
        "probe", "--model", tiny_llama, "--data-file", csv_file, "--template",
        "Question: {text}", "--no-chat", "--id-field", "id", "--label", "difficulty",
        "--layers", "0,-1", "--positions", "last-prompt,mean-prompt", "--metrics",
        ",".join(NAMES), "--batch-size", "5", "--n-boot", "200", "--run-dir", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def questions_run(tiny_llama, tmp_path_factory):
    """The bundled sample with a two-valued label, a group and pairs under conditions."""
    out = tmp_path_factory.mktemp("probe") / "run"
    result = _invoke(
        "probe", "--model", tiny_llama, "--label", "multi_step", "--group", "operation",
        "--pair-id", "pair", "--condition", "phrasing", "--system", "Answer briefly.",
        "--metrics", ",".join(NAMES), "--n-boot", "200", "--run-dir", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_per_example_metrics_equal_output_hidden_states(template_run, sample_rows, tiny_llama):
    samples = pd.read_parquet(template_run / "tables" / "samples.parquet")
    ids = [r["id"] for r in sample_rows]
    # the question's column, then the data's others as given
    assert list(samples.columns) == [
        "id", "prompt", "difficulty", "text", "answer", "multi_step", "operation", "pair",
        "phrasing", "n_prompt_tokens", "layer", "position", *NAMES,
    ]  # fmt: skip
    assert (
        len(samples) == 4 * len(ids) and not samples.duplicated(["id", "layer", "position"]).any()
    )
    assert samples.drop_duplicates("id")["id"].tolist() == ids  # the data's order
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    for row in sample_rows[::7]:
        mine = samples[samples.id == row["id"]]
        prompt = f"Question: {row['text']}"
        assert (mine["prompt"] == prompt).all() and (mine["difficulty"] == row["difficulty"]).all()
        ids_ = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        assert (mine["n_prompt_tokens"] == ids_.shape[1]).all()
        with torch.no_grad():
            hidden = model(ids_, output_hidden_states=True).hidden_states
        for layer, index in ((0, 0), (-1, -1)):
            for position, h in (
                ("last-prompt", hidden[index][0, -1]),
                ("mean-prompt", hidden[index][0].mean(0)),
            ):
                got = mine[(mine.layer == layer) & (mine.position == position)].iloc[0]
                for name in NAMES:
                    assert got[name] == pytest.approx(
                        reference(name, h.numpy()), rel=1e-4, abs=1e-6
                    ), (row["id"], layer, position, name)
    m = read_manifest(template_run)
    assert m["status"] == "done" and m["command"] == "probe" and m["prompt_format"] == "plain"
    assert m["dataset"]["data_source"] == "file" and m["counts"]["probed"] == len(ids)


def test_numeric_label_statistics(template_run):
    samples = pd.read_parquet(template_run / "tables" / "samples.parquet")
    corr = pd.read_csv(template_run / "tables" / "label_correlations.csv")
    binned = pd.read_csv(template_run / "tables" / "label_binned.csv")
    assert not (template_run / "tables" / "label_auroc.csv").exists()
    assert len(corr) == 4 * (2 + len(NAMES)) and (corr["label"] == "difficulty").all()
    length = corr[corr.metric == "n_prompt_tokens"].iloc[0]  # the baseline, scored the same way
    part = samples[(samples.layer == length.layer) & (samples.position == length.position)]
    rho = stats.spearmanr(part.difficulty, part.n_prompt_tokens).statistic
    assert length.spearman_rho == pytest.approx(rho) and np.isnan(length.spearman_p_holm)
    for row in corr[corr.metric.isin(NAMES)].itertuples():
        part = samples[(samples.layer == row.layer) & (samples.position == row.position)]
        assert row.n == len(part)
        x, y = part.difficulty, part[row.metric]
        if y.nunique() == 1:  # layer 0, last prompt token: every question ends with "?"
            assert np.isnan(row.pearson_r) and np.isnan(row.spearman_rho)
            continue
        assert row.pearson_r == pytest.approx(stats.pearsonr(x, y)[0])
        rho, p = stats.spearmanr(x, y)
        assert (row.spearman_rho, row.spearman_p) == (pytest.approx(rho), pytest.approx(p))
        assert row.spearman_lo <= rho <= row.spearman_hi
    b = binned[(binned.layer == -1) & (binned.position == "last-prompt") & (binned.metric == "l1")]
    part = samples[(samples.layer == -1) & (samples.position == "last-prompt")]
    assert b["lo"].tolist() == sorted(part.difficulty.unique())  # one bin per level
    means = part.groupby("difficulty")["l1"].mean().to_numpy()
    assert b["mean"].to_numpy() == pytest.approx(means)
    for stem in ("distributions", "label_binned"):
        for scope in ("layer-1_last-prompt", "layer0_mean-prompt"):
            assert (template_run / "figures" / f"{stem}_{scope}.png").stat().st_size > 10_000


def test_binary_group_and_paired_statistics(questions_run, sample_rows):
    tables = questions_run / "tables"
    samples = pd.read_parquet(tables / "samples.parquet")
    assert samples["prompt"].str.contains("Answer briefly.").all()
    assert read_manifest(questions_run)["prompt_format"] == "chat"
    auroc = pd.read_csv(tables / "label_auroc.csv").set_index("metric")
    y = samples["multi_step"].astype(int)
    for name in NAMES:
        row = auroc.loc[name]
        assert (str(row.positive), str(row.negative)) == ("True", "False")
        assert row.auroc == pytest.approx(roc_auc_score(y, samples[name]))
        mw = stats.mannwhitneyu(samples.loc[y == 1, name], samples.loc[y == 0, name])
        assert row.p == pytest.approx(mw.pvalue) and row.auroc_lo <= row.auroc <= row.auroc_hi
    kw = pd.read_csv(tables / "group_kruskal.csv").set_index("metric")
    groups = [g for _, g in samples.groupby("operation")]
    for name in NAMES:
        ref = stats.kruskal(*(g[name] for g in groups))
        assert kw.loc[name, "h"] == pytest.approx(ref.statistic)
        assert kw.loc[name, "p"] == pytest.approx(ref.pvalue)
        assert kw.loc[name, "epsilon_sq"] == pytest.approx(ref.statistic / (len(samples) - 1))
    summary = pd.read_csv(tables / "group_summary.csv")
    assert sorted(summary["value"].unique()) == sorted({r["operation"] for r in sample_rows})
    paired = pd.read_csv(tables / "paired.csv").set_index("metric")
    wide = samples.pivot(index="pair", columns="phrasing", values=NAMES)
    for name in NAMES:
        row = paired.loc[name]
        assert (row.a, row.b, row.n) == ("symbolic", "verbal", len(wide))
        ref = stats.wilcoxon(wide[(name, "symbolic")], wide[(name, "verbal")])
        assert row.wilcoxon_p == pytest.approx(ref.pvalue)
        assert row.rank_biserial_lo <= row.rank_biserial <= row.rank_biserial_hi
    for stem in ("label_violins", "group_bars", "paired"):
        assert (questions_run / "figures" / f"{stem}_layer-1_last-prompt.png").is_file()


def test_plot_rebuilds_and_compares_runs(template_run, questions_run, tmp_path):
    import shutil

    figures = questions_run / "figures"
    shutil.rmtree(figures)
    result = _invoke("plot", questions_run)
    assert result.exit_code == 0 and (figures / "paired_layer-1_last-prompt.png").is_file()
    twin = tmp_path / "twin"  # a run named twice is one run: compare it with a copy
    shutil.copytree(template_run, twin)
    result = _invoke("plot", template_run, twin, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cmp" / "compare_label_correlations_layer-1_last-prompt.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label", "nope"], r"--label 'nope' is not a field of .*; its fields: id, text,"),
        (["--label", "operation"], r"--label 'operation' is neither numeric nor two-valued"),
        (["--label", "operation"], r"give their order with --label-order"),
        (["--template", "{txt}?"], r"--template \{txt\} 'txt' is not a field"),
        (["--template", "{} x"], "positional placeholder"),
        (["--split", "test"], r"has no 'split' field"),
        (["--pair-id", "pair"], "--pair-id and --condition go together"),
        (["--label", "layer"], "a column the study writes itself"),
        (["--text-field", "text", "--template", "{text}"], "exactly one of"),
        (["--label", "phrasing", "--label-order", "verbal,x"], r"not in --label-order .*symbolic"),
        (["--label-order", "a,b"], "--label-order orders a --label's values: give --label"),
    ],
)
def test_errors_are_one_line_exit_2_and_write_nothing(tmp_path, csv_file, args, message):
    runs = tmp_path / "runs"
    source = (
        [] if any(a in args for a in ("--template", "--text-field")) else ["--text-field", "text"]
    )
    result = _invoke("probe", "--data-file", csv_file, *source, *args, "--runs-dir", runs)
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert out.startswith("error:") and pytest.importorskip("re").search(message, out), out
    assert not runs.exists()


def test_ordinal_text_label_sample_warnings_columns_and_layer_profile(
    tiny_llama, sample_rows, tmp_path
):
    """Issue 22, probe: an ordinal text label (easy/medium/hard) was refused with no way to give
    its order; --sample did not exist; a metric constant over the examples (layer 0 under the
    chat template: every prompt ends in the template's token) and rows dropped for a missing
    label went unsaid; the user's other columns were dropped; no figure by layer."""
    level = {1: "easy", 2: "medium", 3: "hard"}
    rows = [
        {**r, "level": level[min(r["difficulty"], 3)], "tags": [r["operation"], "x"]}
        for r in sample_rows
    ]
    picked = sorted(random.Random(3).sample(range(len(rows)), 12))
    rows[picked[0]]["level"] = None  # a missing label, in the sample
    data = tmp_path / "levels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["probe", "--model", tiny_llama, "--data-file", data, "--text-field", "text"]
    refused = _invoke(*common, "--label", "level", "--runs-dir", tmp_path / "no")
    assert refused.exit_code == 2 and "--label-order" in refused.output

    out = tmp_path / "run"
    result = _invoke(
        *common, "--label", "level", "--label-order", "easy,medium,hard", "--sample", "12",
        "--seed", "3", "--layers", "0,1,-1", "--metrics", "l1,top10_energy", "--n-boot", "100",
        "--run-dir", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    assert samples.drop_duplicates("id")["id"].tolist() == [f"levels-{i}" for i in picked]
    # the user's columns, as given (a list as JSON text); the label as its text
    assert {"text", "answer", "difficulty", "multi_step", "operation", "pair", "phrasing",
            "tags"} <= set(samples.columns)  # fmt: skip
    first = samples.drop_duplicates("id").reset_index(drop=True)
    assert first["text"].tolist() == [rows[i]["text"] for i in picked]
    assert json.loads(first["tags"][1]) == rows[picked[1]]["tags"]
    assert pd.isna(first["level"][0]) and set(first["level"][1:]) <= set(level.values())

    corr = pd.read_csv(out / "tables" / "label_correlations.csv")
    at = samples[(samples.layer == -1) & (samples.position == "last-prompt")]
    at = at[at["level"].notna()]
    ranks = at["level"].map({"easy": 0, "medium": 1, "hard": 2})
    row = corr[(corr.layer == -1) & (corr.metric == "l1")].iloc[0]
    assert row["n"] == 11
    assert row["spearman_rho"] == pytest.approx(stats.spearmanr(ranks, at["l1"]).statistic)

    log = (out / "run.log").read_text()
    warnings = read_manifest(out)["warnings"]
    report = " ".join((out / "report.html").read_text().split())
    missing = "--label 'level' is missing in 1 of 12 rows"
    constant = "layer 0, last-prompt: l1, top10_energy are the same for all 12 examples"
    for said in (missing, constant):
        assert said in log and any(said in w for w in warnings)
        assert said.replace("'", "&#x27;") in report or said in report
    assert not any("layer 1," in w for w in warnings)
    assert (out / "figures" / "layer_profile_label_correlations.png").is_file()


def test_label_order_of_two_values_names_its_positive(tiny_llama, csv_file, tmp_path):
    """Two values in --label-order: a two-valued label whose second value is the positive."""
    out = tmp_path / "run"
    result = _invoke(
        "probe", "--model", tiny_llama, "--data-file", csv_file, "--text-field", "text",
        "--label", "phrasing", "--label-order", "verbal,symbolic", "--metrics", "l1",
        "--n-boot", "50", "--run-dir", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    auroc = pd.read_csv(out / "tables" / "label_auroc.csv")
    hidden = auroc[auroc.metric == "l1"].iloc[0]
    assert (hidden["positive"], hidden["negative"]) == ("symbolic", "verbal")
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    at = samples[samples.layer == -1]
    expected = roc_auc_score(at["phrasing"] == "symbolic", at["l1"])
    assert hidden["auroc"] == pytest.approx(expected)


def test_empty_selection_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    result = _invoke(
        "probe", "--data-file", empty, "--text-field", "t", "--runs-dir", tmp_path / "r"
    )
    assert result.exit_code == 2 and "has no rows" in result.output
    assert not (tmp_path / "r").exists()


def test_generation_adds_token_metrics_per_example(tiny_peaked, tmp_path):
    out = tmp_path / "run"
    result = _invoke(
        "probe", "--model", tiny_peaked, "--label", "difficulty", "--limit", "10",
        "--max-tokens", "5", "--engine", "hf", "--metrics", "l1", "--n-boot", "100",
        "--run-dir", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tokens = pd.read_parquet(out / "tables" / "tokens.parquet")
    summary = pd.read_parquet(out / "tables" / "token_summary.parquet")
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    assert summary["id"].tolist() == samples["id"].tolist()  # one row per example, in order
    assert (summary["n_tokens"] == tokens.groupby("id").size()[summary["id"]].values).all()
    for metric in ("entropy", "stops", "logtoku_eu", "nucleus_size"):
        by = tokens.groupby("id")[metric]
        for how in ("mean", "max"):
            expected = getattr(by, how)()[summary["id"]].to_numpy()  # NaN tokens skipped
            got = summary[f"{metric}_{how}"].to_numpy()
            assert got == pytest.approx(expected, nan_ok=True), (metric, how)
    corr = pd.read_csv(out / "tables" / "label_correlations.csv")
    generated = corr[corr.position == "generated"].set_index("metric")
    assert generated["layer"].isna().all() and len(generated) == 2 * 8
    rho = stats.spearmanr(summary["difficulty"], summary["entropy_mean"]).statistic
    assert generated.loc["entropy_mean", "spearman_rho"] == pytest.approx(rho)
    assert (out / "figures" / "label_binned_generated.png").is_file()
    assert read_manifest(out)["max_abs_logprob_diff"] < 1e-3


def test_embedded_model_matches_output_hidden_states(embedded, sample_rows, tmp_path):
    """The issue's command as written: --data-file FILE --text-field F --label L, offline on the
    embedded SmolLM2; the prompt is its chat template, rebuilt here independently."""
    rows = sample_rows[::8]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    result = _invoke(
        "probe", "--data-file", path, "--text-field", "text", "--label", "difficulty",
        "--metrics", ",".join(NAMES), "--n-boot", "50", "--run-dir", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    assert samples["id"].tolist() == [f"mine-{i}" for i in range(len(rows))]  # row numbers
    tok = AutoTokenizer.from_pretrained(embedded.path)
    model = AutoModelForCausalLM.from_pretrained(embedded.path, torch_dtype=torch.float32).eval()
    for row, got in zip(rows, samples.itertuples(), strict=True):
        chat = [{"role": "user", "content": row["text"]}]
        prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert got.prompt == prompt
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            h = model(ids, output_hidden_states=True).hidden_states[-1][0, -1].numpy()
        for name in NAMES:
            assert getattr(got, name) == pytest.approx(reference(name, h), rel=1e-4, abs=1e-6)
    corr = pd.read_csv(out / "tables" / "label_correlations.csv").set_index("metric")
    rho = stats.spearmanr(samples["difficulty"], samples["hoyer"]).statistic
    assert corr.loc["hoyer", "spearman_rho"] == pytest.approx(rho)


def test_report_names_each_question_with_its_effect(questions_run, tmp_path):
    from entrainment_cli.plots.report import load_run

    result = _invoke("report", questions_run, "--out", tmp_path / "r.html")
    assert result.exit_code == 0, result.output and (tmp_path / "r.html").is_file()
    rows = load_run(questions_run).stats.set_index("statistic")
    auroc = pd.read_csv(questions_run / "tables" / "label_auroc.csv").set_index("metric")
    kw = pd.read_csv(questions_run / "tables" / "group_kruskal.csv").set_index("metric")
    where = "[layer -1, last-prompt]"
    got = rows.loc[f"AUROC(l1 -> multi_step=True) {where}"]
    assert got["value"] == pytest.approx(auroc.loc["l1", "auroc"]) and got["n"] == 48
    assert rows.loc[f"epsilon^2(gini across operation) {where}", "value"] == pytest.approx(
        kw.loc["gini", "epsilon_sq"]
    )
    assert f"rank-biserial r(hoyer: verbal - symbolic) {where}" in rows.index  # b - a


def test_interrupted_probe_resumes_to_the_same_tables(
    tiny_llama, ctrl_c, template_run, csv_file, tmp_path
):
    """Ctrl-C in the third batch, then --resume: the tables equal the uninterrupted run's."""
    from entrainment_cli.engines.probe import HiddenProbe

    args = (
        "probe", "--model", tiny_llama, "--data-file", csv_file, "--template",
        "Question: {text}", "--no-chat", "--id-field", "id", "--label", "difficulty",
        "--layers", "0,-1", "--positions", "last-prompt,mean-prompt", "--metrics",
        ",".join(NAMES), "--batch-size", "5", "--n-boot", "200", "--quiet",
    )  # fmt: skip
    part = tmp_path / "part"
    with ctrl_c(HiddenProbe, "measure", 3):
        assert _invoke(*args, "--run-dir", part).exit_code == 130
    assert read_manifest(part)["status"] == "failed"
    assert not (part / "tables" / "samples.parquet").exists()
    result = _invoke(*args, "--run-dir", part, "--resume")
    assert result.exit_code == 0, result.output
    m = read_manifest(part)
    assert m["status"] == "done" and m["resumed"] == 1 and m["counts"]["already_done"] == 10
    for table in ("samples.parquet", "label_correlations.csv"):
        read = pd.read_parquet if table.endswith(".parquet") else pd.read_csv
        pd.testing.assert_frame_equal(
            read(template_run / "tables" / table), read(part / "tables" / table)
        )


def test_vllm_generation_on_embedded_model(vllm_engine, tmp_path):
    """`--engine vllm`: the session's engine generates, the hf probe re-scores the tokens."""
    out = tmp_path / "run"
    result = _invoke(
        "probe", "--label", "difficulty", "--limit", "4", "--max-tokens", "8", "--engine",
        "vllm", "--metrics", "l1", "--n-boot", "50", "--run-dir", out, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    m = read_manifest(out)
    assert m["engine"] == "vllm" and m["model"]["source"] == "embedded"
    tokens = pd.read_parquet(out / "tables" / "tokens.parquet")
    assert tokens["id"].nunique() == 4 and (tokens.groupby("id").size() <= 8).all()
    assert (tokens["engine_logprob"] - tokens["logprob"]).abs().max() < 1e-3
    summary = pd.read_parquet(out / "tables" / "token_summary.parquet")
    assert summary["entropy_mean"].to_numpy() == pytest.approx(
        tokens.groupby("id")["entropy"].mean()[summary["id"]].to_numpy()
    )


@pytest.mark.parametrize(
    "template, message",
    [
        ("Q: {text:d}", "--template cannot format this row (ValueError"),
        ("Q: {difficulty:%}x{text:q}", "--template cannot format this row (ValueError"),
        ("Q: {text!x}", "--template has an unknown conversion '!x' in '{text}'"),
        ("Q: {text[zz]}", "--template cannot format this row (TypeError"),
    ],
)
def test_template_format_spec_conversion_or_index_is_one_line(
    tiny_llama, csv_file, tmp_path, template, message
):
    """Issue 23.11: a --template with a format spec, conversion or index the row's value does
    not take is one line, exit 2, before the run directory exists."""
    out = tmp_path / "run"
    result = _invoke(
        "probe", "--model", tiny_llama, "--data-file", csv_file, "--template", template,
        "--no-chat", "--id-field", "id", "--run-dir", out, "--quiet",
    )  # fmt: skip
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and message in text, text
    assert "Traceback" not in result.output and not out.exists()
