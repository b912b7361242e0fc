"""`entrain pretrain`: tokenizer, packing, schedule, and a tiny run end to end, checked
against independent computations."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from test_sparsity import reference
from transformers import AutoModelForCausalLM, AutoTokenizer

from entrainment_cli.engines import models
from entrainment_cli.errors import UserError
from entrainment_cli.pretrain import train
from entrainment_cli.pretrain.tokenizer import build_tokenizer
from entrainment_cli.runs.rundir import read_manifest

GRAPH = [
    "--entities", "1000", "--relations", "20", "--rules", "10", "--deductible-rules", "8",
    "--n-atomic", "2000", "--n-derived", "2000", "--num-test", "40",
]  # fmt: skip
STEPS = 60
METRICS = ["top5_energy", "top10_energy", "eff_rank", "l1"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


RUN = [
    "pretrain", "--llm-size", "llama-1-1", "--steps", str(STEPS), "--eval-every", "20",
    "--batch-size", "16", "--lr", "3e-3", "--layers", "0,-1", "--metrics", ",".join(METRICS),
    "--seed", "0", "--dtype", "float32", "--rank-eval", "3", "--quiet", *GRAPH,
]  # fmt: skip


def _invoke(*args):
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("pt") / "run"
    result = _invoke(*RUN, "--run-dir", out)
    assert result.exit_code == 0, result.output
    return out


# -- tokenizer ------------------------------------------------------------------------------


def test_tokenizer_ids_and_round_trip(tok, tmp_path):
    text = "Q17 P3 Q2051\n-?"
    ids = tok(text)["input_ids"]
    assert ids == [0, 3, 9, 13, 1, 5, 13, 0, 4, 2, 7, 3, 12, 14, 15]  # upstream's ids
    assert tok.decode(ids) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (
        16,
        17,
        18,
        19,
    )
    assert len(tok) == 20
    assert tok("Q1 ")["input_ids"] + tok("P2")["input_ids"] == tok("Q1 P2")["input_ids"]
    assert tok("Qx")["input_ids"] == [0, 19]
    assert tok.decode([*ids, 17, 18], skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids and loaded.decode(ids) == text
    assert loaded.eos_token == "<EOS>" and loaded.pad_token_id == 18


# -- model, packing, schedule ---------------------------------------------------------------


def test_parse_size():
    size = train.parse_size("llama-16-16")
    assert (size.layers, size.heads, size.hidden) == (16, 16, 1024)
    assert round(size.n_params(20) / 1e9, 2) == 0.17  # upstream's table (spec 2.5)
    assert round(train.parse_size("llama-32-32").n_params(20) / 1e9, 2) == 1.34
    for bad in ("llama-16", "gpt-2-2", "llama-0-4", "llama-a-b"):
        with pytest.raises(UserError, match="llama-LAYERS-HEADS"):
            train.parse_size(bad)


def test_model_shape_and_seeded_init(tok):
    size = train.LlamaSize(2, 3)
    a, b = train.build_model(size, tok, 5), train.build_model(size, tok, 5)
    c = train.build_model(size, tok, 6)
    cfg = a.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads) == (192, 384, 3)
    assert (cfg.num_key_value_heads, cfg.num_hidden_layers, cfg.vocab_size) == (3, 2, 20)
    w = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])
    assert sum(p.numel() for p in a.parameters()) == size.n_params(20)


def test_packed_loss_equals_one_padded_line_per_fact(tok):
    model = train.build_model(train.LlamaSize(2, 2), tok, 0).eval()
    facts = ["Q17 P3 Q2051", "Q1 P0 Q5", "Q123 P45 Q9", "Q9 P9 Q9999"] * 5
    seqs = [tok(f)["input_ids"] + [tok.eos_token_id] for f in facts]
    batch = train.pack(seqs, 16, tok.pad_token_id)
    assert batch.input_ids.shape == (5, train.PACK * 16) and batch.tokens == sum(map(len, seqs))
    with torch.no_grad():
        packed = model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            labels=batch.labels,
            use_cache=False,
        ).loss
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        labels = ids.masked_fill(mask == 0, -100)
        padded = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    assert packed.item() == pytest.approx(padded.item(), abs=1e-5)


def test_autocast_dtype():
    assert train.autocast_dtype("float32", "cuda") is None
    assert train.autocast_dtype("bfloat16", "cpu") == torch.bfloat16
    assert train.autocast_dtype("auto", "cuda") == torch.bfloat16
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert train.autocast_dtype("auto", "cpu") == (torch.bfloat16 if native else None)


def test_fact_batches_cover_each_epoch_and_are_seeded():
    seqs = [[i] for i in range(10)]
    first = [b for _, b in zip(range(5), train.fact_batches(seqs, 4, seed=1), strict=False)]
    flat = [s[0] for b in first for s in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    again = [b for _, b in zip(range(5), train.fact_batches(seqs, 4, seed=1), strict=False)]
    assert first == again


def test_schedule_matches_transformers():
    from transformers import get_cosine_schedule_with_warmup

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    ref = get_cosine_schedule_with_warmup(opt, num_warmup_steps=20, num_training_steps=100)
    for step in range(100):
        assert train.lr_factor(step, 100, 20) == pytest.approx(ref.get_last_lr()[0], abs=1e-9)
        opt.step()
        ref.step()


# -- end to end -----------------------------------------------------------------------------


def test_run_directory_and_tables(finished):
    m = read_manifest(finished)
    assert m["status"] == "done" and m["command"] == "pretrain" and m["seed"] == 0
    assert m["options"]["llm_size"] == "llama-1-1" and m["dataset"]["id"] == "synthetic-kg"
    assert m["training"]["tokens_per_s"] > 0 and m["timings"]["train"]["tokens"] > 0
    stats = json.loads((finished / "kg" / "stats.json").read_text())
    queries = pd.read_parquet(finished / "kg" / "queries.parquet")
    assert stats["pool_sizes"] == queries["split"].value_counts().to_dict()
    assert len(pd.read_parquet(finished / "kg" / "train.parquet")) == 4000
    assert len(json.loads((finished / "kg" / "rules.json").read_text())) == 10
    facts = pd.read_parquet(finished / "kg" / "facts.parquet")
    assert int(facts["in_train"].sum()) == 4000 and len(facts) == stats["facts"]

    evals = pd.read_parquet(finished / "tables" / "eval.parquet")
    base = ["id", "split", "h", "r", "t", "kind", "rule_length"]
    base += ["prior_credit", "popularity_credit", "step"]
    assert list(evals.columns) == [*base, "correct", "pred", "gold_loss", "layer", *METRICS]
    assert sorted(evals["step"].unique()) == [0, 20, 40, 60]
    assert len(evals) == len(queries) * 4 * 2  # queries x steps x layers
    assert not evals.duplicated(["id", "step", "layer"]).any()

    dyn = pd.read_parquet(finished / "tables" / "dynamics.parquet")
    head = ["step", "split", "layer", "n", "accuracy", "accuracy_sem"]
    head += ["prior_accuracy", "popularity_accuracy", "accuracy_prior_wrong", "n_prior_wrong"]
    head += ["loss", "loss_sem"]
    assert list(dyn.columns) == head + [f"{m}_{s}" for m in METRICS for s in ("mean", "sem")]
    assert len(dyn) == 4 * 3 * 2
    # dynamics are the eval table's means, computed independently here
    for row in dyn.itertuples():
        part = evals[(evals.step == row.step) & (evals.split == row.split)]
        part = part[part.layer == row.layer]
        assert row.n == len(part)
        assert row.accuracy == pytest.approx(part["correct"].mean())
        assert row.loss == pytest.approx(part["gold_loss"].mean())
        assert row.prior_accuracy == pytest.approx(part["prior_credit"].mean())
        assert row.popularity_accuracy == pytest.approx(part["popularity_credit"].mean())
        wrong = part[part["prior_credit"] == 0]
        assert row.n_prior_wrong == len(wrong)
        assert row.accuracy_prior_wrong == pytest.approx(wrong["correct"].mean(), nan_ok=True)
        assert row.top5_energy_mean == pytest.approx(part["top5_energy"].mean())
        sem = part["eff_rank"].std(ddof=1) / math.sqrt(len(part))
        assert row.eff_rank_sem == pytest.approx(sem)
    final = pd.read_csv(finished / "tables" / "final.csv")
    assert set(final["step"]) == {STEPS} and len(final) == 6
    assert {"prior_accuracy", "popularity_accuracy", "accuracy_prior_wrong"} <= set(final)
    assert stats["negatives"] == "relation" and m["options"]["negatives"] == "relation"
    assert set(stats["relation_mix"]) == {"id", "ood_medium", "ood_hard"}
    relations = pd.read_csv(finished / "tables" / "relations.csv")
    last = evals[(evals.step == STEPS) & (evals.layer == 0)]
    for row in relations.itertuples():
        part = last[(last.split == row.split) & (last.r == row.r)]
        assert row.relation == f"P{row.r}" and row.n == len(part)
        assert row.accuracy == pytest.approx(part["correct"].mean())
        assert row.prior_accuracy == pytest.approx(part["prior_credit"].mean())
    assert relations.groupby("split")["n"].sum().to_dict() == stats["pool_sizes"]
    assert not (finished / "resume").exists()

    log = pd.read_parquet(finished / "tables" / "train.parquet")
    assert list(log.columns) == ["step", "loss", "lr", "tokens", "tokens_per_s"]
    assert log["step"].tolist() == list(range(10, STEPS + 1, 10))
    assert log["loss"].iloc[-1] < log["loss"].iloc[0] - 0.3  # training lowers the loss
    for name in ("dynamics_layer-1", "dynamics_layer0", "final_layer-1", "train_loss"):
        assert (finished / "figures" / f"{name}.png").is_file()


def test_checkpoint_loads_everywhere(finished):
    ckpt = finished / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    assert model.config.num_hidden_layers == 1 and len(tokenizer) == 20
    resolved = models.resolve_model(str(ckpt))
    assert resolved.source == "local"
    loaded, tok = models.load_model(resolved, "cpu", torch.float32)
    assert tok.pad_token_id == 18
    assert (
        read_manifest(finished)["model"]["weights_sha256"] == resolved.identity()["weights_sha256"]
    )
    ids = torch.tensor([tok("Q1 P2 ")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits)


def test_checkpoint_serves_with_vllm(finished):
    """vLLM loads the checkpoint and its greedy continuation equals transformers'."""
    import os

    from entrainment_cli.engines import generate

    if not generate.vllm_available():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("vLLM is not installed but CI=true: CI must run the vLLM tests")
        pytest.skip("vLLM is not installed")
    ckpt = finished / "checkpoint"
    tok = AutoTokenizer.from_pretrained(ckpt)
    prompts = [tok(p)["input_ids"] for p in ("Q1 P2 ", "Q17 P3 ", "Q400 P7 ")]
    engine = generate.make_engine(
        "vllm", ckpt, device="cpu", dtype=torch.float32, batch_size=4, max_model_len=64
    )
    try:
        gens = engine.generate(
            prompts, ["a", "b", "c"], generate.Sampling(temperature=0, max_tokens=6)
        )
    finally:
        generate.close_engines(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    for prompt, gen in zip(prompts, gens, strict=True):
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=18
        )[0, len(prompt) :].tolist()
        if gen.finish_reason == "stop":  # vLLM leaves the final EOS out
            out = out[: out.index(tok.eos_token_id)]
        assert gen.token_ids == out


