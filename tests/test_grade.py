"""`entrain correlate --grade`: grading, answer tokens and the correctness tables."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from transformers import AutoTokenizer

from entrainment_cli.runs.rundir import read_manifest, run_label

# What the "model" answers to each question, and the gold answers of those questions.
REPLIES = [
    "3 + 4 = 7 apples.\n#### 7\nQuestion: and then #### 99",  # correct; cut at next example
    "She pays -2.5 dollars.\n#### -2.5",  # correct, negative decimal
    'The total is {"answer": 1,250}',  # correct via JSON, thousands comma
    "I think it is 12.",  # last-number fallback: wrong (gold 13)
    "No idea at all.",  # parse failed
    "#### 8",  # wrong
]
GOLDS = ["7", "-2.5", "1250", "13", "4", "9"]


@pytest.fixture
def scripted(script_engine, tiny_peaked):
    """An engine that 'generates' REPLIES, so the grading outcome is known."""
    script_engine(tiny_peaked, lambda key: REPLIES[int(key.split("-")[1])])
    return AutoTokenizer.from_pretrained(tiny_peaked)


@pytest.fixture
def gsm_file(tmp_path):
    path = tmp_path / "gsm.jsonl"
    rows = [{"question": f"Question number {i}?", "answer": f"work\n#### {g}"}
            for i, g in enumerate(GOLDS)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_graded_run_tables(cli, tiny_peaked, scripted, gsm_file, tmp_path):
    out = tmp_path / "g"
    result = cli("correlate", "--model", tiny_peaked, "--engine", "hf", "--dataset", "gsm8k",
                 "--data-file", gsm_file, "--grade", "--prompting", "cot", "--shots", "2",
                 "--n-boot", "50", "--run-dir", out, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    p = pd.read_parquet(out / "tables" / "prompts.parquet")
    assert p["gold"].tolist() == [7, -2.5, 1250, 13, 4, 9]
    assert p["correct"].tolist() == [True, True, True, False, False, False]
    assert p["parse_failed"].tolist() == [False, False, False, False, True, False]
    assert p["answer_how"].tolist()[:4] == ["hashes", "hashes", "json", "last_number"]
    assert p["prediction"].tolist()[:4] == [7, -2.5, 1250, 12]
    for row in p.itertuples():  # the answer tokens spell the number
        if not row.parse_failed:
            spelled = scripted.decode([row.token_ids[s] for s in row.answer_steps])
            assert spelled.strip().replace(",", "") == f"{row.prediction:g}".replace("+", "")
    assert p["prompt"].str.contains("Question: Question number 0?").iloc[0]
    tokens = pd.read_parquet(out / "tables" / "tokens.parquet")
    first = tokens[tokens.id == p.id[0]].set_index("step")
    steps = list(p.answer_steps[0])
    assert p.answer_entropy[0] == pytest.approx(first.loc[steps, "entropy"].mean())
    summary = json.loads((out / "tables" / "summary.json").read_text())
    assert summary["accuracy_all"] == pytest.approx(3 / 6)
    assert summary["accuracy_parsed"] == pytest.approx(3 / 5)
    assert summary["n_parse_failed"] == 1
    clf = json.loads((out / "tables" / "classifier.json").read_text())
    assert clf  # too few prompts for CV is reported, not a crash
    # what the figures draw is saved: the AU x EU quadrants and the reliability bins
    parsed = p[~p["parse_failed"]]
    au, eu = parsed["answer_logtoku_au"], parsed["answer_logtoku_eu"]
    ok = np.isfinite(au) & np.isfinite(eu)
    au_med, eu_med = np.median(au[ok]), np.median(eu[ok])
    quadrants = pd.read_csv(out / "tables" / "quadrants.csv").set_index("quadrant")
    assert quadrants["n"].sum() == ok.sum()
    assert quadrants["au_median"].tolist() == pytest.approx([au_med] * len(quadrants))
    assert quadrants["eu_median"].tolist() == pytest.approx([eu_med] * len(quadrants))
    for q, row in quadrants.iterrows():
        high_au, high_eu = q.startswith("high"), q.endswith("high EU")
        mine = parsed[ok & ((au > au_med) == high_au) & ((eu > eu_med) == high_eu)]
        assert (row["n"], row["n_correct"]) == (len(mine), int(mine["correct"].sum()))
    reliability = pd.read_csv(out / "tables" / "reliability.csv")
    for metric, bins in reliability.groupby("metric"):
        assert bins["n"].sum() == parsed[metric].notna().sum()
        assert bins["n_correct"].sum() == parsed.loc[parsed[metric].notna(), "correct"].sum()
    for stem in ("correct_vs_incorrect", "logtoku_quadrants", "reliability", "entropy_vs_stops"):
        assert (out / "figures" / f"{stem}.png").is_file()
    identity = read_manifest(out)["identity"]
    assert identity["grade"] is True and (identity["prompting"], identity["shots"]) == ("cot", 2)
    assert run_label(out)[1].endswith("/cot")  # graded runs of one model stay apart in grids
    _signals(cli, out, p, tokens, tmp_path)


def _signals(cli, out, p, tokens, tmp_path):
    """Every signal scored against correctness: the answer scope leaves out the unparsed
    prompt (no answer tokens, counted), the generation scope keeps all six."""
    values = pd.read_parquet(out / "tables" / "signal_values.parquet")
    assert values["id"].tolist() == p["id"].tolist()
    mine = tokens[tokens.id == p.id[1]].set_index("step")
    steps = list(p.answer_steps[1])
    assert values["answer_mean_logprob"][1] == pytest.approx(mine.loc[steps, "logprob"].mean())
    assert values["generation_max_entropy"][1] == pytest.approx(mine["entropy"].max())
    assert values["answer_stops"][1] == pytest.approx(p["answer_stops"][1], nan_ok=True)
    table = pd.read_csv(out / "tables" / "signals.csv").set_index("signal")
    row = table.loc["answer_mean_logprob"]
    assert (row.n, row.n_nonfinite, row.n_errors, row.direction) == (5, 1, 2, "lower")
    keep = values["answer_mean_logprob"].notna()
    err, lp = ~values["correct"][keep], values["answer_mean_logprob"][keep]
    assert row.roc_auc == pytest.approx(roc_auc_score(err, -lp))
    assert (table.loc["generation_perplexity", ["n", "n_errors"]] == [6, 3]).all()
    curves = pd.read_csv(out / "tables" / "risk_coverage.csv")
    assert {"oracle", "random"} <= set(curves["signal"])
    for stem in ("signals_rank", "risk_coverage"):
        assert (out / "figures" / f"{stem}.png").is_file()
    twin = tmp_path / "twin"  # a second graded run, as if of another prompting style
    shutil.copytree(out, twin)
    manifest = json.loads((twin / "manifest.json").read_text())
    manifest["options"]["prompting"] = "baseline"
    (twin / "manifest.json").write_text(json.dumps(manifest))
    result = cli("plot", out, twin, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    long = pd.read_csv(tmp_path / "cmp" / "signals_prr.csv")
    assert sorted(long["run"].unique()) == [
        f"{run_label(out)[0]} / gsm8k/{p}" for p in ("baseline", "cot")
    ]
    assert len(long) == 2 * len(table)
    assert (tmp_path / "cmp" / "signals_prr.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "xsum"], "--grade needs gold answers; 'xsum' has none (use gsm8k)"),
        (["--prompting", "tot"], "unknown --prompting 'tot'; use one of baseline, cot, cod"),
        (["--shots", "9"], "8"),
    ],
)
def test_grade_errors(cli, tiny_peaked, tmp_path, args, message):
    argv = ["correlate", "--model", tiny_peaked, "--engine", "hf", "--grade", "--quiet"]
    if "--dataset" not in args:
        argv += ["--dataset", "gsm8k"]
    result = cli(*argv, *args)
    assert result.exit_code == 2 and message in " ".join(result.stderr.split())
    assert not (tmp_path / "runs").exists()
