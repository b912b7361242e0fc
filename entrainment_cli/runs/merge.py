"""Merging the shards of one study (``--shard I/N`` runs) into the tables of one run.

Each shard run records its shard in the manifest and, in ``tables/selection.parquet``, every
example id of the whole (unsharded) selection in order with its shard. From those alone,
without the data or the model, :func:`check_shards` tells whether runs belong together (same
study, model weights, data, options and selection; every shard 0..N-1 once, each finished)
and :func:`merge_table` concatenates a per-example table of all shards in the unsharded
run's example order. The analysis and figures are then redone over the merged tables.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UserError
from ..options import shown
from .hidden import HIDDEN, copy_hidden
from .rundir import MANIFEST, RunDir, environment, read_manifest
from .sharding import Shard, shard_of

SELECTION = "selection"  # tables/selection.parquet of a shard run: id, shard


def record_selection(rd: RunDir, shard: Shard, ids: Sequence[object]) -> list[int]:
    """Record ``shard`` in the run's manifest and the whole selection (``ids`` in order, each
    with its shard) in ``tables/selection.parquet``; return the positions this shard runs."""
    keep = shard.select(ids)
    rd.write_table(
        SELECTION,
        pd.DataFrame(
            {"id": [str(i) for i in ids], "shard": [shard_of(i, shard.count) for i in ids]}
        ),
    )
    rd.update(shard={**shard.record(), "selected": len(ids), "examples": len(keep)})
    return keep


@dataclass
class ShardSet:
    """Shard runs that belong together, in shard order."""

    runs: list[Path]
    manifests: list[dict[str, Any]]
    order: list[str]  # every example id of the unsharded selection, in its order

    @property
    def count(self) -> int:
        return len(self.runs)


def _shard_of_run(run: Path, manifest: dict[str, Any]) -> Shard:
    shard = manifest.get("shard")
    if not isinstance(shard, dict):
        raise UserError(
            f"{run} is not a shard (its manifest records no --shard); merge only the runs of "
            "one study started with --shard I/N"
        )
    return Shard(int(shard["index"]), int(shard["count"]))


def _same(run: Path, first: Path, what: str, a: Any, b: Any) -> None:
    if a != b:
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            detail = ", ".join(f"{k}: {shown(b.get(k))} vs {shown(a.get(k))}" for k in keys)
        else:
            detail = f"{shown(b)} vs {shown(a)}"
        raise UserError(
            f"{run} and {first} are not shards of one study: their {what} differ ({detail}); "
            "merge only the shards of one run's command line"
        )


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What defines the work, beside the shard: the study's identity, the seed, the exact
    model weights and the data."""
    identity = {k: v for k, v in manifest.get("identity", {}).items() if k != "shard"}
    return {
        **identity,
        "seed": manifest.get("seed"),
        "weights_sha256": manifest.get("model", {}).get("weights_sha256"),
        "data_fingerprint": manifest.get("dataset", {}).get("fingerprint"),
    }


def check_shards(run_dirs: Sequence[Path]) -> ShardSet:
    """The runs as one complete set of shards, or a UserError naming what does not fit."""
    if not run_dirs:
        raise UserError("entrain merge needs the run directories of the shards")
    found: dict[int, tuple[Path, dict[str, Any]]] = {}
    first: tuple[Path, dict[str, Any], Shard] | None = None
    for run in map(Path, run_dirs):
        manifest = read_manifest(run)
        shard = _shard_of_run(run, manifest)
        if manifest.get("status") != "done":
            raise UserError(
                f"{run} is not finished (status: {manifest.get('status')}); finish it with "
                "--resume before merging"
            )
        if first is None:
            first = (run, manifest, shard)
        else:
            base, base_manifest, base_shard = first
            _same(run, base, "commands", base_manifest.get("command"), manifest.get("command"))
            _same(run, base, "numbers of shards", base_shard.count, shard.count)
            _same(run, base, "settings", _identity(base_manifest), _identity(manifest))
        if shard.index in found:
            raise UserError(
                f"shard {shard} is given twice ({found[shard.index][0]} and {run}); "
                "pass each shard's run once"
            )
        found[shard.index] = (run, manifest)
    count = first[2].count
    missing = [i for i in range(count) if i not in found]
    if missing:
        names = ", ".join(f"{i}/{count}" for i in missing)
        raise UserError(
            f"shard(s) {names} missing: {len(found)} of {count} given; run them "
            "(--shard I/N) and pass every shard's run directory"
        )
    runs = [found[i][0] for i in range(count)]
    for run in runs:
        if not (run / "config.yaml").is_file():
            raise UserError(
                f"{run} has no config.yaml (the options it ran with); the shard run is "
                "damaged: run that shard again into a new --run-dir and merge that one"
            )
    work = [_work_tables(run) for run in runs]
    every = set().union(*work)
    for i, (run, tables) in enumerate(zip(runs, work, strict=True)):
        if found[i][1]["shard"].get("examples") == 0:  # a shard with no examples: no work
            continue
        if missing := sorted(every - tables):
            raise UserError(
                f"{run} has no finished work in tables/shards/{missing[0]} (deleted?), which "
                "merge would have to probe again; run that shard again into a new --run-dir "
                "and merge that one"
            )
    selections = [_selection(run) for run in runs]
    for run, selection in zip(runs[1:], selections[1:], strict=True):
        if not selection.equals(selections[0]):
            raise UserError(
                f"{run} and {runs[0]} selected different examples; merge only the shards of "
                "one run's command line, on the same data"
            )
    return ShardSet(runs, [found[i][1] for i in range(count)], selections[0]["id"].tolist())