def test_final_scores_and_metrics_match_an_independent_pass(finished):
    """Re-score the last step's queries one option at a time with plain HF forwards."""
    ckpt = finished / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    queries = pd.read_parquet(finished / "kg" / "queries.parquet").groupby("split").head(4)
    evals = pd.read_parquet(finished / "tables" / "eval.parquet")
    final = evals[(evals.step == STEPS) & (evals.layer == -1)].set_index("id")
    for q in queries.itertuples():
        prompt = tok(q.prompt)["input_ids"]
        scores = []
        for option in q.options:
            answer = tok(f"Q{option}")["input_ids"] + [tok.eos_token_id]
            ids = torch.tensor([prompt + answer])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            positions = range(len(prompt) - 1, len(prompt) + len(answer) - 1)
            scores.append(-np.mean([logp[p, ids[0, p + 1]].item() for p in positions]))
        row = final.loc[q.id]
        assert row.gold_loss == pytest.approx(scores[q.gold], abs=1e-4)
        assert row.correct == (int(np.argmin(scores)) == q.gold)
        with torch.no_grad():
            hidden = model(torch.tensor([prompt]), output_hidden_states=True).hidden_states[-1]
        h = hidden[0, -1].numpy()
        for name in METRICS:
            assert row[name] == pytest.approx(reference(name, h), rel=1e-4)


