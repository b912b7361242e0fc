"""The study pipeline: options declared once, --config files, config.yaml, identity, checks
before the run exists, and a CLI that answers --help without the heavy imports."""

import dataclasses
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from entrainment_cli import options
from entrainment_cli.runs.rundir import read_manifest
from entrainment_cli.studies import STUDIES

LIMIT = ["--limit", "1", "--layers", "-1", "--metrics", "l1,hoyer", "--n-boot", "20"]


def _rankmath(cli, model, out, *args):
    return cli("qa", "rankmath", "--model", model, "--run-dir", out, "--quiet", *args)


def test_every_option_of_every_study_is_on_its_command():
    from typer.testing import CliRunner

    from entrainment_cli.cli.app import app

    for entry in STUDIES:
        # 160 columns: in 80, Rich cuts names as long as --distributed-executor-backend
        result = CliRunner().invoke(app, [*entry.name.split(), "--help"], env={"COLUMNS": "160"})
        assert result.exit_code == 0, entry.name
        text = " ".join(result.output.split())
        for f in options.option_fields(entry.config):
            assert options.flag(f) in text, (entry.name, f.name)
        assert "--config" in text


def test_config_file_flags_override_and_config_yaml_reruns(cli, tiny_llama, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"limit": 1, "metrics": ["l1", "hoyer"], "n_boot": 20}))
    first = tmp_path / "first"
    result = cli(
        "qa", "rankmath", "--model", tiny_llama, "--run-dir", first, "--quiet",
        "--config", config, "--metrics", "l1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["limit"] == 1 and saved["n_boot"] == 20
    assert saved["metrics"] == ["l1"]  # the flag wins over the file
    assert "run_dir" not in saved and "quiet" not in saved
    assert read_manifest(first)["identity"]["metrics"] == ["l1"]
    again = tmp_path / "again"
    result = cli("qa", "rankmath", "--run-dir", again, "--quiet", "--config", first / "config.yaml")
    assert result.exit_code == 0, result.output
    assert read_manifest(again)["identity"] == read_manifest(first)["identity"]
    pd.testing.assert_frame_equal(
        pd.read_parquet(first / "tables" / "samples.parquet"),
        pd.read_parquet(again / "tables" / "samples.parquet"),
    )


def test_toml_config_and_bad_config_files(cli, tiny_llama, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('limit = 1\nmetrics = "l1"\nn_boot = 20\nlayers = "-1"\n')
    out = tmp_path / "t"
    assert _rankmath(cli, tiny_llama, out, "--config", toml).exit_code == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["metrics"] == ["l1"]
    cases = {
        "typo.yaml": ("limt: 1\n", "unknown key 'limt'; did you mean 'limit'?"),
        "unknown.yaml": ("zzzq: 1\n", "unknown key 'zzzq'; valid keys:"),
        "type.yaml": ("batch_size: many\n", "batch_size: expected int, got 'many'"),
        "list.yaml": ("- 1\n- 2\n", "expected a mapping of option names to values"),
        "broken.toml": ("a = [\n", "does not parse"),
        "c.json": ("{}", "use a .yaml, .yml or .toml file"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        result = _rankmath(cli, tiny_llama, tmp_path / "bad", "--config", path)
        assert result.exit_code == 2, (name, result.output)
        assert message in " ".join(result.stderr.split()), (name, result.stderr)
        assert "Traceback" not in result.output and not (tmp_path / "bad").exists()
    result = _rankmath(cli, tiny_llama, tmp_path / "bad", "--config", tmp_path / "unknown.yaml")
    assert "limit" in result.stderr  # the valid keys are named


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        (["qa", "rankmath"], ["--n-boot", "0"], "--n-boot must be at least 1"),
        (["qa", "accuracy"], ["--n-boot", "-1"], "--n-boot must be at least 1"),
        (["qa", "deepmath"], ["--seed", "-1"], "--seed must be 0 or more"),
        (["qa", "rankmath"], ["--metrics", ""], "--metrics is empty"),
        (["qa", "rankmath"], ["--positions", ",,"], "--positions is empty"),
        (["correlate"], ["--min-nucleus", "0"], "--min-nucleus must be at least 1"),
        (["correlate"], ["--prompting", "tot"], "unknown --prompting 'tot'"),
        (["cot"], ["--dtype", "float8"], "unknown --dtype 'float8'; use one of auto,"),
    ],
)
def test_options_are_checked_before_the_run_exists(cli, tmp_path, command, args, message):
    out = tmp_path / "r"
    result = cli(*command, "--run-dir", out, "--quiet", *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not out.exists()


def test_help_and_option_errors_need_no_heavy_import(tmp_path):
    """`entrain --help`, a command's --help and an option error import neither torch,
    transformers, scipy nor pandas (what made them take seconds)."""
    heavy = ("torch", "transformers", "scipy", "pandas", "matplotlib")
    code = (
        "import sys\n"
        "from entrainment_cli.cli.app import app\n"
        "for args in (['--help'], ['qa', 'rankmath', '--help'], ['qa', 'rankmath', '--n-boot', "
        "'0'], ['correlate', '--batch-size', 'x'], ['pretrain', '--help']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, 2), (args, e.code)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_identity_holds_the_options_that_change_numbers(cli, tiny_llama, tmp_path):
    out = tmp_path / "r"
    assert _rankmath(cli, tiny_llama, out, *LIMIT).exit_code == 0
    identity = read_manifest(out)["identity"]
    assert identity["layers"] == [-1] and identity["metrics"] == ["l1", "hoyer"]
    assert {"model", "data", "dtype", "limit", "positions"} <= set(identity)
    assert identity["n_boot"] == 20  # the CIs depend on it
    assert "batch_size" not in identity  # how fast, not what
    for entry in STUDIES:  # every study that generates has its engine in the identity
        names = {f.name: f for f in dataclasses.fields(entry.config)}
        if "engine" in names:
            assert names["engine"].metadata["identity"], entry.name
