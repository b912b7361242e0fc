"""`entrain probe --answer-field` (issue 21.4): the greedy answer graded against the user's gold
by hand-worked rules, and every signal scored against correctness, checked against pandas and
scikit-learn on the run's own saved tables."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from transformers import AutoTokenizer

from entrainment_cli.runs.rundir import read_manifest
from entrainment_cli.science.answers import grade_output

# (question, gold, the scripted reply): correct, wrong, correct, ... by each rule
ROWS = [
    ("What is half of one?", "\\frac{1}{2}", "It is \\boxed{0.5}."),
    ("What is 2 + 3?", "5", "\\boxed{6}"),
    ("How many legs has a spider?", "8", "A spider has 8 legs."),
    ("What is 10 - 4?", "6", "Ten minus four: 7"),
    ("Capital of France?", "Paris", " paris.\nIt is a city."),
    ("Capital of Italy?", "Rome", "Milan"),
    ("Largest planet?", "Jupiter", '"Jupiter"'),
    ("Colour of the sky?", "blue", "It is green."),
]
EXPECTED = [True, False] * 4


@pytest.mark.parametrize(
    ("text", "gold", "prediction", "how", "correct"),
    [
        ("so \\boxed{\\frac12}", "0.5", "\\frac12", "boxed", True),
        ("\\boxed{x} then \\boxed{3}", "3", "3", "boxed", True),
        ("It is 1,250 apples.", "1250", "1,250", "last_number", True),
        ("#### 12\nthen 7", "12", "12", "hashes", True),
        ("  Paris.\nmore", "paris", "Paris.", "first_line", True),
        ("The answer is 7", "seven", "The answer is 7", "first_line", False),
        ("no digits here", "4", None, "none", False),
        ("", "x", None, "none", False),
    ],
)
def test_grade_output_hand_worked(text, gold, prediction, how, correct):
    g = grade_output(text, gold)
    assert (g.prediction, g.how, g.correct) == (prediction, how, correct)
    if prediction is not None:
        assert text[g.start : g.end] == prediction


@pytest.fixture
def scripted(script_engine, tiny_peaked):
    """An engine that replies with ROWS' scripted answers (the token probe still runs)."""
    reply = {f"q{i}": r for i, (_, _, r) in enumerate(ROWS)}
    return script_engine(tiny_peaked, reply.__getitem__, logprob=-0.5)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"id": f"q{i}", "q": q, "gold": g} for i, (q, g, _) in enumerate(ROWS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_answers_graded_and_signals_scored(cli, tiny_peaked, scripted, data_file, tmp_path):
    out = tmp_path / "run"
    result = cli("probe", "--model", tiny_peaked, "--data-file", data_file, "--text-field", "q",
                 "--id-field", "id", "--answer-field", "gold", "--max-tokens", 16, "--engine",
                 "hf", "--layers", "1,-1", "--n-boot", 50, "--save-hidden", "--run-dir", out,
                 "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert scripted == [0.0]  # graded: greedy, whatever --temperature says
    m = read_manifest(out)
    assert m["identity"]["temperature"] == 0.0 and m["identity"]["answer_field"] == "gold"
    assert (m["counts"]["graded"], m["counts"]["correct"]) == (8, 4)
    answers = pd.read_parquet(out / "tables" / "answers.parquet")
    assert answers["correct"].tolist() == EXPECTED
    assert answers["gold"].tolist() == [g for _, g, _ in ROWS]
    prompts = pd.read_parquet(out / "tables" / "prompts.parquet").set_index("id")
    tok = AutoTokenizer.from_pretrained(tiny_peaked)
    for row in answers.itertuples():  # the answer tokens spell the prediction
        ids = list(prompts.loc[row.id, "token_ids"])
        spelled = tok.decode([ids[s] for s in row.answer_steps])
        assert row.prediction in spelled and len(row.answer_steps) == row.n_answer_tokens > 0

    values = pd.read_parquet(out / "tables" / "signal_values.parquet").set_index("id")
    tokens = pd.read_parquet(out / "tables" / "tokens.parquet")
    for row in answers.itertuples():
        mine = tokens[tokens["id"] == row.id].set_index("step")
        assert values.loc[row.id, "answer_mean_entropy"] == pytest.approx(
            mine.loc[list(row.answer_steps), "entropy"].mean()
        )
        assert values.loc[row.id, "generation_mean_entropy"] == pytest.approx(
            mine["entropy"].mean()
        )
        assert values.loc[row.id, "response_length"] == len(mine)
    samples = pd.read_parquet(out / "tables" / "samples.parquet")
    last = samples[(samples["layer"] == -1) & (samples["position"] == "last-prompt")]
    hoyer = last.set_index("id")["hoyer"]
    lengths = last.set_index("id")["n_prompt_tokens"]
    assert answers.set_index("id")["n_prompt_tokens"].to_dict() == lengths.to_dict()
    assert values["prompt_h-1_hoyer"].to_dict() == pytest.approx(hoyer.to_dict())
    table = pd.read_csv(out / "tables" / "signals.csv").set_index("signal")
    err = ~values["correct"].to_numpy(dtype=bool)
    entropy = table.loc["answer_mean_entropy"]
    assert entropy["direction"] == "higher"  # high entropy predicts an error
    assert entropy["roc_auc"] == pytest.approx(roc_auc_score(err, values["answer_mean_entropy"]))
    length = table.loc["prompt_length"]
    sign = 1 if length["direction"] == "higher" else -1
    assert length["roc_auc"] == pytest.approx(roc_auc_score(err, sign * values["prompt_length"]))
    assert np.isfinite(table["prr"]).any()
    # with --save-hidden: the ceiling of correctness (issue 21.2, "correctness in graded runs")
    ceiling = pd.read_csv(out / "tables" / "ceiling.csv")
    assert set(ceiling["label"]) == {"answer_correct"} and set(ceiling["layer"]) == {1, -1}
    best = ceiling[(ceiling.scorer == "best metric") & (ceiling.layer == -1)].iloc[0]
    want = roc_auc_score(values["correct"], last.set_index("id").loc[values.index, best["name"]])
    assert best["value"] == pytest.approx(want) and best["n"] == 8
    assert (out / "figures").is_dir() and any((out / "figures").glob("signals*.png"))


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        (None, [], "--answer-field grades generated answers: give --max-tokens N too"),
        ([{"q": "a", "gold": None}], ["--max-tokens", "4"], "row 0: --answer-field 'gold' is null"),
        ([{"q": "a", "gold": [1]}], ["--max-tokens", "4"], "row 0: --answer-field 'gold' is [1]"),
        ([{"q": "a"}], ["--max-tokens", "4"], "gold"),
    ],
)
def test_answer_field_errors_are_one_line(cli, tiny_llama, data_file, tmp_path, rows, extra,
                                          message):  # fmt: skip
    path = data_file
    if rows is not None:
        path = tmp_path / "bad.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("probe", "--model", tiny_llama, "--data-file", path, "--text-field", "q",
                 "--answer-field", "gold", *extra, "--run-dir", tmp_path / "R")  # fmt: skip
    assert result.exit_code == 2 and message in " ".join(result.stderr.split()), result.output
    assert not (tmp_path / "R").exists()