def test_rank_eval_matches_an_independent_ranking(finished):
    """The gold's filtered rank among all entities, recomputed with plain HF forwards (one
    sequence per entity, padded), and the relation prior's from the training table."""
    ckpt = finished / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    stats = json.loads((finished / "kg" / "stats.json").read_text())
    ranks = pd.read_parquet(finished / "tables" / "rank.parquet").set_index("id")
    assert ranks["split"].value_counts().to_dict() == {s: 3 for s in stats["pool_sizes"]}
    queries = pd.read_parquet(finished / "kg" / "queries.parquet").set_index("id")
    facts = pd.read_parquet(finished / "kg" / "facts.parquet")
    train_set = pd.read_parquet(finished / "kg" / "train.parquet")
    n = stats["entities"]
    for qid in ranks.groupby("split").head(1).index:
        q = queries.loc[qid]
        prompt = tok(q.prompt)["input_ids"]
        seqs = [prompt + tok(f"Q{e}")["input_ids"] + [tok.eos_token_id] for e in range(n)]
        width = max(map(len, seqs))
        ids = torch.full((n, width), tok.pad_token_id)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = torch.tensor(seq)
        with torch.no_grad():
            logp = torch.log_softmax(model(ids, attention_mask=ids != 18).logits.double(), -1)
        scores = np.array(
            [
                -np.mean(
                    [
                        logp[i, p, seqs[i][p + 1]].item()
                        for p in range(len(prompt) - 1, len(seqs[i]) - 1)
                    ]
                )
                for i in range(n)
            ]
        )
        true = set(facts[(facts.h == q.h) & (facts.r == q.r)]["t"]) | set(q.alt_tails)
        others = [e for e in range(n) if e not in true]
        better = sum(scores[e] < scores[q.t] - 1e-9 for e in others)
        close = sum(abs(scores[e] - scores[q.t]) <= 1e-9 for e in others)
        assert better + 1 <= ranks.loc[qid, "rank"] <= better + 1 + close / 2 + 0.5
        counts = train_set[train_set.r == q.r]["t"].value_counts().to_dict()
        if q.split == "id":
            counts[q.t] -= 1
        c = {e: counts.get(e, 0) for e in range(n)}
        above = sum(c[e] > c[q.t] for e in others)
        ties = sum(c[e] == c[q.t] for e in others)
        assert ranks.loc[qid, "prior_rank"] == 1 + above + 0.5 * ties
    summary = pd.read_csv(finished / "tables" / "rank.csv").set_index("split")
    for split, part in ranks.groupby("split"):
        assert summary.loc[split, "mrr"] == pytest.approx((1 / part["rank"]).mean())
        assert summary.loc[split, "prior_hits10"] == pytest.approx(
            (part["prior_rank"] <= 10).mean()
        )


