"""`entrain correlate` on a tiny random Llama with the transformers engine."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from transformers import AutoModelForCausalLM

from entrainment_cli.data import registry
from entrainment_cli.engines import generate
from entrainment_cli.engines.generate import Generation
from entrainment_cli.runs.rundir import read_manifest

TOKEN_COLUMNS = [
    "id",
    "step",
    "token_id",
    "token",
    "entropy",
    "logprob",
    "nucleus_size",
    "topp_entropy",
    "topp_entropy_norm",
    "stops",
    "logtoku_au",
    "logtoku_eu",
    "engine_logprob",
]


def _run(cli, model, run_dir, *extra):
    return cli(
        "correlate",
        "--model",
        model,
        "--run-dir",
        run_dir,
        "--engine",
        "hf",
        "--limit",
        "5",
        "--max-tokens",
        "12",
        "--batch-size",
        "2",
        "--n-boot",
        "100",
        "--top-p",
        "0.95",
        "--quiet",
        *extra,
    )


@pytest.fixture(scope="module")
def gsm_run(tiny_peaked, tmp_path_factory):
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app

    out = tmp_path_factory.mktemp("corr") / "gsm8k"
    args = [
        "correlate",
        "--model",
        str(tiny_peaked),
        "--run-dir",
        str(out),
        "--engine",
        "hf",
        "--dataset",
        "gsm8k",
        "--limit",
        "5",
        "--max-tokens",
        "12",
        "--batch-size",
        "2",
        "--n-boot",
        "100",
        "--top-p",
        "0.95",
        "--metrics",
        "l1,hoyer",
        "--layers",
        "1,-1",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_dataset_is_honoured_and_tables_written(gsm_run):
    prompts = pd.read_parquet(gsm_run / "tables" / "prompts.parquet")
    rows = registry.load(registry.get_spec("gsm8k")).rows[:5]
    assert prompts["prompt"].tolist() == [r["question"] for r in rows]  # not writingprompts
    assert list(prompts.columns) == [
        "id",
        "prompt",
        "prompt_token_ids",
        "generated_text",
        "n_tokens",
        "finish_reason",
        "token_ids",
    ]
    tokens = pd.read_parquet(gsm_run / "tables" / "tokens.parquet")
    assert list(tokens.columns[: len(TOKEN_COLUMNS) - 1]) == TOKEN_COLUMNS[:-1]
    assert {"engine_logprob", "h1_l1", "h1_hoyer", "h-1_l1", "h-1_hoyer"} <= set(tokens.columns)
    assert len(tokens) == prompts["n_tokens"].sum() > 0
    assert not tokens.duplicated(["id", "step"]).any()
    m = read_manifest(gsm_run)
    assert m["engine"] == "hf" and m["status"] == "done" and m["dataset"]["id"] == "gsm8k"
    assert m["max_abs_logprob_diff"] < 1e-4  # float32 model: engine and probe agree
    assert m["counts"]["tokens"] == len(tokens)
    assert (gsm_run / "figures" / "entropy_vs_stops.png").stat().st_size > 10_000


def test_token_quantities_match_an_independent_computation(gsm_run, tiny_peaked):
    prompts = pd.read_parquet(gsm_run / "tables" / "prompts.parquet")
    tokens = pd.read_parquet(gsm_run / "tables" / "tokens.parquet")
    model = AutoModelForCausalLM.from_pretrained(tiny_peaked).eval()
    emb = model.get_input_embeddings().weight.detach().double().numpy()
    checked_stops = 0
    for p0 in prompts.itertuples():
        toks = tokens[tokens.id == p0.id].sort_values("step")
        seq = list(p0.prompt_token_ids) + toks["token_id"].tolist()
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0].double().numpy()
        checked_stops += _check_tokens(toks, logits, len(p0.prompt_token_ids), emb)
    assert checked_stops > 0


def _check_tokens(toks, logits, P, emb) -> int:
    checked_stops = 0
    for row in toks.itertuples():
        z = logits[P + row.step - 1]
        p = np.exp(z - z.max())
        p /= p.sum()
        assert row.entropy == pytest.approx(-(p * np.log(p)).sum(), rel=1e-3, abs=5e-5)
        assert row.logprob == pytest.approx(math.log(p[row.token_id]), abs=1e-4)
        order = np.argsort(-p)
        cum = np.cumsum(p[order])
        k = int(row.nucleus_size)
        # the smallest prefix reaching 0.95, up to float32 rounding of the running mass
        assert cum[k - 1] >= 0.95 - 1e-5 and (k == 1 or cum[k - 2] < 0.95 + 1e-5)
        assert abs(k - (np.searchsorted(cum, 0.95) + 1)) <= max(1, k // 1000)
        nucleus = order[:k]
        q = p[nucleus] / p[nucleus].sum()
        assert row.topp_entropy == pytest.approx(-(q * np.log(q)).sum(), rel=1e-3, abs=5e-5)
        if k == 1:
            assert math.isnan(row.stops)
        elif k <= 3000:  # an explicit K x K Gram matrix stays affordable
            unit = emb[nucleus] / np.linalg.norm(emb[nucleus], axis=1, keepdims=True)
            want = (unit @ unit.T)[np.triu_indices(k, 1)].mean()
            assert row.stops == pytest.approx(want, rel=1e-3, abs=1e-5)
            checked_stops += 1
    return checked_stops


def test_stats_fit_and_bins(gsm_run):
    tokens = pd.read_parquet(gsm_run / "tables" / "tokens.parquet")
    pooled = tokens[tokens.nucleus_size >= 2].dropna(subset=["topp_entropy", "stops"])
    s = pd.read_csv(gsm_run / "tables" / "stats.csv").iloc[0]
    assert s["n"] == len(pooled) and s["n_prompts"] == pooled["id"].nunique()
    rho, p = stats.spearmanr(pooled["topp_entropy"], pooled["stops"])
    assert s["spearman_rho"] == pytest.approx(rho)
    # p over prompts (the bootstrap's units), never over tokens as if independent
    assert s["n_units"] == s["n_prompts"] and p < s["spearman_p"] <= 1
    assert s["pearson_r"] == pytest.approx(
        stats.pearsonr(pooled["topp_entropy"], pooled["stops"])[0]
    )
    bins = pd.read_csv(gsm_run / "tables" / "bins.csv")
    assert bins["n"].sum() == len(pooled) and (bins["n"] > 0).all() and len(bins) <= 50
    fit = json.loads((gsm_run / "tables" / "fit.json").read_text())
    assert {"a", "b", "c", "r2", "peak_x", "converged"} <= set(fit)
    assert "\\toprule" in (gsm_run / "tables" / "stats.tex").read_text()


def test_analyze_several_runs_into_one_table_and_grid(cli, gsm_run, tiny_peaked, tmp_path):
    xsum = tmp_path / "xsum"
    assert _run(cli, tiny_peaked, xsum, "--dataset", "xsum").exit_code == 0
    prompts = pd.read_parquet(xsum / "tables" / "prompts.parquet")
    assert prompts["prompt"].str.startswith("Please summarize the following text:\n ").all()
    out = tmp_path / "joint"
    result = cli("correlate-analyze", xsum, gsm_run, "--out", out, "--n-boot", "50")
    assert result.exit_code == 0, result.output
    joint = pd.read_csv(out / "stats.csv")
    assert joint["dataset"].tolist() == ["gsm8k", "xsum"]  # stable order, whatever the input
    assert (out / "entropy_vs_stops_grid.png").stat().st_size > 10_000
    assert joint["model"].nunique() == 1 and "\\bottomrule" in (out / "stats.tex").read_text()
    for f in (gsm_run / "figures").iterdir():
        f.unlink()
    assert cli("plot", gsm_run).exit_code == 0
    assert (gsm_run / "figures" / "entropy_vs_stops.png").is_file()
    # two runs of one model and dataset: refused before anything is written
    twin = tmp_path / "twin" / gsm_run.name
    shutil.copytree(gsm_run, twin)
    again = tmp_path / "again"
    result = cli("correlate-analyze", gsm_run, twin, "--out", again)
    assert result.exit_code == 2 and "one row per model and dataset" in result.output
    assert not again.exists()


def test_empty_generation_is_a_row_not_a_crash(cli, tiny_peaked, tmp_path, monkeypatch):
    real = generate.make_engine

    def engine_with_empty_first(*args, **kwargs):
        engine = real(*args, **kwargs)
        inner = engine.generate

        def gen(prompts, keys, sampling, on_done=None):
            out = inner(prompts, keys, sampling, on_done)
            out[0] = Generation([], [], "stop")  # EOS sampled first
            return out

        engine.generate = gen
        return engine

    monkeypatch.setattr("entrainment_cli.pipeline.make_engine", engine_with_empty_first)
    out = tmp_path / "r"
    assert _run(cli, tiny_peaked, out).exit_code == 0
    prompts = pd.read_parquet(out / "tables" / "prompts.parquet")
    assert (prompts["n_tokens"] == 0).sum() >= 1
    assert read_manifest(out)["counts"]["empty_generations"] >= 1


def test_interrupted_probe_resumes_without_duplicates(cli, ctrl_c, tiny_peaked, tmp_path):
    from entrainment_cli.engines.token_probe import TokenProbe

    whole = tmp_path / "whole"
    assert _run(cli, tiny_peaked, whole).exit_code == 0
    part = tmp_path / "part"
    with ctrl_c(TokenProbe, "measure", 2):
        assert _run(cli, tiny_peaked, part).exit_code == 130
    assert read_manifest(part)["status"] == "failed"
    assert _run(cli, tiny_peaked, part, "--resume").exit_code == 0
    a = pd.read_parquet(whole / "tables" / "tokens.parquet")
    b = pd.read_parquet(part / "tables" / "tokens.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_prompt_longer_than_context_is_skipped_and_counted(cli, tiny_peaked, tmp_path):
    rows = registry.load(registry.get_spec("gsm8k")).rows[:3]
    rows[1] = {"question": "word " * 600, "answer": "#### 1"}  # tiny model context: 512
    path = tmp_path / "g.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "r"
    result = _run(cli, tiny_peaked, out, "--dataset", "gsm8k", "--data-file", path)
    assert result.exit_code == 0, result.output
    m = read_manifest(out)
    assert m["counts"]["skipped_too_long"] == 1 and m["counts"]["generated_prompts"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top-p", "1.5"], "top-p must be in (0, 1]; got 1.5"),
        (["--top-p", "0"], "top-p must be in (0, 1]"),
        (["--engine", "tgi"], "unknown --engine 'tgi'; use auto, vllm or hf"),
        (["--dataset", "nope"], "unknown --dataset 'nope'; use one of gsm8k, writingprompts, xsum"),
        (["--dataset", "mmlu_pro"], "unknown --dataset 'mmlu_pro'; use one of gsm8k,"),
        (["--metrics", "l3"], "unknown metric 'l3'"),
        (["--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_input(cli, tiny_peaked, tmp_path, args, message):
    result = cli("correlate", "--model", tiny_peaked, "--quiet", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "runs").exists()


def test_vllm_missing_says_how_to_install(cli, tiny_peaked, tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "vllm_available", lambda: False)
    result = cli("correlate", "--model", tiny_peaked, "--engine", "vllm", "--quiet")
    assert result.exit_code == 2 and "pip install" in result.stderr


def test_vllm_correlate_on_embedded_model(cli, vllm_engine, tmp_path):
    """vLLM generation, hf probe: the two log-probs of each sampled token agree."""
    out = tmp_path / "vllm"
    result = cli(
        "correlate",
        "--engine",
        "vllm",
        "--dataset",
        "xsum",
        "--limit",
        "3",
        "--max-tokens",
        "16",
        "--n-boot",
        "50",
        "--run-dir",
        out,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    m = read_manifest(out)
    assert m["engine"] == "vllm" and m["model"]["source"] == "embedded"
    assert m["counts"]["tokens"] > 0 and m["max_abs_logprob_diff"] < 1e-3
    tokens = pd.read_parquet(out / "tables" / "tokens.parquet")
    assert (tokens["engine_logprob"] - tokens["logprob"]).abs().max() < 1e-3


def test_every_stage_has_its_own_timing(gsm_run):
    timings = read_manifest(gsm_run)["timings"]
    assert {"generate", "token_probe", "analysis", "figures"} <= set(timings)
    assert timings["token_probe"]["prompts"] > 0 and "probe" not in timings
