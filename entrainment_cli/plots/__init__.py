"""Figures from saved run directories only: `entrain plot` and the end of every command."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UserError
from ..runs.rundir import read_manifest, slug
from ..studies import BY_NAME


def plot_runs(run_dirs: list[Path], out_dir: Path | None) -> list[Path]:
    """Rebuild every figure of each run; runs of one command are also compared.

    With ``out_dir`` this is a report: each run's figures are copied to
    ``out_dir/<command>/<run>/`` and each comparison goes to ``out_dir/<command>/`` (straight
    into ``out_dir`` when all runs belong to one command).
    """
    groups: dict[str, list[Path]] = {}
    for rd in run_dirs:
        command = read_manifest(rd).get("command")
        if command not in BY_NAME:
            raise UserError(f"{rd}: no figures are defined for '{command}' runs")
        if not (rd / "tables").is_dir():
            raise UserError(f"{rd} has no tables/ yet; finish the run (--resume) first")
        groups.setdefault(command, []).append(rd)
    if out_dir is None and any(len(rds) > 1 for rds in groups.values()):
        raise UserError("comparing several runs needs --out DIR for the comparison figures")
    written: list[Path] = []
    for command, rds in groups.items():
        for rd in rds:
            written += BY_NAME[command].plot_run(rd)
        if out_dir is None:
            continue
        dest = out_dir if len(groups) == 1 else out_dir / slug(command)
        if len(rds) > 1:
            written += BY_NAME[command].plot_compare(rds, dest)
        for rd in rds:
            for figure in sorted((rd / "figures").glob("*")):
                target = dest / rd.name / figure.name
                target.parent.mkdir(parents=True, exist_ok=True)
                written.append(Path(shutil.copy2(figure, target)))
    return written