def test_plot_rebuilds_figures(finished, cli, tmp_path):
    for f in (finished / "figures").glob("*.png"):
        f.unlink()
    result = cli("plot", finished)
    assert result.exit_code == 0, result.output
    assert (finished / "figures" / "dynamics_layer-1.png").is_file()
    twin = tmp_path / "twin"  # a run named twice is one run: compare it with a copy
    shutil.copytree(finished, twin)
    result = cli("plot", finished, twin, "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cmp" / "pretrain_compare.png").is_file()


def _killed_after_step_40(out) -> None:
    """A run with a checkpoint every 20 steps, stopped by an error in step 45."""
    real_pack, calls = train.pack, {"n": 0}

    def dying_pack(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 45:
            raise RuntimeError("killed")
        return real_pack(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "pack", dying_pack)
        with pytest.raises(RuntimeError, match="killed"):
            _invoke(*RUN, "--run-dir", out, "--save-every", "20")


def test_killed_run_resumes_to_the_same_tables(finished, tmp_path):
    """Stopped by an error after the step-40 checkpoint, then resumed: the same final tables
    as the uninterrupted run."""
    out = tmp_path / "run"
    _killed_after_step_40(out)
    assert read_manifest(out)["status"] == "failed"
    assert torch.load(out / "resume" / "state.pt", weights_only=True)["step"] == 40
    result = _invoke(*RUN, "--run-dir", out, "--save-every", "20", "--resume")
    assert result.exit_code == 0, result.output
    assert read_manifest(out)["status"] == "done" and not (out / "resume").exists()
    for table in ("final.csv", "relations.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(out / "tables" / table), pd.read_csv(finished / "tables" / table)
        )
    for table in ("dynamics", "train"):
        a = pd.read_parquet(out / "tables" / f"{table}.parquet")
        b = pd.read_parquet(finished / "tables" / f"{table}.parquet")
        pd.testing.assert_frame_equal(
            a.drop(columns="tokens_per_s", errors="ignore"),
            b.drop(columns="tokens_per_s", errors="ignore"),
        )
    result = _invoke(*RUN, "--run-dir", out, "--resume", "--steps", "61")
    assert result.exit_code == 2 and "different settings" in result.output


def test_a_lost_evaluation_before_the_saved_state_is_redone(finished, tmp_path):
    """Stopped after the step-40 checkpoint with the step-20 evaluation's shard damaged: that
    evaluation cannot be redone from the step-40 state, so the run trains again from step 0
    (it ended done with step 20 missing from dynamics)."""
    out = tmp_path / "run"
    _killed_after_step_40(out)
    shard = out / "tables" / "shards" / "eval" / "000001.parquet"
    assert set(pd.read_parquet(shard)["step"]) == {20}
    shard.write_bytes(shard.read_bytes()[:100])  # damaged

    result = _invoke("pretrain", "--resume", "--run-dir", out)
    assert result.exit_code == 0, result.output
    assert "evaluation at step(s) 20 is lost" in (out / "run.log").read_text()
    for table in ("dynamics", "train"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / "tables" / f"{table}.parquet").drop(
                columns="tokens_per_s", errors="ignore"
            ),
            pd.read_parquet(finished / "tables" / f"{table}.parquet").drop(
                columns="tokens_per_s", errors="ignore"
            ),
        )


