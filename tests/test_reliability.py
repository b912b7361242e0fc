"""Reliability (issue 15): each fault reproduced as the issue wrote it, then shown fixed.

Resume never loses or mixes work, analyses never half-replace tables, NaN is always counted,
bad input and dying processes end in one line (exit 2) with the run left resumable.
"""

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from entrainment_cli.correlate import analysis
from entrainment_cli.data import registry
from entrainment_cli.errors import UserError
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


# -- 4. correlate-analyze --bins 0|-1: refused before anything is written ----------------------


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


# -- 8. the lock: never two holders, however the processes race --------------------------------


def _racer(trials, barrier, results):
    """In each trial directory: wait for the other racer, try to take the run, hold it until
    both have tried, and report whether we held it."""
    for trial in trials:
        barrier.wait()
        run = rundir.RunDir.open(
            command="qa rankmath",
            identity={},
            run_dir=trial,
            runs_dir=None,
            name_parts=[],
            resume=True,
        )
        try:
            with run:
                barrier.wait()  # the other racer tries while we hold it
                results.put((str(trial), os.getpid()))
        except UserError:
            barrier.wait()


def test_lock_race_never_gives_one_run_two_holders(tmp_path):
    import multiprocessing as mp

    trials, dead = [], _dead_pid()
    for i in range(100):
        trial = tmp_path / f"t{i}"
        trial.mkdir()
        rundir.atomic_write_text(trial / "manifest.json", '{"command": "qa rankmath"}')
        if i % 2:  # half the trials start from the stale lock of a dead run
            (trial / ".lock").write_text(str(dead))
        trials.append(trial)
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(2, timeout=20), ctx.Queue()
    racers = [ctx.Process(target=_racer, args=(trials, barrier, results)) for _ in range(2)]
    for p in racers:
        p.start()
    for p in racers:
        p.join(60)
        assert p.exitcode == 0
    holders: dict[str, list[int]] = {}
    while not results.empty():
        trial, pid = results.get()
        holders.setdefault(trial, []).append(pid)
    assert sorted(holders) == sorted(str(t) for t in trials)
    assert all(len(pids) == 1 for pids in holders.values())  # exactly one holder, every trial
    assert not any((t / ".lock").exists() for t in trials)
    assert all(read_manifest(t)["status"] == "done" for t in trials)


PAUSED_HOLDER = """
import os, sys, time
from pathlib import Path
from entrainment_cli.runs.rundir import RunDir
def paused(fd, length):  # the lock is taken, its PID not yet written: stop right here
    print("between", flush=True)
    time.sleep(60)
os.ftruncate = paused
RunDir.open(command="qa rankmath", identity={}, run_dir=Path(sys.argv[1]), runs_dir=None,
            name_parts=[], resume=True).__enter__()
"""


def test_a_lock_not_yet_holding_its_pid_is_not_taken_as_stale(tmp_path):
    """The window of the race: the second writer finds the lock file still empty."""
    rundir.atomic_write_text(tmp_path / "manifest.json", '{"command": "qa rankmath"}')
    env = {**os.environ, "PYTHONPATH": str(Path(rundir.__file__).parents[2])}
    holder = subprocess.Popen(
        [sys.executable, "-c", PAUSED_HOLDER, str(tmp_path)], env=env, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline().strip() == b"between"
        assert (tmp_path / ".lock").read_text() == ""
        second = rundir.RunDir.open(
            command="qa rankmath",
            identity={},
            run_dir=tmp_path,
            runs_dir=None,
            name_parts=[],
            resume=True,
        )
        with pytest.raises(UserError, match="is in use by another process"), second:
            pass
    finally:
        holder.kill()
        holder.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- 11. a full disk: one line, status failed, lock removed, finished work intact ---------------


def test_full_disk_is_one_line_and_a_resumable_failed_run(cli, tiny_llama, tmp_path, monkeypatch):
    real = pd.DataFrame.to_parquet
    writes = []

    def full_after_three(self, path, *args, **kwargs):
        writes.append(path)
        if len(writes) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_after_three)
    run = tmp_path / "R"
    result = _rankmath(cli, tiny_llama, run)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on /" in errors[0]
    assert str(run) in result.output.replace("\n", "") and "--resume" in result.output
    m = read_manifest(run)
    assert m["status"] == "failed" and "No space left" in m["error"]
    assert not (run / ".lock").exists()
    shards = _shards(run)
    assert len(shards) == 3 and all(len(pd.read_parquet(p)) == 2 for p in shards)
    assert not [p for p in shards[0].parent.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.undo()  # space freed
    assert _rankmath(cli, tiny_llama, run, "--resume").exit_code == 0
    assert read_manifest(run)["counts"]["already_done"] == 6


# -- 12. SIGTERM ends a run like Ctrl-C; a killed run is told from a live one -------------------

SLOW_RUN = """
import sys, time
from entrainment_cli.engines.probe import HiddenProbe
real = HiddenProbe.measure
def slow(*args, **kwargs):
    time.sleep(0.4)
    return real(*args, **kwargs)
HiddenProbe.measure = slow
from entrainment_cli.cli.app import app
app(sys.argv[1:])
"""


def _start_slow(model, run, *extra):
    args = ["qa", "rankmath", "--model", model, "--run-dir", run, "--batch-size", "2"]
    args += ["--metrics", "l1,hoyer", "--n-boot", "50", "--quiet", *extra]  # as _rankmath
    env = {**os.environ, "PYTHONPATH": str(Path(rundir.__file__).parents[2])}
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, *map(str, args)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_shards(run, n, proc):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        shard_dir = run / "tables" / "shards" / "samples"
        if shard_dir.is_dir() and len(list(shard_dir.glob("*.parquet"))) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} shards; exit {proc.poll()}")


