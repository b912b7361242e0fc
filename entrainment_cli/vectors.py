"""What the saved hidden vectors (``--save-hidden``) say beside the scalar metrics: the
supervised ceiling and the distribution-shift detectors, per probed layer and position.

- ``tables/ceiling.csv``: per layer and position, a cross-validated linear probe of the label
  from the whole vector (:func:`estimators.linear_probe`), the sparsity metric that predicts the
  label best and prompt length, all three scored with the same statistic, CI and units
  (Spearman rho for a numeric label, AUROC of the positive value for a two-valued one), so
  "how much of what the vector knows does one zero-parameter number carry" reads off one row;
  ``figures/ceiling.png`` draws them by layer.
- ``tables/shift.csv``: Mahalanobis and relative Mahalanobis distance to the reference
  condition, cross-fitted (:func:`estimators.shift_distances`), then AUROC of the reference
  against each shifted condition for MD, RMD, every sparsity metric and prompt length
  (:func:`estimators.shift_auroc`: the shifted condition positive, higher = more shifted).

Read from the run directory alone, so ``entrain plot`` and a resumed run redo them without the
model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .runs.hidden import HIDDEN, read_hidden
from .science import controls, estimators
from .science.sparsity import SPARSER

log = logging.getLogger("entrain")

SCOPE = ["layer", "position"]
COMPARISON = "comparison"  # a stacked frame's two-way comparison, e.g. "conflict vs control"


def _vectors(run_dir: Path, part: pd.DataFrame, layer: int, position: str) -> np.ndarray:
    """The saved vectors of ``part``'s rows (by id), in its row order, as float64."""
    ids, x = read_hidden(run_dir, "samples", int(layer), str(position))
    index = pd.Index([str(i) for i in ids])
    rows = index.get_indexer(part["id"].astype(str))
    if (rows < 0).any():
        missing = part["id"].iloc[int(np.flatnonzero(rows < 0)[0])]
        raise FileNotFoundError(f"no saved vector for example {missing!r} at {layer}/{position}")
    return x[rows].astype(np.float64)


