"""The CLI surface, and the main job on the embedded SmolLM2 (no network)."""

import os
import subprocess
import sys

import pandas as pd

from entrainment_cli import __version__
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
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app

    out = CliRunner().invoke(app, ["merge", "--help"], env={"COLUMNS": "200"}).output
    assert "(same command, model weights, data, seed and options;" in out  # one line at 200