def test_sigterm_and_kill_leave_a_resumable_run(cli, tiny_llama, tmp_path):
    run = tmp_path / "R"
    proc = _start_slow(tiny_llama, run)
    _wait_for_shards(run, 2, proc)
    assert rundir.lock_holder(run) == proc.pid  # a live run
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and "terminated (SIGTERM)" in err and "--resume" in err
    m = read_manifest(run)
    assert m["status"] == "failed" and m["error"].startswith("Terminated")
    assert not (run / ".lock").exists()

    proc = _start_slow(tiny_llama, run, "--resume")
    _wait_for_shards(run, len(_shards(run)) + 1, proc)
    proc.kill()  # nothing can be recorded: the manifest still says running
    proc.wait()
    assert read_manifest(run)["status"] == "running"
    assert (run / ".lock").is_file() and rundir.lock_holder(run) is None  # but it is dead

    result = _rankmath(cli, tiny_llama, run, "--resume")
    assert result.exit_code == 0, result.output
    assert "left 'running' by a process that died" in (run / "run.log").read_text()
    samples = pd.read_parquet(run / "tables" / "samples.parquet")
    assert samples["id"].nunique() == MATH500_ROWS == len(samples)
    assert read_manifest(run)["status"] == "done" and not (run / ".lock").exists()


# -- 6. a metric NaN for every row: the figure shows what is finite and says what is not -------


def test_metric_nan_everywhere_is_drawn_and_reported(cli, tiny_llama, tmp_path):
    model = tmp_path / "zero-norm"
    shutil.copytree(tiny_llama, model)
    tensors = load_file(model / "model.safetensors")
    tensors["model.norm.weight"] = torch.zeros_like(tensors["model.norm.weight"])
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})

    run = tmp_path / "R"
    result = _rankmath(cli, model, run, "--layers", "1,-1", "--limit", "2")
    assert result.exit_code == 0, result.output
    samples = pd.read_parquet(run / "tables" / "samples.parquet")
    final = samples[samples["layer"] == -1]
    assert (
        final["hoyer"].isna().all() and np.isfinite(samples.loc[samples.layer == 1, "hoyer"]).all()
    )
    m = read_manifest(run)
    assert m["status"] == "done" and m["counts"]["nonfinite_values"] == len(final)
    assert (run / "figures" / "levels_layer-1_last-prompt.png").stat().st_size > 10_000
    assert "hoyer at final norm, last-prompt: no finite value to draw" in result.output
    assert "no finite value to draw" in (run / "run.log").read_text()


# -- 9, 10, 14, 15: one finished run, then damaged copies of it ---------------------------------


@pytest.fixture(scope="module")
def finished(tiny_llama, tmp_path_factory):
    """A rankmath run made under umask 002, without --quiet, with its console output."""
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app

    run = tmp_path_factory.mktemp("finished") / "R"
    args = ["qa", "rankmath", "--model", tiny_llama, "--run-dir", run, "--batch-size", "4"]
    args += ["--metrics", "l1,hoyer", "--n-boot", "50", "--limit", "2"]
    old = os.umask(0o002)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    return run, result.output


def _copy(run, tmp_path):
    return Path(shutil.copytree(run, tmp_path / run.name))


def _figures(run):
    return {p.name: p.read_bytes() for p in sorted((run / "figures").iterdir())}


