"""Shared figure plumbing: a headless backend and atomic PNG + PDF saving."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["layer_name", "panel_grid", "plt", "save", "zoom_to_bars"]


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
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_suffix(f".{ext}")
        fd, tmp = tempfile.mkstemp(dir=stem.parent, prefix=f".{path.name}.", suffix=f".{ext}")
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=150, format=ext)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        paths.append(path)
    plt.close(fig)
    return paths


def layer_name(layer: int) -> str:
    """How figures name a layer: -1 is the state after the final norm."""
    return "final norm" if layer == -1 else f"layer {layer}"


def zoom_to_bars(ax, mean, sem) -> None:
    """A y range around mean +/- SEM with a margin, so small differences between bars show."""
    lo, hi = (mean - sem.fillna(0)).min(), (mean + sem.fillna(0)).max()
    pad = (hi - lo) * 0.15 or abs(hi) * 0.05 or 1.0
    ax.set_ylim(lo - pad, hi + pad)
