"""`--generations K`: K sampled answers per question and the multi-sample estimators."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from entrainment_cli import multisample
from entrainment_cli.engines import generate
from entrainment_cli.engines.generate import Generation, Sampling, sample_seed
from entrainment_cli.runs.rundir import RunDir, read_manifest
from entrainment_cli.science import estimators

# question i: (gold, the graded reply, the K = 3 sampled replies)
GSM = [
    ("7", "#### 7", ["#### 7", "So 7.0 apples.\n#### 7.0", "#### 8"]),  # {7, 7.0}, {8}
    ("-2.5", "#### 3", ["#### -2.5", "#### -2.5", "#### -2.5"]),  # one class
    ("1250", "#### 1250", ["No idea.", "Still no idea.", "#### 1,250"]),  # none agree
    ("13", "#### 12", ["#### 13\nQuestion: then #### 12", "#### 12", "#### 14"]),  # cut, 3
]


def _script(monkeypatch, tok, main, samples):
    """Engines that 'generate' ``main[i]`` and 'sample' ``samples[i][k]`` for question i (the
    number after the id's last '-' in GSM8K, or an index into ``order``)."""
    real = generate.make_engine
    calls = {"sample": 0}

    def make(*args, **kwargs):
        engine = real(*args, **kwargs)

        def encode(text):
            return tok(text, add_special_tokens=False)["input_ids"]

        def gen(prompts, keys, sampling, on_done=None):
            out = [Generation(ids := encode(main(k)), [0.0] * len(ids), "stop") for k in keys]
            if on_done:
                on_done(len(keys))
            return out

        def sample(prompts, keys, sampling, n, on_done=None):
            calls["sample"] += 1
            assert sampling.temperature == 0.7 and sampling.seed == 3
            out = []
            for key in keys:
                texts = samples(key)[:n]
                lps = [-0.1 * (k + 1) for k in range(n)]  # answer k: mean log-prob -0.1 (k+1)
                out.append([Generation(e := encode(t), [lp] * len(e), "stop")
                            for t, lp in zip(texts, lps, strict=True)])  # fmt: skip
            if on_done:
                on_done(len(keys) * n)
            return out

        engine.generate, engine.sample = gen, sample
        return engine

    monkeypatch.setattr("entrainment_cli.pipeline.make_engine", make)
    return calls


@pytest.fixture
def gsm_file(tmp_path):
    path = tmp_path / "gsm.jsonl"
    rows = [{"question": f"Question number {i}?", "answer": f"work\n#### {g}"}
            for i, (g, _, _) in enumerate(GSM)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _by_hand_entropy(counts) -> float:
    p = np.asarray(counts, dtype=float) / sum(counts)
    return float(-(p * np.log(p)).sum())


def test_correlate_generations_estimators_signals_and_resume(
    cli, tiny_peaked, gsm_file, tmp_path, monkeypatch
):
    tok = AutoTokenizer.from_pretrained(tiny_peaked)
    number = lambda key: int(key.rsplit("-", 1)[1])  # noqa: E731
    calls = _script(monkeypatch, tok, lambda k: GSM[number(k)][1], lambda k: GSM[number(k)][2])
    args = ["correlate", "--model", tiny_peaked, "--engine", "hf", "--dataset", "gsm8k",
            "--data-file", gsm_file, "--grade", "--prompting", "cot", "--shots", "1",
            "--max-tokens", 16, "--generations", 3, "--sample-temperature", 0.7, "--seed", 3,
            "--n-boot", 50, "--quiet"]  # fmt: skip
    from entrainment_cli.engines.token_probe import TokenProbe

    real = TokenProbe.measure

    def dying(self, *a, **k):  # stop after the sample stage: in the token probe
        raise KeyboardInterrupt

    monkeypatch.setattr(TokenProbe, "measure", dying)
    out = tmp_path / "g"
    assert cli(*args, "--run-dir", out).exit_code == 130
    assert calls["sample"] == 1
    monkeypatch.setattr(TokenProbe, "measure", real)
    monkeypatch.setattr(  # resumed: neither the graded answers nor the samples again
        "entrainment_cli.pipeline.make_engine",
        lambda *a, **k: pytest.fail("a resumed run must not generate again"),
    )
    result = cli(*args, "--run-dir", out, "--resume")
    assert result.exit_code == 0, result.output

    m = read_manifest(out)
    assert (m["identity"]["generations"], m["identity"]["sample_temperature"]) == (3, 0.7)
    table = pd.read_parquet(out / "tables" / "answer_samples.parquet")
    assert len(table) == 4 * 3 and table.groupby("id").size().eq(3).all()
    ids = table["id"].unique().tolist()
    assert table["class"].tolist() == [0, 0, 1, 0, 0, 0, 0, 1, 2, 0, 1, 2]
    assert table["correct"].tolist() == [
        True, True, False, True, True, True, False, False, True, True, False, False
    ]  # fmt: skip
    assert table["mean_logprob"].tolist() == pytest.approx([-0.1, -0.2, -0.3] * 4)
    est = pd.read_parquet(out / "tables" / "sample_estimators.parquet").set_index("id")
    for id_, part in table.groupby("id", sort=False):
        # by hand: classes are the parsed numbers, an unparsed answer a class of its own
        keys = [f"none{i}" if pd.isna(p) else float(p) for i, p in enumerate(part["prediction"])]
        counts = pd.Series(keys, dtype=object).value_counts()
        row = est.loc[id_]
        assert row["samples_semantic_entropy"] == pytest.approx(_by_hand_entropy(counts))
        assert row["samples_distinct_answers"] == len(counts)
        lp = np.array([-0.1, -0.2, -0.3])
        w = np.exp(lp) / np.exp(lp).sum()
        mass = pd.Series(w).groupby(part["class"].to_numpy()).sum()
        weighted = -(mass * np.log(mass)).sum()
        assert row["samples_semantic_entropy_weighted"] == pytest.approx(weighted)
        texts = part["text"].tolist()
        pairs = [estimators.rouge_l(texts[i], texts[j]) for i in range(3) for j in range(i + 1, 3)]
        assert row["samples_lexical_similarity"] == pytest.approx(np.mean(pairs))
    assert est.loc[ids[0], "samples_semantic_entropy"] == pytest.approx(
        -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    )
    assert est.loc[ids[1], "samples_semantic_entropy"] == 0
    assert est.loc[ids[2], "samples_distinct_answers"] == 3

    # EigenScore: the middle layer (3 blocks: after block 1) at each answer's last token
    rd = RunDir(out, m)
    hidden = rd.read_in_order("sample_hidden", ["id", "sample"], ids)
    assert (hidden["layer"] == 1).all() and len(hidden) == 12
    prompts = pd.read_parquet(out / "tables" / "prompts.parquet").set_index("id")
    model = AutoModelForCausalLM.from_pretrained(tiny_peaked, torch_dtype=torch.float32)
    shards = rd.read_in_order("answer_samples", ["id", "sample"], ids)
    for row in shards.iloc[[0, 7]].itertuples():
        seq = [*prompts.loc[row.id, "prompt_token_ids"], *row.token_ids]
        with torch.no_grad():
            states = model(torch.tensor([seq]), output_hidden_states=True).hidden_states
        vec = hidden[(hidden.id == row.id) & (hidden["sample"] == row.sample)]["vector"].iloc[0]
        np.testing.assert_allclose(vec, states[1][0, -1].numpy(), rtol=1e-4, atol=1e-4)
    for id_, part in hidden.groupby("id", sort=False):
        assert est.loc[id_, "samples_eigenscore"] == pytest.approx(
            estimators.eigenscore(np.stack(part["vector"]))
        )

    # the signals table has the new rows, oriented and scored like every other signal
    signals = pd.read_csv(out / "tables" / "signals.csv").set_index("signal")
    for name in multisample.SIGNALS:
        assert signals.loc[name, "kind"] == "samples" and signals.loc[name, "n"] == 4
    assert signals.loc["samples_lexical_similarity", "direction"] == "lower"
    assert signals.loc["samples_semantic_entropy", "direction"] == "higher"
    values = pd.read_parquet(out / "tables" / "signal_values.parquet").set_index("id")
    assert values.loc[ids, "correct"].tolist() == [True, False, True, False]
    from sklearn.metrics import roc_auc_score

    err = ~values.loc[ids, "correct"].to_numpy()
    se = values.loc[ids, "samples_semantic_entropy"].to_numpy()
    assert signals.loc["samples_semantic_entropy", "roc_auc"] == pytest.approx(
        roc_auc_score(err, se)
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grade", "--generations", "1"], "--generations 1: the multi-sample estimators"),
        (["--generations", "2"], "--generations needs graded answers"),
    ],
)
def test_generations_refused(cli, tiny_peaked, tmp_path, args, message):
    result = cli("correlate", "--model", tiny_peaked, "--engine", "hf", "--dataset", "gsm8k",
                 "--quiet", *args)  # fmt: skip
    assert result.exit_code == 2 and message in " ".join(result.stderr.split())
    assert not (tmp_path / "runs").exists()


def test_accuracy_generations_math_classes(cli, tiny_llama, tmp_path, monkeypatch):
    from entrainment_cli.data import registry

    data = registry.load(registry.get_spec("math500"))
    gold = {i: str(r["answer"]) for i, r in zip(data.ids, data.rows, strict=True)}
    first = data.ids[0]
    tok = AutoTokenizer.from_pretrained(tiny_llama)

    def samples(key):
        if key == first:  # gold 3 pi / 2 or so: the same answer written two ways, then another
            return [f"\\boxed{{{gold[key]}}}", f"So \\boxed{{ {gold[key]} }}.", "\\boxed{-1}"]
        return ["\\boxed{-1}", "no box", "\\boxed{-1}"]

    _script(monkeypatch, tok, lambda k: f"\\boxed{{{gold[k]}}}", samples)
    out = tmp_path / "a"
    result = cli("qa", "accuracy", "--model", tiny_llama, "--engine", "hf", "--limit", 1,
                 "--max-tokens", 16, "--metrics", "l1", "--generations", 3,
                 "--sample-temperature", 0.7, "--seed", 3, "--n-boot", 50, "--run-dir", out,
                 "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "tables" / "answer_samples.parquet")
    mine = table[table.id == first]
    assert mine["class"].tolist() == [0, 0, 1] and mine["correct"].tolist() == [True, True, False]
    other = table[table.id != first]
    assert all(c == [0, 1, 0] for c in other.groupby("id")["class"].agg(list))
    est = pd.read_parquet(out / "tables" / "sample_estimators.parquet").set_index("id")
    h = _by_hand_entropy([2, 1])
    assert est["samples_semantic_entropy"].tolist() == pytest.approx([h] * len(est))
    assert est["samples_distinct_answers"].eq(2).all()
    signals = pd.read_csv(out / "tables" / "signals.csv").set_index("signal")
    assert set(multisample.SIGNALS) <= set(signals.index)
    assert read_manifest(out)["identity"]["generations"] == 3


def test_engines_sample_reproducibly_by_key(tiny_llama, vllm_engine, embedded):
    """Answer k of a prompt comes from seed sample_seed(seed, key) + k, whatever the other
    prompts or their order: on hf, and on vLLM (n = K, its own seed + k rule)."""
    tok = AutoTokenizer.from_pretrained(embedded.path)
    prompts = [tok("Question: 2 + 3 =")["input_ids"], tok("My name is")["input_ids"]]
    sampling = Sampling(1.0, 0.9, 8, 5)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype=torch.float32)
    hf = generate.HFEngine(model, AutoTokenizer.from_pretrained(tiny_llama), batch_size=4)
    for engine in (hf, vllm_engine):
        a = engine.sample(prompts, ["a", "b"], sampling, 3)
        b = engine.sample(prompts[::-1], ["b", "a"], sampling, 3)
        assert [len(x) for x in a] == [3, 3]
        assert [g.token_ids for g in a[0]] == [g.token_ids for g in b[1]]
        assert len({tuple(g.token_ids) for g in a[1]}) > 1  # K different draws
    seeds = [sample_seed(5, "b") + k for k in range(3)]
    one = vllm_engine._run([prompts[1]] * 3, ["b"] * 3, sampling, seeds, 1, None)
    assert [g[0].token_ids for g in one] == [g.token_ids for g in a[1]]
    for single, child in zip(one, a[1], strict=True):
        assert single[0].logprobs == pytest.approx(child.logprobs, abs=1e-4)


def test_hf_sample_prefills_once_and_equals_separate_rows(tiny_llama, monkeypatch):
    """hf: the K rows of a prompt reuse one prefill (its KV cache repeated), and draw exactly
    the tokens that K independent rows with the same seeds draw (left padding included)."""
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, torch_dtype=torch.float32)
    engine = generate.HFEngine(model, tok, batch_size=6)
    prompts = [tok("Question: 2 + 3 =")["input_ids"], tok("My name is Anna and I")["input_ids"]]
    keys, n, sampling = ["a", "b"], 3, Sampling(1.0, 0.9, 6, 2)
    real, prefills = generate.HFEngine._prefill, []

    def counted(self, input_ids, mask, share):
        prefills.append((len(input_ids), share))
        return real(self, input_ids, mask, share)

    monkeypatch.setattr(generate.HFEngine, "_prefill", counted)
    shared = engine.sample(prompts, keys, sampling, n)
    assert prefills == [(2, 3)]  # 6 rows a call: both prompts, each prefilled once
    rows = [p for p in prompts for _ in range(n)]
    seeds = [sample_seed(2, k) + j for k in keys for j in range(n)]
    plain = engine._rows(rows, seeds, sampling, None)
    assert len(prefills) == 1
    for q, answers in enumerate(shared):
        for a, b in zip(answers, plain[q * n : (q + 1) * n], strict=True):
            assert a.token_ids == b.token_ids
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_cot_generations_join_its_signals(cli, tiny_llama, tmp_path, monkeypatch):
    """cot --generations K (issue 21.4): K answers per test problem beside the greedy graded
    one, classed by math-verify against each other, their estimators in signals.csv."""
    from entrainment_cli.data import registry

    data = registry.load(registry.get_spec("math500"))
    gold = {i: str(r["answer"]) for i, r in zip(data.ids, data.rows, strict=True)}
    tok = AutoTokenizer.from_pretrained(tiny_llama)

    def samples(key):
        return [f"\\boxed{{{gold[key]}}}", f"So \\boxed{{ {gold[key]} }}.", "\\boxed{-1}"]

    calls = _script(monkeypatch, tok, lambda k: "\\boxed{-1}", samples)
    out = tmp_path / "c"
    result = cli("cot", "--model", tiny_llama, "--engine", "hf", "--sample", 3, "--pool-size", 9,
                 "--n-levels", 3, "--max-tokens", 16, "--generations", 3,
                 "--sample-temperature", 0.7, "--seed", 3, "--run-dir", out,
                 "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls["sample"] == 1
    table = pd.read_parquet(out / "tables" / "answer_samples.parquet")
    assert table.groupby("id").size().eq(3).all() and table["id"].nunique() == 3
    assert all(c == [0, 0, 1] for c in table.groupby("id")["class"].agg(list))
    assert table["correct"].tolist() == [True, True, False] * 3
    est = pd.read_parquet(out / "tables" / "sample_estimators.parquet")
    assert est["samples_semantic_entropy"].tolist() == pytest.approx([_by_hand_entropy([2, 1])] * 3)
    signals = pd.read_csv(out / "tables" / "signals.csv").set_index("signal")
    assert set(multisample.SIGNALS) <= set(signals.index)
    generations = pd.read_parquet(out / "tables" / "generations.parquet")
    assert not generations["correct"].any()  # the greedy answer is still the graded one
    identity = read_manifest(out)["identity"]
    assert (identity["generations"], identity["sample_temperature"]) == (3, 0.7)
