"""`entrain qa robustness` end to end on a tiny random Llama, checked against independent math."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps
from test_sparsity import reference
from transformers import AutoModelForCausalLM, AutoTokenizer

from entrainment_cli.data import registry
from entrainment_cli.engines.probe import HiddenProbe, batches
from entrainment_cli.runs.rundir import read_manifest
from entrainment_cli.science import stats

METRICS = "l1,top10_energy,hoyer"
NAMES = ["l1", "top10_energy", "hoyer"]
PER_CATEGORY = 2  # --limit: the sample cycles through its 6 categories row by row
LIMIT = 6 * PER_CATEGORY  # so the first 12 questions: 36 prompts


def _args(model, run_dir, *extra):
    return [
        "qa",
        "robustness",
        "--model",
        str(model),
        "--run-dir",
        str(run_dir),
        "--metrics",
        METRICS,
        "--limit",
        str(PER_CATEGORY),
        "--batch-size",
        "8",
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def finished(tiny_llama, tmp_path_factory):
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app

    out = tmp_path_factory.mktemp("rob") / "run"
    args = _args(tiny_llama, out, "--layers", "1,-1", "--seed", "3")
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_tables_and_manifest(finished):
    samples = pd.read_parquet(finished / "tables" / "samples.parquet")
    variants = pd.read_parquet(finished / "tables" / "variants.parquet")
    data = registry.load(registry.get_spec("mmlu_pro"))
    ids = data.ids[:LIMIT]
    assert variants["id"].tolist() == [
        f"{q}|{n}" for q in ids for n in ("normal", "light", "heavy")
    ]
    assert len(samples) == 2 * 3 * LIMIT and not samples.duplicated(["id", "layer"]).any()
    assert samples[samples.layer == -1]["id"].tolist() == variants["id"].tolist()
    assert {"predicted", "correct", "letter_logits", *NAMES} <= set(samples.columns)
    n_opts = samples.groupby("noise")["n_options"].min().to_dict()
    assert n_opts == {"heavy": 14, "light": 9, "normal": 4}  # the sample has a 4-option question
    # the gold letter in every variant is the original gold option
    for v in variants.itertuples():
        row = data.rows[data.ids.index(v.question_id)]
        assert v.options[v.answer_index] == row["options"][row["answer_index"]]
    rates = pd.read_csv(finished / "tables" / "noise_rates.csv").set_index("noise")
    assert rates.loc["light", "added_options_mean"] == 5 and rates.loc["heavy", "n_options_mean"]
    assert rates.loc["light", "char_rate"] < rates.loc["heavy", "char_rate"]
    m = read_manifest(finished)
    assert m["status"] == "done" and m["command"] == "qa robustness" and m["seed"] == 3
    assert m["dataset"]["data_source"] == "sample" and m["prompt_format"] == "chat"
    assert m["noise_levels"]["heavy"]["added_options"] == 10
    assert m["counts"]["probed"] == 3 * LIMIT and len(m["answer_letter_ids"]) == 20
    first = samples.drop_duplicates("id")
    assert m["counts"]["accuracy"] == pytest.approx(first["correct"].mean())
    png = finished / "figures" / "heatmaps_layer-1_last-prompt.png"
    assert png.stat().st_size > 20_000 and png.with_suffix(".pdf").is_file()
    assert (finished / "figures" / "heatmaps_layer1_last-prompt.png").is_file()


def test_answer_and_metrics_match_an_independent_pass(finished, tiny_llama):
    """Full unbatched forward with the LM head on the saved prompt: the logits of the letter
    tokens (found here by converting 'A'.. to ids) and the argmax letter; metrics by NumPy."""
    samples = pd.read_parquet(finished / "tables" / "samples.parquet")
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    rows = samples[samples.layer == -1].groupby("noise").head(2)
    assert set(rows["noise"]) == {"normal", "light", "heavy"}
    for row in rows.itertuples():
        ids = tok(row.prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
        letters = [chr(ord("A") + i) for i in range(row.n_options)]
        letter_ids = tok.convert_tokens_to_ids(letters)
        expected = out.logits[0, -1, letter_ids].numpy()
        np.testing.assert_allclose(row.letter_logits, expected, rtol=1e-4, atol=1e-5)
        assert row.predicted == letters[int(np.argmax(expected))]
        assert row.correct == (row.predicted == row.answer)
        h = out.hidden_states[-1][0, -1].numpy()
        for name in NAMES:
            assert getattr(row, name) == pytest.approx(reference(name, h), rel=1e-4, abs=1e-6)


def test_probe_logits_with_padding_and_an_untied_head(tiny_qwen):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen).eval()
    chosen = [5, 17, 300, 1234]
    lists = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10], [11, 12, 13, 14, 15]]
    probe = HiddenProbe(model, [1], ["last-prompt"], logit_ids=chosen)  # -1 not asked: hooked
    for batch in batches(lists, 3, 0, "cpu"):
        measured = probe.measure(batch.input_ids, batch.attention_mask, ["l1"])
        assert list(measured) == [(1, "last-prompt")]
        for row, i in enumerate(batch.indices):
            with torch.no_grad():
                full = model(torch.tensor([lists[i]])).logits[0, -1, chosen]
            torch.testing.assert_close(probe.logits[row], full, rtol=1e-4, atol=1e-5)


def test_summary_accuracy_and_paired_tests_recomputed(finished):
    samples = pd.read_parquet(finished / "tables" / "samples.parquet")
    summary = pd.read_csv(finished / "tables" / "summary.csv")
    acc = pd.read_csv(finished / "tables" / "accuracy.csv")
    tests = pd.read_csv(finished / "tables" / "paired_tests.csv")
    acc_tests = pd.read_csv(finished / "tables" / "accuracy_tests.csv")
    last = samples[samples.layer == -1]
    for noise_name, part in last.groupby("noise"):
        row = summary[(summary.layer == -1) & (summary.area == "All")]
        row = row[(row.noise == noise_name) & (row.metric == "l1")].iloc[0]
        assert row["n"] == LIMIT and row["mean"] == pytest.approx(part["l1"].mean())
        a = acc[(acc.area == "All") & (acc.noise == noise_name)].iloc[0]
        assert a["n"] == LIMIT and a["accuracy"] == pytest.approx(part["correct"].mean())
        assert a["chance"] == pytest.approx((1 / part["n_options"]).mean())
    bio = last[(last.area == "Biology") & (last.noise == "heavy")]
    a = acc[(acc.area == "Biology") & (acc.noise == "heavy")].iloc[0]
    assert a["n"] == len(bio) and a["correct"] == bio["correct"].sum()
    wide = last.pivot(index="question_id", columns="noise", values="hoyer")
    t = tests[(tests.layer == -1) & (tests.area == "All") & (tests.metric == "hoyer")]
    t = t[(t.noise_a == "normal") & (t.noise_b == "heavy")].iloc[0]
    d = wide["heavy"] - wide["normal"]
    assert t["n"] == LIMIT and t["wilcoxon_p"] == pytest.approx(sps.wilcoxon(d).pvalue)
    assert t["median_diff"] == pytest.approx(d.median()) and t["sparser_when"] == "higher"
    n_measures = 2 + len(NAMES)  # the two prompt lengths first, as baselines
    assert len(tests) == 2 * 3 * n_measures * (1 + last["area"].nunique())  # layers x pairs x ...
    # noise_a is the reference: its mean is the summary's (every question has every level)
    mean = summary[(summary.layer == -1) & (summary.area == "All") & (summary.metric == "hoyer")]
    assert t["mean_a"] == pytest.approx(mean.set_index("noise").loc["normal", "mean"])
    assert t["mean_b"] == pytest.approx(mean.set_index("noise").loc["heavy", "mean"])
    correct = last.pivot(index="question_id", columns="noise", values="correct")
    m = acc_tests[(acc_tests.area == "All") & (acc_tests.noise_a == "normal")]
    m = m[m.noise_b == "light"].iloc[0]
    assert m["a_only"] == (correct["normal"] & ~correct["light"]).sum()
    assert m["b_only"] == (correct["light"] & ~correct["normal"]).sum()


def test_paired_test_and_mcnemar_on_known_data():
    a = np.array([0.0, 0.0, 0.0, 0.0, 1.0, np.nan])
    b = np.array([1.0, 2.0, 3.0, -0.5, 1.0, 4.0])
    out = stats.paired_test(a, b)  # d = b - a
    # |d| of the non-zero pairs: 1, 2, 3, 0.5 -> ranks 2, 3, 4, 1: R+ = 9, R- = 1
    assert out["rank_biserial"] == pytest.approx(0.8)
    assert (out["n"], out["n_zero"], out["n_dropped"]) == (5, 1, 1)
    assert (out["w_plus"], out["w_minus"]) == (9, 1) and out["wilcoxon_p"] == pytest.approx(
        0.25
    )  # exact, 2 of 16
    assert out["median_diff"] == 1.0 and out["mean_diff"] == pytest.approx(1.1)
    assert stats.paired_test([1, 2, 3], [2, 4, 9])["rank_biserial"] == 1.0
    assert np.isnan(stats.paired_test([1, 2], [1, 2])["wilcoxon_p"])
    m = stats.mcnemar([True] * 1 + [False] * 7 + [True] * 2, [False] * 1 + [True] * 7 + [True] * 2)
    assert (m["n"], m["a_only"], m["b_only"]) == (10, 1, 7)
    assert m["mcnemar_p"] == pytest.approx(2 * (1 + 8) / 256)  # two-sided exact binomial


def test_export_writes_the_variants_the_run_used(cli, finished, tmp_path):
    path = tmp_path / "noisy.jsonl"
    result = cli(
        "qa", "robustness-export", "--limit", PER_CATEGORY, "--seed", 3, "--out", path, "--quiet"
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "runs").exists()  # no run, no model
    records = [json.loads(line) for line in path.read_text().splitlines()]
    variants = pd.read_parquet(finished / "tables" / "variants.parquet").set_index("id")
    data = registry.load(registry.get_spec("mmlu_pro"))
    assert [r["id"] for r in records] == data.ids[:LIMIT]
    for r in records:
        row = data.rows[data.ids.index(r["id"])]
        assert (r["question"], r["options"], r["answer"]) == (
            row["question"],
            row["options"],
            row["answer"],
        )
        assert list(r["variants"]) == ["normal", "light", "heavy"]
        for level, v in r["variants"].items():
            saved = variants.loc[f"{r['id']}|{level}"]
            assert v["prompt"] == saved["text"] and v["options"] == list(saved["options"])
            assert v["options"][v["answer_index"]] == row["options"][row["answer_index"]]
            assert v["answer"] == chr(ord("A") + v["answer_index"])
    whole = tmp_path / "noisy.json"
    args = ["--noise", "light", "--categories", "Physics,computer science", "--out", whole]
    assert cli("qa", "robustness-export", *args, "--quiet").exit_code == 0
    doc = json.loads(whole.read_text())
    assert doc["meta"]["num_records"] == len(doc["data"]) == 10
    assert doc["meta"]["areas"] == ["Computer Science", "Physics"] and doc["meta"]["seed"] == 0
    assert all(list(r["variants"]) == ["light"] for r in doc["data"])
    every = tmp_path / "every.jsonl"  # --limit 0: every question of the category
    args = ["--noise", "normal", "--categories", "math", "--limit", "0", "--out", every]
    assert cli("qa", "robustness-export", *args, "--quiet").exit_code == 0
    assert len(every.read_text().splitlines()) == 5
    result = cli("qa", "robustness-export", "--out", tmp_path / "x.csv")
    assert result.exit_code == 2 and "use a .jsonl or .json file name" in result.stderr


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_an_exported_file_reads_back_as_data(cli, finished, tiny_llama, tmp_path, suffix):
    """Issue 23.12: both files robustness-export writes are a --data-file of qa robustness
    (question_id in every record; the .json's {"meta", "data"}), giving the same variants."""
    path = tmp_path / f"noisy{suffix}"
    args = ["--limit", PER_CATEGORY, "--seed", 3, "--out", path, "--quiet"]
    assert cli("qa", "robustness-export", *args).exit_code == 0
    records = json.loads(path.read_text())["data"] if suffix == ".json" else None
    records = records or [json.loads(line) for line in path.read_text().splitlines()]
    assert all(r["question_id"] == r["id"] for r in records)
    out = tmp_path / "again"
    result = cli(*_args(tiny_llama, out, "--data-file", path, "--layers", "1,-1", "--seed", "3"))
    assert result.exit_code == 0, result.output
    again = pd.read_parquet(out / "tables" / "variants.parquet")
    pd.testing.assert_frame_equal(again, pd.read_parquet(finished / "tables" / "variants.parquet"))


def test_categories_per_category_and_noise_levels(cli, tiny_llama, tmp_path):
    out = tmp_path / "r"
    args = _args(tiny_llama, out, "--categories", "math,History", "--limit", "2")
    result = cli(*args, "--noise", "heavy,normal")
    assert result.exit_code == 0, result.output
    s = pd.read_parquet(out / "tables" / "samples.parquet")
    assert s.groupby("area")["question_id"].nunique().to_dict() == {"History": 2, "Math": 2}
    assert s["noise"].unique().tolist() == ["heavy", "normal"]
    t = pd.read_csv(out / "tables" / "paired_tests.csv")
    assert set(zip(t.noise_a, t.noise_b, strict=True)) == {("heavy", "normal")}


def test_plot_rebuilds_figures_and_compares(cli, finished, tiny_llama, tmp_path):
    for f in (finished / "figures").iterdir():
        f.unlink()
    result = cli("plot", finished)
    assert result.exit_code == 0, result.output
    assert (finished / "figures" / "heatmaps_layer-1_last-prompt.png").stat().st_size > 20_000
    other = tmp_path / "other"
    assert cli(*_args(tiny_llama, other, "--limit", "1")).exit_code == 0
    result = cli("plot", finished, other, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cmp" / "robustness_compare.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--categories", "law,astrology"], "unknown category 'law'; "),
        (["--noise", "light,extreme"], "unknown noise level 'extreme'; use a comma list of"),
        (["--layers", "7"], "layer 7 is out of range; this model has 3 blocks"),
        (["--limit", "-1"], "--limit must be 0 or more"),
        (["--metrics", "l1,sparsiness"], "unknown metric 'sparsiness'"),
        (["--seed", "-1"], "--seed must be 0 or more"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tiny_llama, tmp_path, args, message):
    result = cli("qa", "robustness", "--model", tiny_llama, "--quiet", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_bad_data_files_name_the_problem(cli, tiny_llama, tmp_path):
    rows = registry.load(registry.get_spec("mmlu_pro")).rows[:3]
    cases = {
        "missing.jsonl": (
            [{k: v for k, v in r.items() if k not in ("answer_index", "category")} for r in rows],
            "line 1: missing field(s) answer_index, category; every mmlu_pro row needs "
            "question_id, question, options, answer, answer_index, category",
        ),
        "mismatch.jsonl": (
            [rows[0], {**rows[1], "answer": "J"}],
            "row 1: answer 'J' is not the letter of answer_index",
        ),
        "range.jsonl": ([{**rows[0], "answer_index": 12}], "answer_index 12 is outside its"),
        "text.jsonl": ([{**rows[0], "options": "A or B"}], "'options' must be a non-empty list"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in content))
        result = cli("qa", "robustness", "--model", tiny_llama, "--data-file", path, "--quiet")
        assert result.exit_code == 2, (name, result.output)
        assert message in " ".join(result.stderr.split()), (name, result.stderr)
    assert not (tmp_path / "runs").exists()


def test_resume_finishes_without_redoing(cli, tiny_llama, tmp_path):
    out = tmp_path / "r"
    args = _args(tiny_llama, out, "--limit", "1", "--categories", "biology,math,physics")
    assert cli(*args).exit_code == 0
    before = pd.read_parquet(out / "tables" / "samples.parquet")
    result = cli(*args, "--resume")
    assert result.exit_code == 0, result.output
    m = read_manifest(out)
    assert m["resumed"] == 1 and m["counts"]["already_done"] == 9
    pd.testing.assert_frame_equal(before, pd.read_parquet(out / "tables" / "samples.parquet"))
    result = cli(*args, "--resume", "--seed", "1")  # other noise: not the same experiment
    assert result.exit_code == 2 and "different settings (--seed: 0 -> 1)" in result.stderr