def test_seeds_report_mean_and_ci(tmp_path):
    out = tmp_path / "seeds"
    args = [*RUN, "--steps", "10", "--eval-every", "0", "--seeds", "0,1", "--run-dir", out]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    finals = [pd.read_csv(out / f"seed{s}" / "tables" / "final.csv") for s in (0, 1)]
    assert read_manifest(out / "seed1")["seed"] == 1
    summary = pd.read_csv(out / "tables" / "seeds.csv")
    t = 12.706204736174696  # t(0.975, 1 degree of freedom)
    for row in summary.itertuples():
        values = np.array(
            [f[(f.split == row.split) & (f.layer == row.layer)]["accuracy"].iloc[0] for f in finals]
        )
        assert row.seeds == 2 and row.accuracy == pytest.approx(values.mean())
        assert row.accuracy_ci == pytest.approx(t * values.std(ddof=1) / np.sqrt(2))
    for name in ("seeds_accuracy", "pretrain_compare"):
        assert (out / "figures" / f"{name}.png").is_file()
    # its one-page report gives each split's across-seed mean with that CI
    from entrainment_cli.plots.report import load_run

    reported = load_run(out).stats.set_index("statistic")
    assert (out / "report.html").is_file()
    assert (summary.layer == -1).any()
    for row in summary[summary.layer == -1].itertuples():
        r = reported.loc[f"accuracy {row.split} (mean of 2 seeds) [layer -1]"]
        assert r["value"] == pytest.approx(row.accuracy)
        assert r["ci_hi"] - r["ci_lo"] == pytest.approx(2 * row.accuracy_ci, nan_ok=True)


