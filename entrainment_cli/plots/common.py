"""Shared figure plumbing: a headless backend and atomic PNG + PDF saving."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..runs.rundir import temp_beside  # noqa: E402

__all__ = ["bar_ylim", "layer_name", "panel_grid", "plt", "save"]

log = logging.getLogger("entrain")


def panel_grid(n: int, ncols: int, panel: tuple[float, float]):
    """A figure with ``n`` panels, ``ncols`` per row (fewer if n is smaller), the rest hidden."""
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False
    )
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def save(fig, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` (each via a temporary file) and close the figure."""
    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        with temp_beside(path) as tmp:
            fig.savefig(tmp, dpi=150, format=ext)
            os.replace(tmp, path)
        paths.append(path)
    plt.close(fig)
    return paths


def bar_ylim(ax, means: pd.Series, errs: pd.Series, what: str, pad: float = 0.15, floor=None):
    """Fit the y axis of a bar panel to ``means`` ± ``errs``, finite values only (``floor``
    fixes the bottom). A panel with no finite mean says so in place of bars, and so does a
    warning naming ``what``: a metric that is NaN everywhere is reported, never a crash."""
    means = means.to_numpy(dtype=np.float64)
    errs = np.nan_to_num(errs.to_numpy(dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    finite = np.isfinite(means)
    if not finite.any():
        log.warning("%s: no finite value to draw (all NaN/inf); the panel says so", what)
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        return
    lo, hi = (means - errs)[finite].min(), (means + errs)[finite].max()
    margin = (hi - lo) * pad or abs(hi) * 0.05 or 1.0
    ax.set_ylim(lo - margin if floor is None else floor, hi + margin)


def check_summary(table: pd.DataFrame, keys: list[str], path: Path) -> pd.DataFrame:
    """``table`` (a saved summary of n/mean/std per group, see ``stats.group_summary``) if it
    is whole: its key columns filled, one row for each combination of key values, and every
    statistic finite where n says there are values. A file cut short fails one of these (or
    the study's own cross-check); it is named instead of being drawn as fewer bars."""
    columns = [*keys, "n", "mean"]
    problem = None
    if missing := [c for c in columns if c not in table.columns]:
        problem = f"no column(s) {', '.join(missing)}"
    elif table.empty or table[[*keys, "n"]].isna().any().any():
        problem = "empty or with blank cells"
    elif table.duplicated(keys).any() or len(table) != math.prod(table[keys].nunique()):
        problem = f"not one row per {' x '.join(keys)}"
    elif not all(
        np.isfinite(table.loc[table["n"] > least, stat].astype(float)).all()
        for least, stats in ((0, ("mean", "median", "min", "max")), (1, ("std", "sem")))
        for stat in stats
        if stat in table.columns
    ):
        problem = "a statistic is missing where n says there are values"
    if problem:
        raise ValueError(f"{path} is incomplete or damaged ({problem})")
    return table


def sparsity_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a statistics table that are about a metric, not a length baseline."""
    from ..science.controls import LENGTHS

    return table[~table["metric"].isin(LENGTHS)].reset_index(drop=True)


def layer_name(layer: int) -> str:
    """How figures name a layer: -1 is the state after the final norm."""
    return "final norm" if layer == -1 else f"layer {layer}"
