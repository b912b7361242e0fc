"""Hidden vectors saved beside the tables (``--save-hidden``), for the estimators that need the
whole vector (a linear probe, Mahalanobis distances) rather than one metric of it.

Layout: ``tables/hidden/<table>/000000.safetensors``, one file per probed batch, written
(atomically) before that batch's rows join ``tables/shards/<table>``, so every example a
resumed run counts as done has its vectors. Each file holds one float16 [B, d] tensor per
probed layer and position, named ``h<layer>_<position>`` (``h-1_last-prompt``), and its
examples' ids, in row order, as JSON in the metadata key ``ids``. An example probed twice (a
crash between the two writes, a damaged table shard redone) is read from its last file.

Readable without entrain, by numpy alone::

    from safetensors import safe_open
    with safe_open("000000.safetensors", "np") as f:
        ids = json.loads(f.metadata()["ids"]); x = f.get_tensor("h-1_last-prompt")

(``"pt"`` for torch tensors), or :func:`read_hidden` for a whole table in one array.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .rundir import temp_beside

log = logging.getLogger("entrain")

HIDDEN = Path("tables") / "hidden"
FILE_NAME = re.compile(r"^(\d+)\.safetensors$")
FLOAT16_MAX = float(np.finfo(np.float16).max)


def estimate(n_examples: int, hidden_size: int, layers: Sequence, positions: Sequence) -> int:
    """The bytes ``--save-hidden`` will write (float16 vectors; the ids are negligible), told
    before the run so that a run too large for its disk is never started."""
    size = 2 * n_examples * hidden_size * len(layers) * len(positions)
    log.info(
        "--save-hidden: %d example(s) x %d layer(s) x %d position(s) x %d dims in float16, "
        "about %s in %s",
        n_examples, len(layers), len(positions), hidden_size, _human(size), HIDDEN,
    )  # fmt: skip
    return size


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


def tensor_name(layer: int, position: str) -> str:
    """The tensor of one (layer, position) in a saved file, like the tables' ``h<layer>_...``."""
    return f"h{layer}_{position}"


def _files(directory: Path) -> list[Path]:
    found = [p for p in directory.glob("*.safetensors") if FILE_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(FILE_NAME.match(p.name)[1]))


def write_hidden(
    run_dir: Path, table: str, ids: Sequence, vectors: Mapping[tuple[int, str], np.ndarray]
) -> Path:
    """Save one batch: ``vectors[(layer, position)]`` is [len(ids), d], row i the vector of
    ``ids[i]``, stored as float16 (half the disk of the model's bfloat16 and readable by
    numpy, which has no bfloat16). A value beyond float16's range (+-65504) becomes inf and is
    counted in a warning, never clipped silently. Numbered one past the highest file there."""
    directory = run_dir / HIDDEN / table
    directory.mkdir(parents=True, exist_ok=True)
    from safetensors.numpy import save

    tensors = {}
    for (layer, position), v in vectors.items():
        v = np.asarray(v, dtype=np.float32)
        if v.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids but {v.shape[0]} vectors at {layer}/{position}")
        over = int((np.abs(v[np.isfinite(v)]) > FLOAT16_MAX).sum())
        if over:
            log.warning(
                "%d value(s) at layer %s, %s exceed float16's range; saved as inf",
                over,
                layer,
                position,
            )
        with np.errstate(over="ignore"):  # counted above
            tensors[tensor_name(layer, position)] = v.astype(np.float16)
    ids = [i.item() if isinstance(i, np.generic) else i for i in ids]
    data = save(tensors, metadata={"ids": json.dumps(ids), "format": "entrain-hidden/1"})
    numbers = [int(m[1]) for p in directory.iterdir() if (m := FILE_NAME.match(p.name))]
    path = directory / f"{max(numbers, default=-1) + 1:06d}.safetensors"
    with temp_beside(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


def read_hidden(
    run_dir: Path, table: str = "samples", layer: int = -1, position: str = "last-prompt"
) -> tuple[list, np.ndarray]:
    """(ids, float16 [n, d] array) of every example saved for ``table`` at one layer and
    position, in the order first written; an example saved twice keeps its last vector. An
    unreadable file (cut short) is named in a warning and skipped."""
    from safetensors import safe_open

    directory = Path(run_dir) / HIDDEN / table
    name = tensor_name(layer, position)
    rows: dict = {}
    for path in _files(directory):
        try:
            with safe_open(str(path), "np") as f:
                ids = json.loads(f.metadata()["ids"])
                x = f.get_tensor(name) if name in set(f.keys()) else None
        except Exception as e:  # safetensors raises several types for a damaged file
            log.warning("hidden vectors %s unreadable (%s); skipped", path, e)
            continue
        if x is None:  # another layer or position
            continue
        for i, id_ in enumerate(ids):
            rows[id_] = x[i]
    if not rows:
        raise FileNotFoundError(f"no saved hidden vectors {name} under {directory}")
    return list(rows), np.stack(list(rows.values()))


def copy_hidden(source_run: Path, run_dir: Path) -> None:
    """Every saved file of ``source_run`` (one shard of a ``--shard I/N`` study) into
    ``run_dir``'s, renumbered after those already there: ``entrain merge`` keeps the vectors."""
    for directory in sorted((source_run / HIDDEN).glob("*")):
        target = run_dir / HIDDEN / directory.name
        for path in _files(directory):
            target.mkdir(parents=True, exist_ok=True)
            numbers = [int(m[1]) for p in target.iterdir() if (m := FILE_NAME.match(p.name))]
            out = target / f"{max(numbers, default=-1) + 1:06d}.safetensors"
            with temp_beside(out) as tmp:
                Path(tmp).write_bytes(path.read_bytes())
                os.replace(tmp, out)