# -- errors ---------------------------------------------------------------------------------


def test_malformed_size_exits_2(cli, tmp_path):
    result = cli("pretrain", "--llm-size", "llama-16", "--run-dir", tmp_path / "r", *GRAPH)
    assert result.exit_code == 2 and "llama-LAYERS-HEADS" in result.output
    assert not (tmp_path / "r").exists()


def test_graph_too_small_names_the_option(cli, tmp_path):
    result = cli("pretrain", "--entities", "200", "--run-dir", tmp_path / "r")
    assert result.exit_code == 2
    assert "--entities" in result.output and "too small" in result.output
    args = [*GRAPH, "--n-atomic", "100000"]
    result = cli("pretrain", "--llm-size", "llama-1-1", "--run-dir", tmp_path / "r", *args)
    assert result.exit_code == 2
    assert "atomic facts" in result.output and "--n-atomic" in result.output
    assert not (tmp_path / "r").exists()


def test_defaults_run_with_seed_0(tmp_path):
    """Issue 22: the default graph with seed 0 stopped with 'queries of ood_medium: 0, need 1;
    raise --entities' (and --entities 8000 the same): no relation of its OOD-medium pool had
    10 answers to balance negatives over. The split now keeps its queries with frequency
    negatives, said in the terminal, run.log, the manifest and the report."""
    out = tmp_path / "run"
    tiny = ["--llm-size", "llama-1-1", "--batch-size", "64", "--dtype", "float32"]
    args = [*tiny, "--steps", "1", "--eval-every", "0", "--num-test", "10", "--metrics", "l1"]
    result = _invoke("pretrain", *args, "--run-dir", out)
    assert result.exit_code == 0, result.output
    stats = json.loads((out / "kg" / "stats.json").read_text())
    assert stats["entities"] == 4000 and stats["negatives"] == "relation"
    assert stats["split_negatives"] == {
        "id": "relation",
        "ood_medium": "frequency",
        "ood_hard": "relation",
    }
    assert all(n >= 1 for n in stats["pool_sizes"].values())
    said = "ood_medium: no relation has 10 answers to balance negatives over"
    assert said in (out / "run.log").read_text()
    assert any(said in w for w in read_manifest(out)["warnings"])
    assert said in (out / "report.html").read_text()


def test_no_rule_for_a_split_names_deductible_rules(cli, tmp_path):
    """A graph with no deductible 2-step rule has no OOD-hard facts whatever --n-derived: the
    message names --deductible-rules when a 2-step rule is drawn but not deductible (6 rules:
    all deductible runs), else --rules."""
    args = [*GRAPH, "--rules", "6", "--deductible-rules", "2"]
    result = cli("pretrain", "--llm-size", "llama-1-1", "--run-dir", tmp_path / "r", *args)
    assert result.exit_code == 2
    assert "deductible rules of length 2 (for ood_hard): 0, need 1" in result.output
    assert "raise --deductible-rules" in result.output
    args = [*GRAPH, "--rules", "4", "--deductible-rules", "4"]
    result = cli("pretrain", "--llm-size", "llama-1-1", "--run-dir", tmp_path / "r", *args)
    assert result.exit_code == 2 and "raise --rules" in result.output
    assert not (tmp_path / "r").exists()