def _one_error(result, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, text


def test_files_have_the_umask_mode(finished):
    run, _ = finished
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"manifest.json", "samples.parquet", "summary.csv"}
    assert any(p.suffix == ".png" for p in files) and any(p.parent.name == "samples" for p in files)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o664)}


def test_run_log_holds_every_warning_and_stage_line(finished):
    run, output = finished
    log = (run / "run.log").read_text()
    assert "using the bundled sample math500.jsonl" in output
    assert "using the bundled sample math500.jsonl" in " ".join(log.split())
    for stage in ("load_model", "probe", "analysis"):
        assert f"stage {stage} done in" in log and f"stage {stage} done in" in output
    console = [line.split(maxsplit=1)[1] for line in output.splitlines() if "WARNING" in line]
    assert console and all(line.strip()[:40] in log for line in console)


@pytest.mark.parametrize("cut", ["mid-line", "whole-lines"])
def test_plot_on_a_truncated_summary_keeps_the_old_figures(cli, finished, tmp_path, cut):
    run = _copy(finished[0], tmp_path)
    before = _figures(run)
    summary = run / "tables" / "summary.csv"
    text = summary.read_text()
    if cut == "mid-line":
        summary.write_text(text[: int(len(text) * 0.6)])
    else:
        summary.write_text("".join(text.splitlines(keepends=True)[:-3]))
    _one_error(cli("plot", run), "summary.csv is incomplete or damaged")
    assert _figures(run) == before


def test_plot_on_bad_paths_and_damaged_runs(cli, finished, corr_run, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    _one_error(cli("plot", a_file), "notes.txt is a file")

    run = _copy(finished[0], tmp_path)
    (run / "manifest.json").write_text("[]")
    _one_error(cli("plot", run), "is not a run manifest")

    corr = Path(shutil.copytree(corr_run, tmp_path / "corr"))
    before = _figures(corr)
    tokens = corr / "tables" / "tokens.parquet"
    tokens.write_bytes(tokens.read_bytes()[:300])
    _one_error(cli("plot", corr), "a table is missing or damaged", "tokens.parquet")
    assert _figures(corr) == before


def test_plot_on_a_killed_run_with_shards_only(cli, tiny_llama, tmp_path, monkeypatch):
    from entrainment_cli.engines.probe import HiddenProbe

    real, calls = HiddenProbe.measure, []

    def dying(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HiddenProbe, "measure", dying)
    run = tmp_path / "R"
    assert _rankmath(cli, tiny_llama, run).exit_code == 130
    _one_error(cli("plot", run), "did not finish (status: failed)", "--resume")
    m = read_manifest(run)  # now as kill -9 leaves it: 'running', the lock of a dead process
    rundir.atomic_write_text(run / "manifest.json", json.dumps({**m, "status": "running"}))
    (run / ".lock").write_text(str(_dead_pid()))
    _one_error(cli("plot", run), "status: running, but its process is gone", "--resume")


# -- 10, 13: bad input files, run directories and models: one line, exit 2, nothing written ----


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("[1, 2, 3]", "row 0: expected an object with the fields problem"),
        ('[{"problem": null}]', "row 0: field 'problem' must be a string or a number, not null"),
        (
            '[{"problem": {"a": 1}}]',
            "row 0: field 'problem' must be a string or a number, not dict",
        ),
        ('[{"level": -3}]', "row 0: field 'level' is -3, not a level from 1 up"),
    ],
)
def test_bad_data_file_rows_name_row_and_field(cli, tiny_llama, tmp_path, rows, message):
    good = {"problem": "1+1?", "solution": "2", "answer": "2", "subject": "a", "level": 1}
    data = [r if not isinstance(r, dict) else {**good, "unique_id": f"u{i}", **r}
            for i, r in enumerate(json.loads(rows))]  # fmt: skip
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    result = _rankmath(cli, tiny_llama, tmp_path / "R", "--data-file", path)
    _one_error(result, message)
    assert not (tmp_path / "R").exists()


