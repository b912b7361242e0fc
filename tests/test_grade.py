"""`entrain correlate --grade`: grading, answer tokens and the correctness tables."""

import json

import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from entrainment_cli.engines import generate
from entrainment_cli.engines.generate import Generation
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
def scripted(monkeypatch, tiny_peaked):
    """An engine that 'generates' REPLIES, so the grading outcome is known."""
    tok = AutoTokenizer.from_pretrained(tiny_peaked)
    real = generate.make_engine

    def make(*args, **kwargs):
        engine = real(*args, **kwargs)

        def gen(prompts, keys, sampling, on_done=None):
            out = []
            for key in keys:
                ids = tok(REPLIES[int(key.split("-")[1])], add_special_tokens=False)["input_ids"]
                out.append(Generation(ids, [0.0] * len(ids), "stop"))
            if on_done:
                on_done(len(keys))
            return out

        engine.generate = gen
        return engine

    monkeypatch.setattr("entrainment_cli.pipeline.make_engine", make)
    return tok


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
