"""Figures from saved run directories only: `entrain plot` and the end of every command."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..runs.rundir import read_manifest
from . import correlate, pretrain, rankmath

# command -> (figures of one run, comparison of several runs of that command)
PLOTTERS = {
    "qa rankmath": (rankmath.plot_run, rankmath.plot_compare),
    "correlate": (correlate.plot_run, correlate.plot_compare),
    "pretrain": (pretrain.plot_run, pretrain.plot_compare),
}


def plot_runs(run_dirs: list[Path], out_dir: Path | None) -> list[Path]:
    """Rebuild every figure of each run; with several runs of one command, also compare them."""
    commands = []
    for rd in run_dirs:
        command = read_manifest(rd).get("command")
        if command not in PLOTTERS:
            raise UserError(f"{rd}: no figures are defined for '{command}' runs")
        if not (rd / "tables").is_dir():
            raise UserError(f"{rd} has no tables/ yet; finish the run (--resume) first")
        commands.append(command)
    written: list[Path] = []
    for rd, command in zip(run_dirs, commands, strict=True):
        written += PLOTTERS[command][0](rd)
    if len(run_dirs) > 1:
        if len(set(commands)) > 1:
            raise UserError(
                "cannot compare runs of different commands: " + ", ".join(set(commands))
            )
        if out_dir is None:
            raise UserError("comparing several runs needs --out DIR for the comparison figure")
        written += PLOTTERS[commands[0]][1](run_dirs, out_dir)
    return written