def test_every_row_too_long_is_refused_before_the_run_exists(cli, tiny_llama, tmp_path):
    """Issue 23.12: rows that cannot fit the context (512 tokens here) are found while the data
    are checked, so a run of nothing but such rows leaves no run directory behind."""
    long_text = "word " * 700
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"text": long_text, "y": i}) + "\n" for i in range(3)))
    result = cli("probe", "--model", tiny_llama, "--data-file", data, "--text-field", "text",
                 "--run-dir", tmp_path / "P", "--quiet")  # fmt: skip
    _one_error(result, "none of the 3 prompt(s) fits the model's context of 512 tokens")
    assert not (tmp_path / "P").exists()
    result = cli("probe", "--model", tiny_llama, "--data-file", data, "--text-field", "text",
                 "--max-tokens", "8", "--run-dir", tmp_path / "P", "--quiet")  # fmt: skip
    _one_error(result, "with --max-tokens 8 to spare", "a lower --max-tokens")
    good = {"problem": long_text, "solution": "2", "answer": "2", "subject": "a", "level": 1}
    path = tmp_path / "math.json"
    path.write_text(json.dumps([{**good, "unique_id": f"u{i}"} for i in range(2)]))
    result = _rankmath(cli, tiny_llama, tmp_path / "R", "--data-file", path)
    _one_error(result, "none of the 2 prompt(s) fits the model's context")
    assert not (tmp_path / "R").exists()


def test_run_dir_that_is_a_file(cli, tiny_llama, tmp_path):
    path = tmp_path / "R"
    path.write_text("keep me")
    _one_error(_rankmath(cli, tiny_llama, path), "--run-dir", "is a file, not a directory")
    assert path.read_text() == "keep me"


def _broken_models(tiny_llama, root):
    bad_json = Path(shutil.copytree(tiny_llama, root / "bad-json"))
    (bad_json / "config.json").write_text('{"model_type": "llama",')
    bad_type = Path(shutil.copytree(tiny_llama, root / "bad-type"))
    config = json.loads((bad_type / "config.json").read_text())
    (bad_type / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
    cut = Path(shutil.copytree(tiny_llama, root / "truncated"))
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    fake = root / "fake.gguf"
    fake.write_text("not a gguf file")
    return [
        (bad_json, "its config.json does not load", "not a valid JSON file"),
        (bad_type, "its config.json does not load", "model type `nosuchmodel`"),
        (cut, "model.safetensors is damaged or incomplete", "--model"),
        (fake, "is not a GGUF model transformers can read", "GGUF magic bytes"),
    ]


def test_broken_models_are_one_line(cli, tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("ENTRAIN_CACHE", str(tmp_path / "cache"))
    for model, *needles in _broken_models(tiny_llama, tmp_path):
        run = tmp_path / f"run-{model.name}"
        _one_error(_rankmath(cli, model, run), *needles)
        assert not run.exists()


def test_interrupted_dequantization_leaves_no_temporary(tmp_path, monkeypatch):
    """Issue 23.10: Ctrl-C while a GGUF is dequantized removes its temporary directory, and
    the next run removes those a dead process (kill -9) left."""
    import transformers

    from entrainment_cli.engines import models

    monkeypatch.setenv("ENTRAIN_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "cache" / "models" / f"other-123.tmp{dead.pid}"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"x" * 100)
    mine = tmp_path / "cache" / "models" / f"other-456.tmp{os.getpid()}x"  # not a pid: kept
    mine.mkdir()

    class Half:
        config = type("C", (), {})()

        def save_pretrained(self, path):
            Path(path).mkdir(parents=True)
            (Path(path) / "model.safetensors").write_bytes(b"x" * 100)
            raise KeyboardInterrupt

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: None)
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Half()
    )
    with pytest.raises(KeyboardInterrupt):
        models.dequantize_gguf(gguf)
    left = sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())
    assert left == [mine.name]


def test_option_values_refused_or_read_as_the_docs_say(cli, tmp_path):
    """Issue 23.12 and 23.11: `layers: [0, -1]` in a config is read as 0,-1; --layers -0 is
    refused (not layer 0); --seeds=-3 is refused as --seed -3 is; a seed too large for the
    random generators is refused before the run directory exists."""
    from entrainment_cli import options
    from entrainment_cli.engines.probe import parse_layers
    from entrainment_cli.errors import UserError
    from entrainment_cli.studies import STUDIES

    entry = next(s for s in STUDIES if s.name == "probe")
    config = tmp_path / "c.yaml"
    config.write_text("layers: [0, -1]\n")
    assert options.build(entry.config, {}, set(), config).layers == "0,-1"
    config.write_text("layers: [0, [1]]\n")
    with pytest.raises(UserError, match="layers"):
        options.build(entry.config, {}, set(), config)
    with pytest.raises(UserError, match="'-0' is not a layer; use 0"):
        parse_layers("0,-0", 4)
    for args in (["--seeds=-3"], ["--seed", "99999999999999999999"], ["--seeds", "0,2**40"]):
        run = tmp_path / "run"
        result = cli("pretrain", *args, "--run-dir", run, "--quiet")
        assert result.exit_code == 2, result.output
        assert "seed" in result.output and not run.exists()
    result = cli("pretrain", "--seeds", f"0,{2**40}", "--run-dir", tmp_path / "r", "--quiet")
    assert result.exit_code == 2 and "every seed must be 0 to" in result.output


