"""Issue 23: every study, killed with SIGKILL at a randomly drawn point of its run and then
resumed, ends with the tables of an uninterrupted run.

A point is a call of the run directory's writers (a stage starting, a shard, a table, a text
file or the manifest written). The uninterrupted run counts its points; a child process then
runs the same command and kills itself (kill -9: no handler, no clean-up) just before point k,
drawn from a generator seeded by the study's name and ``ENTRAIN_KILL_SEED`` (default 0; set it
to try other points). ``--resume`` finishes the run, whose tables must equal the first run's.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from entrainment_cli.runs.rundir import RunDir, read_manifest

POINTS = ("stage", "append_shard", "write_table", "write_text", "write_manifest")

# The child: count the writers' calls and kill the process just before call number argv[1].
CHILD = f"""
import os, signal, sys
from entrainment_cli.runs.rundir import RunDir
kill_at, seen = int(sys.argv[1]), [0]
def point(f):
    def wrapped(*a, **kw):
        seen[0] += 1
        if seen[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return f(*a, **kw)
    return wrapped
for name in {POINTS!r}:
    setattr(RunDir, name, point(getattr(RunDir, name)))
from entrainment_cli.cli.app import main
sys.argv = ["entrain", *sys.argv[2:]]
main()
"""

PROBE_ROWS = [
    {"text": f"{i} plus {3 * i + 1} is", "difficulty": i % 4, "pair": f"p{i // 2}",
     "phrasing": "words" if i % 2 else "symbols"}
    for i in range(12)
]  # fmt: skip

# each study on a tiny model with the fewest examples that still give every table
STUDIES = {
    "probe": ["probe", "--text-field", "text", "--label", "difficulty", "--pair-id", "pair",
              "--condition", "phrasing", "--save-hidden", "--reference", "symbols",
              "--layers", "1,-1", "--max-tokens", "4", "--engine", "hf", "--batch-size", "4"],
    "rankmath": ["qa", "rankmath", "--limit", "2", "--layers", "1,-1", "--batch-size", "4",
                 "--save-hidden"],
    "deepmath": ["qa", "deepmath", "--sample", "12", "--layers", "-1", "--batch-size", "4"],
    "robustness": ["qa", "robustness", "--limit", "1", "--layers", "-1", "--batch-size", "4"],
    "conflict": ["qa", "conflict", "--limit", "4", "--layers", "-1", "--batch-size", "4"],
    "longreason": ["qa", "longreason", "--limit", "2", "--engine", "hf", "--max-tokens", "3",
                   "--layers", "-1", "--batch-size", "2"],
    "accuracy": ["qa", "accuracy", "--limit", "2", "--engine", "hf", "--max-tokens", "8",
                 "--layers", "-1", "--batch-size", "2"],
    "correlate": ["correlate", "--limit", "6", "--engine", "hf", "--max-tokens", "6",
                  "--batch-size", "2"],
    "cot": ["cot", "--curriculum", "--sample", "3", "--pool-size", "9", "--n-levels", "3",
            "--max-tokens", "6", "--engine", "hf", "--batch-size", "2"],
    "pretrain": ["pretrain", "--llm-size", "llama-1-1", "--steps", "30", "--eval-every", "10",
                 "--save-every", "10", "--batch-size", "16", "--layers", "0,-1", "--num-test",
                 "20", "--rank-eval", "3", "--entities", "200", "--relations", "10", "--rules",
                 "5", "--deductible-rules", "4", "--n-atomic", "400", "--n-derived", "400",
                 "--dtype", "float32", "--save-hidden"],
}  # fmt: skip
NO_MODEL = {"pretrain"}  # trains its own


def _count_points(monkeypatch) -> list[str]:
    """Record the name of every writer call of the runs that follow, in order."""
    calls: list[str] = []
    for name in POINTS:
        real = getattr(RunDir, name)

        def wrapped(*a, _real=real, _name=name, **kw):
            calls.append(_name)
            return _real(*a, **kw)

        monkeypatch.setattr(RunDir, name, wrapped)
    return calls


def _tables(run: Path) -> dict[str, Path]:
    """Every finished table and saved vector file of a run (shards are work in progress)."""
    files = [*run.glob("tables/*.csv"), *run.glob("tables/*.parquet"), *run.glob("hidden/*")]
    return {str(p.relative_to(run)): p for p in files if p.is_file()}


def _same(a: Path, b: Path) -> None:
    if a.suffix == ".csv":
        pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))
    elif a.suffix == ".parquet":
        drop = ["tokens_per_s"]  # a speed, not a result
        pd.testing.assert_frame_equal(
            pd.read_parquet(a).drop(columns=drop, errors="ignore"),
            pd.read_parquet(b).drop(columns=drop, errors="ignore"),
        )
    elif a.suffix == ".safetensors":
        x, y = load_file(a), load_file(b)
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    else:
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("study", list(STUDIES))
def test_killed_at_a_random_point_resumes_to_the_same_tables(
    study, cli, tiny_llama, tmp_path, monkeypatch
):
    args = [*STUDIES[study], "--seed", "1", "--quiet"]
    if study not in NO_MODEL:
        args += ["--model", str(tiny_llama)]
    if study == "probe":
        data = tmp_path / "data.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in PROBE_ROWS))
        args += ["--data-file", str(data)]
    whole, part = tmp_path / "whole", tmp_path / "part"
    calls = _count_points(monkeypatch)
    result = cli(*args, "--run-dir", whole)
    assert result.exit_code == 0, result.output
    monkeypatch.undo()
    monkeypatch.setenv("ENTRAIN_RUNS_DIR", str(tmp_path / "runs"))
    seed = int(os.environ.get("ENTRAIN_KILL_SEED", "0"))
    k = random.Random(zlib.crc32(study.encode()) + seed).randint(1, len(calls))
    where = f"kill -9 before call {k} of {len(calls)} ({calls[k - 1]})"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(k), *args, "--run-dir", str(part)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == -9, f"{where}: {child.returncode}\n{child.stderr[-2000:]}"
    # as `make reproduce` does: --resume once the run has a manifest
    resume = ["--resume"] if (part / "manifest.json").is_file() else []
    result = cli(*args, "--run-dir", part, *resume)
    assert result.exit_code == 0, f"{where}\n{result.output}"
    assert read_manifest(part)["status"] == "done", where
    expected, got = _tables(whole), _tables(part)
    assert sorted(got) == sorted(expected), where
    for name, path in expected.items():
        try:
            _same(path, got[name])
        except AssertionError as e:
            raise AssertionError(f"{where}: {name} differs\n{e}") from None
