"""`--shard I/N` and `entrain merge` on whole studies: the merged run equals the unsharded
one (a probe-only study, `correlate` and `cot`), and the refusals (test_dist.py has the
pieces)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pandas as pd


def _tables_equal(merged: Path, whole: Path) -> list[str]:
    """Every table of the unsharded run equals the merged run's; floats within 1e-4: a shard
    batches its examples with other ones, which moves float32 values in their last bits."""
    compared = []
    for path in sorted((whole / "tables").glob("*")):
        if path.suffix not in (".parquet", ".csv") or not path.is_file():
            continue
        read = pd.read_parquet if path.suffix == ".parquet" else pd.read_csv
        other = merged / "tables" / path.name
        assert other.is_file(), f"the merged run has no {path.name}"
        pd.testing.assert_frame_equal(
            read(other), read(path), check_exact=False, rtol=1e-4, atol=1e-5
        )
        compared.append(path.name)
    return compared


def _shard_and_merge(cli, tmp_path: Path, args: list, count: int) -> tuple[Path, Path]:
    whole = tmp_path / "whole"
    assert cli(*args, "--run-dir", whole).exit_code == 0
    shards = []
    for i in range(count):
        run = tmp_path / f"shard{i}"
        result = cli(*args, "--shard", f"{i}/{count}", "--run-dir", run)
        assert result.exit_code == 0, result.output
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["shard"]["index"] == i and manifest["shard"]["count"] == count
        assert manifest["identity"]["shard"] == f"{i}/{count}"
        shards.append(run)
    merged = tmp_path / "merged"
    result = cli("merge", *reversed(shards), "--out", merged, "--quiet")
    assert result.exit_code == 0, result.output
    manifest = json.loads((merged / "manifest.json").read_text())
    assert manifest["status"] == "done" and len(manifest["merged_from"]) == count
    assert manifest["identity"] == json.loads((whole / "manifest.json").read_text())["identity"]
    return merged, whole


def test_probe_study_merged_equals_unsharded(cli, tiny_llama, tmp_path):
    args = ["qa", "rankmath", "--model", tiny_llama, "--limit", "2", "--layers", "0,-1"]
    args += ["--metrics", "l1,gini", "--n-boot", "50", "--quiet"]
    merged, whole = _shard_and_merge(cli, tmp_path, args, 2)
    assert {"samples.parquet", "summary.csv", "correlations.csv"} <= set(
        _tables_equal(merged, whole)
    )
    assert sorted(p.name for p in (merged / "figures").iterdir()) == sorted(
        p.name for p in (whole / "figures").iterdir()
    )


def test_correlate_merged_equals_unsharded(cli, tiny_peaked, tmp_path):
    """Sampled at temperature 1: each prompt's random stream is seeded by its id, so the
    shards generate the very tokens of the unsharded run."""
    args = ["correlate", "--model", tiny_peaked, "--engine", "hf", "--limit", "5"]
    args += ["--max-tokens", "12", "--batch-size", "2", "--n-boot", "50", "--quiet"]
    merged, whole = _shard_and_merge(cli, tmp_path, args, 2)
    compared = _tables_equal(merged, whole)
    assert {"prompts.parquet", "tokens.parquet", "stats.csv"} <= set(compared)
    tokens = pd.read_parquet(merged / "tables" / "tokens.parquet")
    assert (
        tokens["token_id"].tolist()
        == pd.read_parquet(whole / "tables" / "tokens.parquet")["token_id"].tolist()
    )


def test_cot_merged_equals_unsharded(cli, tiny_llama, tmp_path):
    args = ["cot", "--model", tiny_llama, "--curriculum", "--sample", "4", "--pool-size", "12"]
    args += ["--max-tokens", "8", "--engine", "hf", "--batch-size", "4", "--quiet"]
    merged, whole = _shard_and_merge(cli, tmp_path, args, 2)
    assert {"generations.parquet", "ranking.parquet"} <= set(_tables_equal(merged, whole))


def test_merge_refuses_shards_of_different_runs(cli, tiny_llama, tmp_path):
    args = ["qa", "rankmath", "--model", tiny_llama, "--limit", "1", "--metrics", "l1", "--quiet"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(*args, "--shard", "0/2", "--run-dir", a).exit_code == 0
    assert cli(*args, "--layers", "0", "--shard", "1/2", "--run-dir", b).exit_code == 0
    out = tmp_path / "merged"
    result = cli("merge", a, b, "--out", out)
    assert result.exit_code == 2
    assert "not shards of one study: their settings differ (layers:" in result.output
    assert not out.exists()
    result = cli("merge", a, "--out", out)
    assert result.exit_code == 2 and "shard(s) 1/2 missing" in result.output
    assert not out.exists()
    result = cli(*args, "--shard", "2/2", "--run-dir", tmp_path / "c")
    assert result.exit_code == 2 and "0 <= I < N" in result.output
    assert not (tmp_path / "c").exists()


def test_entrain_probe_merged_equals_unsharded(cli, tiny_llama, tmp_path):
    """`entrain probe` with a pair label shards by pair, so each shard can run its paired
    tests and the merged paired statistics equal the unsharded ones."""
    args = ["probe", "--model", tiny_llama, "--text-field", "text", "--label", "difficulty"]
    args += ["--pair-id", "pair", "--condition", "phrasing", "--layers", "-1"]
    args += ["--metrics", "l1,gini", "--n-boot", "50", "--quiet"]
    merged, whole = _shard_and_merge(cli, tmp_path, args, 2)
    assert "samples.parquet" in _tables_equal(merged, whole)
    for i in range(2):
        samples = pd.read_parquet(tmp_path / f"shard{i}" / "tables" / "samples.parquet")
        assert (samples.groupby("pair")["phrasing"].nunique() == 2).all()


def test_killed_merge_restarts_to_the_same_result(cli, tiny_llama, tmp_path, monkeypatch):
    """Issue 23.9: a merge killed after copying the shards' work (before its analysis) or
    while copying it is not left 'done'; the same merge again, or the study's --resume,
    finishes it, equal to the unsharded run."""
    from entrainment_cli import pipeline
    from entrainment_cli.runs import merge as merging

    args = ["qa", "rankmath", "--model", tiny_llama, "--limit", "2", "--layers", "-1"]
    args += ["--metrics", "l1", "--n-boot", "50", "--quiet"]
    merged, whole = _shard_and_merge(cli, tmp_path, args, 2)
    shards = [tmp_path / "shard0", tmp_path / "shard1"]

    def stop(*_a, **_k):
        raise KeyboardInterrupt

    # killed before its analysis: not done, the merge again finishes it
    out = tmp_path / "again"
    with monkeypatch.context() as m:
        m.setattr(pipeline, "run_study", stop)
        with contextlib.suppress(KeyboardInterrupt):
            cli("merge", *shards, "--out", out, "--quiet")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "entrain merge again" in manifest["error"]
    assert (out / "config.yaml").is_file()
    assert cli("merge", *shards, "--out", out, "--quiet").exit_code == 0
    assert "samples.parquet" in _tables_equal(out, whole)
    # ... or the study's own --resume does
    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        m.setattr(pipeline, "run_study", stop)
        with contextlib.suppress(KeyboardInterrupt):
            cli("merge", *shards, "--out", out, "--quiet")
    result = cli("qa", "rankmath", "--resume", "--run-dir", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert "samples.parquet" in _tables_equal(out, whole)

    # killed while copying: half the work copied; the merge again copies it once
    out = tmp_path / "halfway"
    copy = merging.copy_work

    def half(shard_set, rd):
        copy(merging.ShardSet(shard_set.runs[:1], shard_set.manifests[:1], shard_set.order), rd)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(merging, "copy_work", half)
        assert cli("merge", *shards, "--out", out, "--quiet").exit_code == 130
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    result = cli("qa", "rankmath", "--resume", "--run-dir", out, "--quiet")
    assert result.exit_code == 2 and "run the same entrain merge again" in result.output
    assert cli("merge", *shards, "--out", out, "--quiet").exit_code == 0
    assert "samples.parquet" in _tables_equal(out, whole)
    # a directory holding another run is refused, and left as it was
    result = cli("merge", *shards, "--out", whole, "--quiet")
    assert result.exit_code == 2 and "not a merge of these shards" in result.output


def test_merge_refuses_a_damaged_shard_naming_it(cli, tiny_llama, tmp_path):
    """Issue 23.12: a shard lacking config.yaml is named (not --config blamed); one whose
    shard tables were deleted is refused rather than probed again by the merge."""
    import shutil

    args = ["qa", "rankmath", "--model", tiny_llama, "--limit", "2", "--layers", "-1"]
    args += ["--metrics", "l1", "--n-boot", "20", "--quiet"]
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for i, run in enumerate(shards):
        assert cli(*args, "--shard", f"{i}/2", "--run-dir", run).exit_code == 0
    out = tmp_path / "merged"
    config = (shards[1] / "config.yaml").read_text()
    (shards[1] / "config.yaml").unlink()
    result = cli("merge", *shards, "--out", out)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "shard1 has no config.yaml" in text, text
    assert "--config" not in text and not out.exists()
    (shards[1] / "config.yaml").write_text(config)
    shutil.rmtree(shards[1] / "tables" / "shards")
    result = cli("merge", *shards, "--out", out)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "shard1 has no finished work in tables/shards/" in text
    assert not out.exists()
