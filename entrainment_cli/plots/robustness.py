"""Figures of `qa robustness` runs, read from their saved tables only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..runs.rundir import run_label
from .common import layer_name, panel_grid, save


def _levels(run_dir: Path) -> list[str]:
    rates = pd.read_csv(run_dir / "tables" / "noise_rates.csv")
    return rates["noise"].tolist()


def _heatmap(ax, grid: pd.DataFrame, title: str, fmt: str, accuracy: bool = False) -> None:
    """Rows = areas, columns = noise levels, each cell annotated; its own colour bar
    (accuracy on a fixed 0..1 scale, so runs compare)."""
    values = grid.to_numpy(dtype=float)
    scale = {"cmap": "Greens", "vmin": 0, "vmax": 1} if accuracy else {"cmap": "Blues"}
    image = ax.imshow(values, aspect="auto", **scale)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(grid.shape[1]), grid.columns, fontsize=8)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    finite = values[np.isfinite(values)]
    middle = 0.5 if accuracy else (finite.min() + finite.max()) / 2 if finite.size else 0
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            color = "white" if v > middle else "black"
            ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=6, color=color)
    ax.set_title(title, fontsize=9)


def _heatmap_grid(n: int, n_rows: int):
    """``n`` heatmap panels, 4 per row, each tall enough for ``n_rows`` areas."""
    return panel_grid(n, 4, (3.6, 1.2 + 0.28 * n_rows))


def _order(frame: pd.DataFrame, levels: list[str]) -> pd.DataFrame:
    """Areas alphabetically with 'All' last; noise levels in the order they were asked for."""
    areas = [a for a in dict.fromkeys(frame.index) if a != "All"]
    return frame.reindex(index=[*areas, *(["All"] if "All" in frame.index else [])])[
        [lv for lv in levels if lv in frame.columns]
    ]


def plot_run(run_dir: Path) -> list[Path]:
    """Per (layer, position): a heatmap (area x noise level) of each metric's mean, and of
    accuracy; the title of each metric gives the pooled paired test between the extreme
    levels."""
    tables = run_dir / "tables"
    summary = pd.read_csv(tables / "summary.csv")
    accuracy = pd.read_csv(tables / "accuracy.csv")
    tests = pd.read_csv(tables / "paired_tests.csv")
    levels = _levels(run_dir)
    model, _ = run_label(run_dir)
    acc = _order(accuracy.pivot(index="area", columns="noise", values="accuracy"), levels)
    metrics = list(dict.fromkeys(summary["metric"]))
    written: list[Path] = []
    for (layer, position), part in summary.groupby(["layer", "position"], sort=True):
        fig, axes = _heatmap_grid(len(metrics) + 1, acc.shape[0])
        _heatmap(axes[0], acc, "accuracy (constrained letter)", ".2f", accuracy=True)
        for ax, metric in zip(axes[1:], metrics, strict=True):
            m = part[part["metric"] == metric]
            grid = _order(m.pivot(index="area", columns="noise", values="mean"), levels)
            title = metric
            if len(levels) > 1 and not tests.empty:
                t = tests[
                    (tests.layer == layer)
                    & (tests.position == position)
                    & (tests.area == "All")
                    & (tests.metric == metric)
                    & (tests.noise_a == levels[0])
                    & (tests.noise_b == levels[-1])
                ]
                if len(t):
                    t = t.iloc[0]
                    title += (
                        f"\n{levels[0]}→{levels[-1]}: r_rb={t.rank_biserial:.2f}, "
                        f"p={t.wilcoxon_p:.2g}, N={t.n}"
                    )
            _heatmap(ax, grid, title, ".3g")
        fig.suptitle(
            f"MMLU-Pro under noise: {model}, {layer_name(layer)}, {position} (means)", fontsize=11
        )
        written += save(fig, run_dir / "figures" / f"heatmaps_layer{layer}_{position}")
    return written


def plot_compare(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Accuracy of several runs (models) side by side: one heatmap each, one colour scale."""
    loaded = []
    for rd in run_dirs:
        accuracy = pd.read_csv(rd / "tables" / "accuracy.csv")
        label, _ = run_label(rd)
        if any(label == other for other, _ in loaded):
            label = f"{label} ({rd.name})"
        grid = _order(accuracy.pivot(index="area", columns="noise", values="accuracy"), _levels(rd))
        loaded.append((label, grid))
    if len({tuple(g.columns) for _, g in loaded}) > 1:
        raise UserError("these robustness runs used different noise levels; nothing to compare")
    fig, axes = _heatmap_grid(len(loaded), max(g.shape[0] for _, g in loaded))
    for ax, (label, grid) in zip(axes, loaded, strict=True):
        _heatmap(ax, grid, f"accuracy: {label}", ".2f", accuracy=True)
    fig.suptitle("MMLU-Pro accuracy under noise across models")
    return save(fig, out_dir / "robustness_compare")