def ceiling_table(
    run_dir: Path,
    samples: pd.DataFrame,
    label: str,
    kind: str,
    metrics: Sequence[str],
    groups: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per layer and position (and ``comparison``, when the frame has one: a study with
    several two-way comparisons stacks them): the linear probe, the best sparsity metric and
    prompt length, each scored against ``label`` (numeric, or 0/1 for a two-valued ``kind``)."""
    records = []
    samples = samples[pd.to_numeric(samples[label], errors="coerce").notna()]
    by = [COMPARISON] if COMPARISON in samples else []
    for keys, part in samples.groupby([*by, *SCOPE], sort=True):
        *compared, layer, position = keys
        y = pd.to_numeric(part[label]).to_numpy(dtype=np.float64)
        g = None if groups is None else part[groups].to_numpy()
        x = _vectors(run_dir, part, layer, position)
        record, _ = estimators.linear_probe(x, y, g, seed=seed, n_boot=n_boot)
        where = {"layer": layer, "position": position, "label": label}
        where |= dict(zip(by, compared, strict=True))
        records.append(
            {**where, "scorer": "linear probe", "name": f"ridge/logistic on {x.shape[1]} dims"}
            | {k: record.get(k) for k in ("statistic", "value", "lo", "hi", "p", "n")}
            | {"folds": record.get("folds"), "note": record.get("skipped", "")}
        )
        best = None
        for metric in metrics:
            scored = controls.score_prediction(
                part[metric].to_numpy(dtype=np.float64), y, kind, g, n_boot, seed
            )
            strength = abs(scored["value"] - (0.5 if kind == "binary" else 0.0))
            if np.isfinite(strength) and (best is None or strength > best[0]):
                best = (strength, metric, scored)
        if best is not None:
            records.append({**where, "scorer": "best metric", "name": best[1], **best[2]})
        length = part[controls.LENGTH].to_numpy(dtype=np.float64)
        scored = controls.score_prediction(length, y, kind, g, n_boot, seed)
        records.append({**where, "scorer": "prompt length", "name": controls.LENGTH, **scored})
    return pd.DataFrame.from_records(records)


def shift_table(
    run_dir: Path,
    samples: pd.DataFrame,
    condition: str,
    reference: object,
    metrics: Sequence[str],
    groups: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per layer and position: AUROC of the reference against each shifted condition for the
    cross-fitted MD and RMD, every sparsity metric and prompt length."""
    tables = []
    for (layer, position), part in samples.groupby(SCOPE, sort=True):
        part = part.reset_index(drop=True)
        x = _vectors(run_dir, part, layer, position)
        is_reference = (part[condition] == reference).to_numpy()
        g = None if groups is None else part[groups].to_numpy()
        distances = estimators.shift_distances(x, is_reference, g, seed=seed)
        scored = pd.concat([part, distances[["md", "rmd"]]], axis=1)
        scores = ["md", "rmd", *metrics, controls.LENGTH]
        table = estimators.shift_auroc(
            scored, scores, condition, reference, groups, n_boot=n_boot, seed=seed
        )
        tables.append(table.assign(layer=layer, position=position))
    out = pd.concat(tables, ignore_index=True)
    return out[[*SCOPE, *[c for c in out.columns if c not in SCOPE]]]


def has_vectors(run_dir: Path) -> bool:
    return (Path(run_dir) / HIDDEN / "samples").is_dir()


def write_tables(
    rd,
    samples: pd.DataFrame,
    metrics: Sequence[str],
    *,
    label: str | None = None,
    kind: str = "numeric",
    condition: str | None = None,
    reference: object = None,
    groups: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> None:
    """ceiling.csv (with a ``label``) and shift.csv (with a ``condition`` and its
    ``reference``) of a run that saved its vectors; nothing for one that did not."""
    if not has_vectors(rd.path):
        return
    common = dict(groups=groups, n_boot=n_boot, seed=seed)
    metrics = [m for m in metrics if m in SPARSER]
    samples = controls.with_lengths(samples) if "prompt" in samples else samples
    if label is not None:
        table = ceiling_table(rd.path, samples, label, kind, metrics, **common)
        rd.write_text("tables/ceiling.csv", table.to_csv(index=False))
    if condition is not None and (samples[condition] == reference).any():
        table = shift_table(rd.path, samples, condition, reference, metrics, **common)
        rd.write_text("tables/shift.csv", table.to_csv(index=False))


def plot_ceiling(run_dir: Path) -> list[Path]:
    """figures/ceiling.png: the probe, the best metric and prompt length by layer (one panel
    per position); nothing for a run without tables/ceiling.csv."""
    path = Path(run_dir) / "tables" / "ceiling.csv"
    if not path.is_file():
        return []
    from .plots.common import panel_grid, save

    table = pd.read_csv(path)
    # one panel per position, and per label and comparison where a run scored several
    by = [c for c in (COMPARISON, "label") if c in table and table[c].nunique() > 1]
    by.append("position")
    panels = list(table.groupby(by, sort=False))
    fig, axes = panel_grid(len(panels), 2, (7.0, 4.0))
    styles = {"linear probe": "#4C72B0", "best metric": "#55A868", "prompt length": "#C44E52"}
    for ax, (keys, part) in zip(axes, panels, strict=True):
        layers = sorted(part["layer"].unique(), key=lambda layer: (layer == -1, layer))
        for scorer, color in styles.items():
            rows = part[part["scorer"] == scorer]
            rows = rows.set_index("layer").reindex(layers).reset_index()  # a gap stays a gap
            if rows["value"].isna().all():
                continue
            x = np.arange(len(rows))
            err = [
                (rows["value"] - rows["lo"]).clip(lower=0),
                (rows["hi"] - rows["value"]).clip(lower=0),
            ]
            ax.errorbar(
                x, rows["value"], yerr=err, marker="o", capsize=3, color=color, label=scorer
            )
            if scorer == "best metric":
                for xi, (v, name) in enumerate(zip(rows["value"], rows["name"], strict=True)):
                    if pd.notna(v):
                        ax.annotate(name, (xi, v), fontsize=6, xytext=(3, 3),
                                    textcoords="offset points")  # fmt: skip
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(["final" if layer == -1 else str(layer) for layer in layers], fontsize=8)
        ax.set_xlabel("layer")
        statistic = part["statistic"].dropna().iloc[0] if part["statistic"].notna().any() else ""
        ax.set_ylabel(f"{statistic} with {part['label'].iloc[0]}", fontsize=8)
        ax.axhline(0.5 if statistic == "auroc" else 0.0, color="k", lw=0.6)
        ax.set_title(", ".join(map(str, keys)), fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("Linear probe (ceiling), best sparsity metric, prompt length", fontsize=10)
    return save(fig, Path(run_dir) / "figures" / "ceiling")
