"""Run directory: manifest life cycle, atomic writes, the writer lock, resume checks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from entrainment_cli.errors import UserError
from entrainment_cli.runs import rundir
from entrainment_cli.runs.rundir import RunDir, atomic_write_text, read_manifest


def _open(path, resume=False, identity=None):
    return RunDir.open(
        command="qa rankmath",
        identity=identity or {"a": 1},
        run_dir=path,
        runs_dir=None,
        name_parts=["m", "d"],
        resume=resume,
    )


def test_manifest_status_and_stage_timings(tmp_path):
    with _open(tmp_path / "r") as rd:
        assert read_manifest(rd.path)["status"] == "running"
        assert (rd.path / ".lock").read_text() == str(os.getpid())
        with rd.stage("probe") as t:
            t["items"] = 10
    m = read_manifest(tmp_path / "r")
    assert m["status"] == "done" and "ended" in m and not (tmp_path / "r" / ".lock").exists()
    assert m["timings"]["probe"]["items"] == 10 and "items_per_s" in m["timings"]["probe"]


def test_failure_is_recorded(tmp_path):
    with pytest.raises(RuntimeError), _open(tmp_path / "r"):
        raise RuntimeError("boom")
    m = read_manifest(tmp_path / "r")
    assert m["status"] == "failed" and "boom" in m["error"]


def test_default_location_uses_runs_dir(tmp_path):
    rd = RunDir.open(
        command="qa rankmath",
        identity={},
        run_dir=None,
        runs_dir=tmp_path,
        name_parts=["Org/Model-X", "math500"],
        resume=False,
    )
    assert rd.path.parent == tmp_path / "qa-rankmath"
    assert rd.path.name.endswith("-model-x-math500")


HOLD = """
import sys, time
from entrainment_cli.runs import rundir
from entrainment_cli.runs.rundir import RunDir
rd = RunDir.open(command="qa rankmath", identity={"a": 1}, run_dir=__import__("pathlib").Path(
    sys.argv[1]), runs_dir=None, name_parts=[], resume=True)
with rd:
    print("held", flush=True)
    time.sleep(60)
"""


def test_live_lock_refuses_second_writer(tmp_path):
    with _open(tmp_path / "r"):
        pass
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "r")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(rundir.__file__).parents[2])},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(UserError, match=f"in use by process {holder.pid}"),
            _open(tmp_path / "r", resume=True),
        ):
            pass
    finally:
        holder.kill()  # dies holding the lock: its file stays, with its PID
        holder.wait()
    assert (tmp_path / "r" / ".lock").read_text() == str(holder.pid)
    assert read_manifest(tmp_path / "r")["status"] == "running"  # as the killed run left it
    # the holder is dead now: its stale lock is taken over
    with _open(tmp_path / "r", resume=True) as rd:
        assert (rd.path / ".lock").read_text() == str(os.getpid())
    assert read_manifest(tmp_path / "r")["status"] == "done"


def test_existing_run_needs_resume_and_same_identity(tmp_path):
    with _open(tmp_path / "r") as rd:
        rd.append_shard("samples", pd.DataFrame({"id": ["a", "b"]}))
    with pytest.raises(UserError, match="not empty; pass --resume"):
        _open(tmp_path / "r")
    with pytest.raises(UserError, match="different settings .*a: 1 -> 2"):
        _open(tmp_path / "r", resume=True, identity={"a": 2})
    with pytest.raises(UserError, match="needs --run-dir"):
        _open(None, resume=True)
    rd = _open(tmp_path / "r", resume=True)
    with rd:
        assert rd.done_ids("samples", "id") == {"a", "b"}
        rd.append_shard("samples", pd.DataFrame({"id": ["c"]}))
    assert read_manifest(tmp_path / "r")["resumed"] == 1
    assert rd.read_shards("samples")["id"].tolist() == ["a", "b", "c"]


def test_a_run_killed_before_its_manifest_starts_afresh(tmp_path):
    """kill -9 between taking the lock and writing the first manifest leaves .lock and run.log
    only: the same command without --resume starts the run there (it said so, and then
    refused a directory that is 'not empty'); anything else there is still refused."""
    run = tmp_path / "r"
    run.mkdir()
    (run / ".lock").write_text("999999999")  # a pid no process has
    (run / "run.log").write_text("2026-12-05T00:00:00 INFO started\n")
    with pytest.raises(UserError, match="holds no manifest.json; drop --resume"):
        _open(run, resume=True)
    with _open(run) as rd:
        rd.append_shard("samples", pd.DataFrame({"id": ["a"]}))
    assert read_manifest(run)["status"] == "done"
    other = tmp_path / "o"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        _open(other)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_text(path, json.dumps({"v": 1}))

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        atomic_write_text(path, json.dumps({"v": 2}))
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_stage_line_rounds_rates_to_three_digits(tmp_path, caplog):
    """Issue 22.7: the stage log line says 60.9 tokens/s, not 60.895 (the manifest keeps
    its own precision)."""
    import logging

    from entrainment_cli.runs.rundir import RunDir, three_digits

    assert [three_digits(v) for v in (60.895, 0.012345, 12345.6, 7)] == [
        "60.9",
        "0.0123",
        "12,300",
        "7",
    ]
    rd = RunDir.open(
        command="x", identity={}, run_dir=tmp_path / "r", runs_dir=None, name_parts=[], resume=False
    )
    with rd, caplog.at_level(logging.INFO, logger="entrain"), rd.stage("probe") as info:
        info["tokens"] = 1234567
    line = next(r.getMessage() for r in caplog.records if "stage probe done" in r.getMessage())
    rate = line.split(", ")[1].split()[0]
    assert len(rate.replace(",", "").rstrip("0").replace(".", "").lstrip("0")) <= 3, line
