"""Figures from saved run directories only: `entrain plot` and the end of every command."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError
from ..runs.rundir import lock_holder, read_manifest, slug
from ..studies import BY_NAME
from . import signals


@contextlib.contextmanager
def readable_tables(*run_dirs: Path) -> Iterator[None]:
    """A table that is missing, cut short or of the wrong shape becomes one line naming the
    run (and, for a run that did not finish, how to finish it), not a figure drawn from it."""
    try:
        yield
    except (OSError, ValueError, KeyError, IndexError) as e:  # pandas/pyarrow read errors
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        runs = ", ".join(str(rd) for rd in run_dirs)
        unfinished = [rd for rd in run_dirs if read_manifest(rd).get("status") != "done"]
        if unfinished:
            rd = unfinished[0]
            status, holder = read_manifest(rd).get("status"), lock_holder(rd)
            if holder is not None:
                raise UserError(
                    f"{rd} is still running (process {holder}); plot it when it is done"
                ) from None
            if status == "running":
                status = "running, but its process is gone"
            raise UserError(
                f"{rd} did not finish (status: {status}), so its tables are incomplete "
                f"({reason}); finish it with --resume --run-dir {rd}, then plot it"
            ) from None
        raise UserError(
            f"cannot draw {runs}: a table is missing or damaged ({reason}); the figures "
            "were left as they were; redo the run (or its analysis) to rewrite its tables"
        ) from None


def expand_runs(paths: list[Path]) -> list[Path]:
    """Each path that is a run, and for a folder of runs (``runs/``, ``runs/qa-rankmath``) every
    run below it (two levels at most, sorted); a path that is neither stays, to be named."""
    out: list[Path] = []
    for path in paths:
        if (path / "manifest.json").is_file() or not path.is_dir():
            out.append(path)
            continue
        found = {m.parent for m in (*path.glob("*/manifest.json"), *path.glob("*/*/manifest.json"))}
        out += sorted(found) or [path]
    return list(dict.fromkeys(out))


def unique_names(run_dirs: list[Path]) -> dict[Path, str]:
    """A folder name per run that no other run shares: its own name, else with its parent's
    (two shard merges both called ``merged``), else numbered."""
    names: dict[Path, str] = {}
    for rd in run_dirs:
        clash = [o for o in run_dirs if o.name == rd.name]
        name = rd.name if len(clash) == 1 else f"{rd.parent.name}-{rd.name}"
        while name in names.values():
            name = f"{name}-{len(names)}"
        names[rd] = name
    return names


def plot_runs(run_dirs: list[Path], out_dir: Path | None) -> list[Path]:
    """Rebuild every figure of each run; runs of one command are also compared, graded runs
    also by their signals' PRR side by side.

    With ``out_dir`` this is a report: each run's figures are copied to
    ``out_dir/<command>/<run>/`` (a name two runs share gets its parent's, see
    :func:`unique_names`) and each comparison goes to ``out_dir/<command>/`` (straight into
    ``out_dir`` when all runs belong to one command). ``run_dirs`` may name folders of runs.
    """
    groups: dict[str, list[Path]] = {}
    for rd in expand_runs(run_dirs):
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
        graded = [rd for rd in rds if signals.has_signals(rd)]  # graded runs: tables/signals.csv
        for rd in rds:
            with readable_tables(rd):
                written += BY_NAME[command].plot_run(rd)
        for rd in graded:
            with readable_tables(rd):
                written += signals.plot_run(rd)
        if out_dir is None:
            continue
        dest = out_dir if len(groups) == 1 else out_dir / slug(command)
        if len(rds) > 1:
            with readable_tables(*rds):
                written += BY_NAME[command].plot_compare(rds, dest)
        if len(graded) > 1:
            with readable_tables(*graded):
                written += signals.plot_compare(graded, dest)
        folders = unique_names(rds)
        for rd in rds:
            for figure in sorted((rd / "figures").glob("*")):
                target = dest / folders[rd] / figure.name
                target.parent.mkdir(parents=True, exist_ok=True)
                written.append(Path(shutil.copy2(figure, target)))
    return written
