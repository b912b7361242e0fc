"""The built wheel carries every module and the top-level assets/ (samples, prompt templates)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from entrainment_cli import assets_dir

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_code_and_assets(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assets = sorted(p for p in (ROOT / "assets").rglob("*") if p.is_file())
    assert {p.name for p in assets} >= {"math500.jsonl", "gsm8k_cot.yaml"}
    for p in assets:
        assert f"entrainment_cli/assets/{p.relative_to(ROOT / 'assets').as_posix()}" in names
    for p in (ROOT / "entrainment_cli").rglob("*.py"):
        assert p.relative_to(ROOT).as_posix() in names


def test_source_tree_finds_top_level_assets():
    assert assets_dir() == ROOT / "assets"
    assert (assets_dir() / "samples" / "math500.jsonl").is_file()