def test_checkpoint_follows_the_umask_and_rank_eval_is_timed_apart(finished):
    """Issue 22: model.safetensors was written 0600 (the rest of the run follows the umask),
    and the rank evaluation's time was reported as 'save'."""
    from entrainment_cli.runs.rundir import file_mode

    modes = {p.name: p.stat().st_mode & 0o777 for p in (finished / "checkpoint").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {file_mode()}
    timings = read_manifest(finished)["timings"]
    assert {"save", "rank_eval"} <= set(timings)
    assert (finished / "tables" / "rank.csv").is_file()


def test_unwritable_run_dir_exits_2(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = ["--llm-size", "llama-1-1", "--steps", "1", *GRAPH]
    result = cli("pretrain", *args, "--run-dir", blocker / "run")
    assert result.exit_code == 2 and "cannot write the run directory" in result.output


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--steps", "0"),
        ("--warmup-ratio", "1"),
        ("--lr", "0"),
        ("--layers", "5"),
        ("--dtype", "fp8"),
        ("--metrics", "nope"),
        ("--negatives", "popular"),
        ("--max-per-relation", "-1"),
        ("--save-every", "-2"),
        ("--seeds", "0,x"),
        ("--rank-eval", "-1"),
    ],
)
def test_bad_options_exit_2(cli, tmp_path, option, value):
    result = cli("pretrain", "--llm-size", "llama-1-1", *GRAPH, option, value)
    assert result.exit_code == 2 and option in result.output


def test_killed_in_the_rank_evaluation_resumes_to_every_stage(finished, tmp_path, monkeypatch):
    """Issue 23.7: stopped in its final stage (the rank evaluation), a run is not 'finished':
    --resume does the rank evaluation and the checkpoint, and its tables equal the whole run's."""
    from entrainment_cli.pretrain import run as pretrain_run

    out = tmp_path / "run"

    def killed(*args, **kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as m:
        m.setattr(pretrain_run, "_rank_eval", killed)
        with pytest.raises(RuntimeError, match="killed"):
            _invoke(*RUN, "--run-dir", out, "--save-every", "20")
    assert read_manifest(out)["status"] == "failed" and not (out / "tables" / "final.csv").exists()
    result = _invoke(*RUN, "--run-dir", out, "--save-every", "20", "--resume")
    assert result.exit_code == 0, result.output
    m = read_manifest(out)
    assert m["status"] == "done" and m["model"]["weights_sha256"] and not (out / "resume").exists()
    for table in ("final.csv", "rank.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(out / "tables" / table), pd.read_csv(finished / "tables" / table)
        )


def test_save_hidden_keeps_the_final_vectors_and_scores_the_shift(tmp_path):
    """Issue 21.3, pretrain: --save-hidden keeps the final evaluation's vectors (they give back
    its metrics) and shift.csv scores ID against each OOD split, a metric's AUROC as sklearn's."""
    from sklearn.metrics import roc_auc_score

    from entrainment_cli.runs.hidden import read_hidden
    from entrainment_cli.science import sparsity

    out = tmp_path / "run"
    args = [a if a != str(STEPS) else "20" for a in RUN]
    result = _invoke(*args, "--eval-every", "10", "--save-hidden", "--run-dir", out)
    assert result.exit_code == 0, result.output
    evals = pd.read_parquet(out / "tables" / "eval.parquet")
    final = evals[evals.step == 20]
    for layer in (0, -1):
        ids, x = read_hidden(out, "samples", layer, "last-prompt")
        part = final[final.layer == layer].set_index("id")
        assert ids == part.index.tolist()
        got = sparsity.compute_metrics(torch.from_numpy(x.astype(np.float32)), METRICS)
        for name in METRICS:
            np.testing.assert_allclose(got[name].numpy(), part[name], rtol=2e-2, atol=1e-3)
    shift = pd.read_csv(out / "tables" / "shift.csv")
    assert set(shift.score) == {"md", "rmd", "n_prompt_tokens", *METRICS}
    assert set(shift.positive) == {"ood_medium", "ood_hard"} and set(shift.reference) == {"id"}
    row = shift[(shift.score == "l1") & (shift.positive == "ood_hard") & (shift.layer == -1)]
    part = final[(final.layer == -1) & final.split.isin(["id", "ood_hard"])]
    expected = roc_auc_score(part.split == "ood_hard", part["l1"])
    assert row["auroc"].item() == pytest.approx(expected)
    assert row["n_shifted"].item() == (part.split == "ood_hard").sum()
