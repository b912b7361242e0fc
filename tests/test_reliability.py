"""Reliability (issue 15): each fault reproduced as the issue wrote it, then shown fixed.

Resume never loses or mixes work, analyses never half-replace tables, NaN is always counted,
bad input and dying processes end in one line (exit 2) with the run left resumable.
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from entrainment_cli.correlate import analysis
from entrainment_cli.data import registry
from entrainment_cli.runs import rundir
from entrainment_cli.runs.rundir import read_manifest

MATH500_ROWS = len(registry.load(registry.get_spec("math500")).rows)


def _rankmath(cli, model, run_dir, *extra):
    return cli(
        "qa",
        "rankmath",
        "--model",
        model,
        "--run-dir",
        run_dir,
        "--batch-size",
        "2",
        "--metrics",
        "l1,hoyer",
        "--n-boot",
        "50",
        "--quiet",
        *extra,
    )


def _correlate(cli, model, run_dir, *extra):
    return cli(
        "correlate",
        "--model",
        model,
        "--run-dir",
        run_dir,
        "--engine",
        "hf",
        "--limit",
        "4",
        "--max-tokens",
        "8",
        "--batch-size",
        "2",
        "--n-boot",
        "50",
        "--quiet",
        *extra,
    )


def _shards(run_dir, table="samples"):
    return sorted((run_dir / "tables" / "shards" / table).iterdir())


# -- 1. a missing or corrupt shard: resume redoes its examples, never overwrites another --------


def test_missing_shard_is_redone_without_overwriting_another(cli, tiny_llama, tmp_path):
    run = tmp_path / "R"
    assert _rankmath(cli, tiny_llama, run).exit_code == 0
    before = _shards(run)
    assert len(before) == (MATH500_ROWS + 1) // 2  # one shard per batch of 2
    kept = {p.name: pd.read_parquet(p) for p in before if p.name != "000003.parquet"}
    (run / "tables" / "shards" / "samples" / "000003.parquet").unlink()

    result = _rankmath(cli, tiny_llama, run, "--resume")
    assert result.exit_code == 0, result.output
    samples = pd.read_parquet(run / "tables" / "samples.parquet")
    assert samples["id"].nunique() == MATH500_ROWS == len(samples)  # one layer, one position
    for name, frame in kept.items():  # no earlier shard was overwritten
        pd.testing.assert_frame_equal(pd.read_parquet(run / "tables/shards/samples" / name), frame)
    assert len(_shards(run)) == len(before)  # the redone batch went to a new name
    assert read_manifest(run)["counts"]["probed"] == MATH500_ROWS


def test_corrupt_shard_is_named_set_aside_and_redone(cli, tiny_llama, tmp_path):
    run = tmp_path / "R"
    assert _rankmath(cli, tiny_llama, run).exit_code == 0
    shard = run / "tables" / "shards" / "samples" / "000004.parquet"
    lost = set(pd.read_parquet(shard)["id"])
    shard.write_bytes(shard.read_bytes()[:100])  # cut short, as by a crash

    result = _rankmath(cli, tiny_llama, run, "--resume")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    log = (run / "run.log").read_text()
    assert "000004.parquet is unreadable" in log and "redone" in log
    assert (shard.parent / "000004.parquet.corrupt").is_file()
    samples = pd.read_parquet(run / "tables" / "samples.parquet")
    assert lost <= set(samples["id"]) and samples["id"].nunique() == MATH500_ROWS


# -- 2. the weights hash is part of the run's identity -----------------------------------------


def test_resume_refuses_changed_weights_at_the_same_path(cli, tiny_llama, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    run = tmp_path / "R"
    assert _rankmath(cli, model, run, "--limit", "1").exit_code == 0
    first = read_manifest(run)
    assert first["identity"]["weights_sha256"] == first["model"]["weights_sha256"]

    weights = model / "model.safetensors"
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0  # other weights, same path
    save_file(tensors, weights, metadata={"format": "pt"})

    result = _rankmath(cli, model, run, "--limit", "1", "--resume")
    assert result.exit_code == 2
    assert "cannot resume" in result.output and "weights_sha256" in result.output
    after = read_manifest(run)
    assert after["model"]["weights_sha256"] == first["model"]["weights_sha256"]
    assert after["status"] == "done"


# -- 4. --analyze --bins 0|-1: refused before anything is written -----------------------------


@pytest.fixture(scope="module")
def corr_run(tiny_peaked, tmp_path_factory):
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app

    run = tmp_path_factory.mktemp("corr") / "R"
    args = ["correlate", "--model", tiny_peaked, "--run-dir", run, "--engine", "hf"]
    args += ["--limit", "4", "--max-tokens", "8", "--batch-size", "2", "--n-boot", "50"]
    result = CliRunner().invoke(app, [str(a) for a in args + ["--quiet"]])
    assert result.exit_code == 0, result.output
    return run


ANALYSIS = ["stats.csv", "stats.tex", "bins.csv", "fit.json"]


def _analysis_files(run):
    return {name: (run / "tables" / name).read_bytes() for name in ANALYSIS}


@pytest.mark.parametrize("bins", ["0", "-1"])
def test_analyze_with_bad_bins_keeps_the_old_analysis(cli, corr_run, bins):
    before = _analysis_files(corr_run)
    result = cli("correlate-analyze", corr_run, "--bins", bins, "--quiet")
    assert result.exit_code == 2
    assert f"--bins must be at least 1, got {bins}" in result.output
    assert _analysis_files(corr_run) == before


def test_analysis_failing_midway_replaces_nothing(cli, corr_run, monkeypatch):
    before = _analysis_files(corr_run)
    calls = []
    real_fsync = rundir.os.fsync

    def fsync_then_full(fd):  # the third file's write fails, as on a full disk
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(rundir.os, "fsync", fsync_then_full)
    with pytest.raises(OSError):
        analysis.analyze_run(corr_run, 2, 7, 50, 0)
    assert _analysis_files(corr_run) == before
    assert not [p for p in (corr_run / "tables").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    analysis.analyze_run(corr_run, 2, 7, 50, 0)  # works once the disk has room
    assert len(pd.read_csv(corr_run / "tables" / "bins.csv")) <= 7


# -- 5. NaN STOPS are counted and reported -------------------------------------------------------


def test_nan_stops_are_counted_and_warned(cli, tiny_qwen, tmp_path):
    model = tmp_path / "zero-embeddings"
    shutil.copytree(tiny_qwen, model)
    weights = model / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.embed_tokens.weight"] = torch.zeros_like(tensors["model.embed_tokens.weight"])
    save_file(tensors, weights, metadata={"format": "pt"})  # every nucleus holds zero rows

    run = tmp_path / "R"
    result = _correlate(cli, model, run)
    assert result.exit_code == 0, result.output
    tokens = pd.read_parquet(run / "tables" / "tokens.parquet")
    pooled = tokens[tokens["nucleus_size"] >= 2]
    assert len(pooled) > 0 and pooled["stops"].isna().all()
    stats = pd.read_csv(run / "tables" / "stats.csv").iloc[0]
    assert stats["n"] == 0 and stats["n_prompts"] == 0
    assert stats["n_dropped_nonfinite"] == len(pooled)
    log = (run / "run.log").read_text()
    assert f"{len(pooled)} of {len(pooled)} pooled tokens have a NaN/inf" in log
    assert json.loads((run / "tables" / "fit.json").read_text())["y"] == "stops"
    assert np.isnan(stats["pearson_r"])