def open_merged(shards: ShardSet, out: Path) -> RunDir:
    """The merged run, new at ``out`` (entered by the caller): the shards' command, identity
    and setup with no shard, the shard runs it came from, and the environment of the
    merge; the caller writes the merged tables and redoes the analysis into it."""
    first = shards.manifests[0]
    identity = {**first.get("identity", {}), "shard": None}  # as the study run unsharded
    rd = RunDir.open(
        command=first["command"],
        identity=identity,
        run_dir=out,
        runs_dir=None,
        name_parts=[],
        resume=False,
    )
    setup = ("options", "seed", "model", "dataset", "device", "engine", "engine_options")
    rd.manifest.update({k: first[k] for k in setup if k in first})
    if "options" in rd.manifest:
        rd.manifest["options"] = {
            **{k: v for k, v in rd.manifest["options"].items() if k != "shard"},
            "run_dir": str(out),
        }
    rd.manifest["merged_from"] = _merged_from(shards)
    rd.manifest.update(environment())
    return rd


def _merged_from(shards: ShardSet) -> list[dict[str, Any]]:
    return [
        {"run": str(run), "shard": m["shard"]}
        for run, m in zip(shards.runs, shards.manifests, strict=True)
    ]


def previous_merge(shards: ShardSet, out: Path) -> dict[str, Any] | None:
    """The manifest of an earlier ``entrain merge`` of these very shards at ``out`` (stopped
    or finished), which the merge restarts; None when ``out`` is new or empty. Anything else
    there is refused: a merge never writes over another run."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    if not (out / MANIFEST).is_file():
        raise UserError(f"--out {out} is not empty and holds no run; name a new or empty directory")
    manifest = read_manifest(out)
    first = shards.manifests[0]
    mine = [m["shard"] for m in manifest.get("merged_from") or []]
    if (
        manifest.get("command") != first["command"]
        or manifest.get("identity") != {**first.get("identity", {}), "shard": None}
        or mine != [m["shard"] for m in shards.manifests]
    ):
        raise UserError(
            f"--out {out} holds another run, not a merge of these shards; name a new or "
            "empty directory"
        )
    return manifest


def restart_merged(shards: ShardSet, out: Path, manifest: dict[str, Any]) -> RunDir:
    """``out``, a merge of ``shards`` that stopped while it copied their work, reopened
    with what it copied removed (the shards still hold it all), to be copied again."""
    rd = RunDir(out, manifest)
    rd.manifest["merged_from"] = _merged_from(shards)
    for partial in (out / "tables" / "shards", out / HIDDEN):
        shutil.rmtree(partial, ignore_errors=True)
    return rd


def copy_work(shards: ShardSet, rd: RunDir) -> None:
    """Every shard's finished pieces of work (``tables/shards/<table>``, what ``--resume``
    reads, and the ``--save-hidden`` vectors) into ``rd``: the study, resumed there, finds
    every example done and only redoes its analysis and figures over all of them."""
    for run in shards.runs:
        copy_hidden(run, rd.path)
        source = RunDir(run, {})
        for table_dir in sorted((run / "tables" / "shards").glob("*")):
            if table_dir.is_dir() and (work := source.read_shards(table_dir.name)) is not None:
                rd.append_shard(table_dir.name, work)


def _work_tables(run: Path) -> set[str]:
    """The tables of which ``run`` holds finished pieces of work (``tables/shards/<table>``)."""
    shards = run / "tables" / "shards"
    return {
        d.name for d in (shards.iterdir() if shards.is_dir() else []) if any(d.glob("*.parquet"))
    }


def _selection(run: Path) -> pd.DataFrame:
    path = run / "tables" / f"{SELECTION}.parquet"
    if not path.is_file():
        raise UserError(f"{run} has no tables/{SELECTION}.parquet; the shard run is damaged")
    return pd.read_parquet(path)


def merge_table(shards: ShardSet, table: str, key: str = "id") -> pd.DataFrame | None:
    """``tables/<table>.parquet`` of every shard as one table, ordered as the unsharded run
    orders its examples (each example's own rows keep their order); None if no shard has it.
    An example found in a shard it does not belong to is refused."""
    position = {example: i for i, example in enumerate(shards.order)}
    frames = []
    for index, run in enumerate(shards.runs):
        path = run / "tables" / f"{table}.parquet"
        if not path.is_file():
            continue
        frame = pd.read_parquet(path)
        ids = frame[key].astype(str)
        wrong = sorted({i for i in ids if i not in position or shard_of(i, shards.count) != index})
        if wrong:
            raise UserError(
                f"{path} holds example(s) not of shard {index}/{shards.count} "
                f"({', '.join(wrong[:3])}); the shard run is damaged, run it again"
            )
        frames.append(frame.assign(_order=ids.map(position)))
    if not frames:
        return None
    merged = pd.concat(frames, ignore_index=True).sort_values("_order", kind="stable")
    return merged.drop(columns="_order").reset_index(drop=True)


def shared_table(shards: ShardSet, table: str) -> pd.DataFrame | None:
    """A table every shard computes whole, not per example of its own (a study's demonstration
    pool, say): the shards' copies must be equal; one of them is the merged run's."""
    frames = [
        (run, pd.read_parquet(path))
        for run in shards.runs
        if (path := run / "tables" / f"{table}.parquet").is_file()
    ]
    if not frames:
        return None
    if len(frames) != shards.count:
        raise UserError(f"only some shards have tables/{table}.parquet; run the others again")
    first_run, first = frames[0]
    for run, frame in frames[1:]:
        try:
            pd.testing.assert_frame_equal(frame, first, check_exact=False, rtol=1e-5, atol=1e-6)
        except AssertionError:
            raise UserError(
                f"tables/{table}.parquet differs between {run} and {first_run}, though every "
                "shard computes it whole; the shards did not run the same study"
            ) from None
    return first