def test_config_typo_says_did_you_mean_and_non_utf8_config(cli, tmp_path):
    """Issue 22.7: a --config typo names the key meant, not all 35; issue 23.11: a --config
    that is not UTF-8 is one line, exit 2, not a traceback."""
    config = tmp_path / "c.yaml"
    config.write_text("metrcs: l1\n")
    result = cli("probe", "--config", config, "--run-dir", tmp_path / "r", "--quiet")
    assert result.exit_code == 2 and "unknown key 'metrcs'; did you mean 'metrics'?" in (
        " ".join(result.output.split())
    )
    config.write_bytes(b"metrics: l1\xff\n")
    result = cli("probe", "--config", config, "--run-dir", tmp_path / "r", "--quiet")
    assert result.exit_code == 2 and "is not UTF-8 text" in result.output
    assert not (tmp_path / "r").exists()


def test_missing_data_file_is_told_before_the_slow_imports(tmp_path):
    """Issue 22.7: `--data-file nope.csv` is told before torch (and the rest) are imported,
    not 5 s later."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from entrainment_cli.cli.app import app\n"
        f"r = CliRunner().invoke(app, ['probe', '--data-file', {str(tmp_path / 'nope.csv')!r},"
        " '--quiet'])\n"
        "print(r.exit_code, 'torch' in sys.modules, ' '.join(r.output.split()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    code_, torch_loaded, message = out.stdout.strip().split(" ", 2)
    assert code_ == "2" and torch_loaded == "False", out.stdout + out.stderr
    assert "nope.csv does not exist; name an existing data file" in message


def test_a_path_component_over_255_bytes_is_one_line(cli, tiny_llama, tmp_path):
    """Issue 23.11: a name over 255 bytes in --run-dir, report, plot or merge is one line,
    exit 2, not an OSError traceback."""
    long = tmp_path / ("a" * 300)
    for args in (
        ["plot", long],
        ["report", long],
        ["merge", long, "--out", tmp_path / "m"],
        ["probe", "--model", tiny_llama, "--limit", "1", "--run-dir", long / "r", "--quiet"],
    ):
        result = cli(*args)
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and "a path is too long (" in text, (args, text)
        assert "may have at most 255 bytes; choose a shorter name" in text
    assert not (tmp_path / "m").exists()


def test_analyze_on_a_damaged_tokens_table_is_one_line(cli, corr_run, tmp_path):
    """Issue 23.11: correlate-analyze on a damaged tables/tokens.parquet is one line, exit 2,
    naming the fix, and keeps the old analysis; the fix it names works."""
    run = tmp_path / "R"
    shutil.copytree(corr_run, run)
    tokens = run / "tables" / "tokens.parquet"
    whole = tokens.read_bytes()
    before = _analysis_files(run)
    tokens.write_bytes(whole[: len(whole) // 2])
    result = cli("correlate-analyze", run, "--quiet")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "tokens.parquet does not read (" in text, text
    assert f"entrain correlate --resume --run-dir {run}" in text
    assert "Traceback" not in result.output and _analysis_files(run) == before
    pd.read_parquet(io.BytesIO(whole)).drop(columns="stops").to_parquet(tokens)
    result = cli("correlate-analyze", run, "--quiet")
    assert result.exit_code == 2 and "has no column(s) stops" in " ".join(result.output.split())
    assert cli("correlate", "--resume", "--run-dir", run, "--quiet").exit_code == 0
    assert cli("correlate-analyze", run, "--quiet").exit_code == 0


def test_hub_offline_by_the_user_is_said_not_the_network(cli, tmp_path, monkeypatch):
    """Issue 22.7: with HF_HUB_OFFLINE=1 a hub model not in the cache is blamed on that
    setting (with the way out: a local path), not on the network or HF_TOKEN."""
    import huggingface_hub

    from entrainment_cli import hub

    def snapshot_download(repo_id, allow_patterns):
        raise huggingface_hub.errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(hub, "_unreachable", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("qa", "rankmath", "--model", "org/tiny", "--run-dir", tmp_path / "r", "--quiet")
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert "not in the Hugging Face cache and the hub is offline by HF_HUB_OFFLINE=1" in text
    assert "--model PATH" in text and "HF_TOKEN" not in text and "network," not in text
    assert not (tmp_path / "r").exists()
