"""The CLI surface, and the main job on the embedded SmolLM2 (no network)."""

import os
import subprocess
import sys

import pandas as pd

from entrainment_cli import __version__, options
from entrainment_cli.engines import models
from entrainment_cli.runs.rundir import read_manifest


def test_version_and_help(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"entrain {__version__}"
    result = cli("--help")
    assert result.exit_code == 0 and "qa" in result.output and "plot" in result.output
    result = cli("qa", "rankmath", "--help")
    for option in (
        "--model",
        "--data-file",
        "--limit",
        "--layers",
        "--metrics",
        "--batch-size",
        "--device",
        "--dtype",
        "--seed",
        "--run-dir",
        "--runs-dir",
        "--resume",
        "--positions",
    ):
        assert option in result.output


def test_console_script_exit_code_on_bad_input(tmp_path):
    """The installed `entrain` entry point: one line on stderr, exit 2, no traceback."""
    exe = os.path.join(os.path.dirname(sys.executable), "entrain")
    proc = subprocess.run(
        [exe, "qa", "rankmath", "--dataset", "gsm9k"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(
        "error: unknown --dataset 'gsm9k'; use one of math500, math_train"
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


def test_embedded_model_is_dequantized_once(embedded):
    assert embedded.source == "embedded" and (embedded.path / ".complete").is_file()
    stamp = (embedded.path / "model.safetensors").stat().st_mtime_ns
    again = models.resolve_model(None)
    assert again.path == embedded.path
    assert (again.path / "model.safetensors").stat().st_mtime_ns == stamp


def test_rankmath_on_embedded_defaults(cli, embedded, tmp_path):
    out = tmp_path / "run"
    result = cli("qa", "rankmath", "--run-dir", out, "--limit", "2", "--quiet")
    assert result.exit_code == 0, result.output
    m = read_manifest(out)
    assert m["model"]["source"] == "embedded" and m["dataset"]["data_source"] == "sample"
    s = pd.read_parquet(out / "tables" / "samples.parquet")
    assert len(s) == 10 and s["l1"].between(100, 5000).all()
    assert s["prompt"].str.contains("Give only the final answer").all()


def test_help_paragraphs_are_reflowed_for_any_width():
    from entrainment_cli.cli.common import reflow

    doc = """First line.

    A paragraph broken
    at the source's width.
    - an item
    - another
      continued"""
    assert reflow(doc) == (
        "First line.\n\nA paragraph broken at the source's width.\n"
        "- an item\n- another\n  continued"
    )
    # the console script, not CliRunner, which forces click's help to 80 columns
    exe = os.path.join(os.path.dirname(sys.executable), "entrain")
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([exe, "merge", "--help"], env=env, capture_output=True, text=True).stdout
    assert "(same command, model weights, data, seed and options;" in out  # one line at 200


def test_a_hub_model_is_downloaded_only_after_the_data_are_checked(
    cli, tiny_llama, tmp_path, monkeypatch
):
    """Config and tokenizer first (the layers and prompts need them), the weights once the
    study's checks pass: a wrong --data-file is told before a download that may take an hour."""
    import fnmatch
    import shutil

    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, sorted(allow_patterns)))
        dest = tmp_path / "snapshot"
        dest.mkdir(exist_ok=True)
        for f in tiny_llama.iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, dest / f.name)
        return str(dest)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    base = ["qa", "rankmath", "--model", "org/tiny", "--quiet", "--metrics", "l1"]
    result = cli(*base, "--data-file", tmp_path / "missing.jsonl")
    assert result.exit_code == 2 and "missing.jsonl does not exist" in result.stderr
    assert calls == []  # a missing file is told before anything (issue 22.7)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    result = cli(*base, "--data-file", bad)
    assert result.exit_code == 2 and "bad.jsonl" in result.stderr
    assert [patterns for _, patterns in calls] == [sorted(models.HUB_FILES)]  # no weights
    assert not list((tmp_path / "snapshot").glob("*.safetensors"))

    calls.clear()
    out = tmp_path / "run"
    assert cli(*base, "--limit", "1", "--run-dir", out).exit_code == 0
    assert calls == [
        ("org/tiny", sorted(models.HUB_FILES)),
        ("org/tiny", sorted([*models.HUB_FILES, "*.safetensors"])),
    ]
    m = read_manifest(out)
    assert m["model"]["id"] == "org/tiny" and m["model"]["source"] == "hub"
    assert m["model"]["weights_sha256"] == models.weights_hash(tmp_path / "snapshot")


def _commands(group=None, prefix=()):
    """Every command path of the app (e.g. ('qa', 'rankmath'))."""
    import typer.main

    from entrainment_cli.cli.app import app

    group = group or typer.main.get_command(app)
    for name, sub in group.commands.items():
        if hasattr(sub, "commands"):
            yield from _commands(sub, (*prefix, name))
        else:
            yield (*prefix, name)


def test_help_fits_80_columns_in_panels_with_nothing_cut():
    """Every command's --help at 80 columns: no line wider, no ellipsis, every option's full
    name, options in panels in the order a person needs them; `entrain --help` on one screen."""
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app
    from entrainment_cli.cli.help import PANELS
    from entrainment_cli.studies import STUDIES

    runner = CliRunner()
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "80"}).output
    assert len(top.splitlines()) <= 24 and "…" not in top
    configs = {tuple(s.name.split()): s.config for s in STUDIES}
    paths = list(_commands())
    assert ("qa", "rankmath") in paths and ("probe",) in paths
    for path in paths:
        out = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}).output
        assert "…" not in out, path
        assert max(len(line) for line in out.splitlines()) <= 80, path
        if path in configs:
            for f in options.option_fields(configs[path]):
                assert f" {options.flag(f)} " in out or f" {options.flag(f)}\n" in out, (
                    path,
                    f.name,
                )
            titles = [line[:-1] for line in out.splitlines() if line in {f"{p}:" for p in PANELS}]
            assert titles == sorted(titles, key=PANELS.index) and titles[0] == "Data", path
            assert titles[-1] in ("Scale-out", "vLLM", "Output"), path


def test_a_study_without_its_group_or_misspelt_names_the_command(cli):
    result = cli("rankmath")
    assert result.exit_code == 2 and "it is 'entrain qa rankmath'" in result.output
    result = cli("corelate")
    assert result.exit_code == 2 and "did you mean 'entrain correlate'?" in result.output
