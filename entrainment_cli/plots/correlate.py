"""Figures of `correlate` runs: 2-D histogram of (entropy, STOPS), median curve, fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..runs.rundir import run_label
from ..science.stats import finite_rows, pool_tokens, unimodal
from . import grading
from .common import plt, save


def _panel(ax, run_dir: Path) -> None:
    tables = run_dir / "tables"
    stats = pd.read_csv(tables / "stats.csv").iloc[0]
    x, y = stats["x"], stats["y"]
    tokens = pool_tokens(
        pd.read_parquet(tables / "tokens.parquet"), x, y, int(stats["min_nucleus"])
    )
    tokens = tokens[finite_rows(tokens, x, y)]
    if len(tokens):
        ax.hexbin(
            tokens[x], tokens[y], gridsize=40, bins="log", cmap="Blues", mincnt=1, linewidths=0
        )
    bins = pd.read_csv(tables / "bins.csv")
    if len(bins):
        ax.fill_between(
            bins["center"],
            bins["q25"],
            bins["q75"],
            color="tab:orange",
            alpha=0.25,
            label="IQR",
            linewidth=0,
        )
        ax.plot(bins["center"], bins["median"], color="tab:orange", lw=1.8, label="bin median")
    fit = json.loads((tables / "fit.json").read_text())
    if fit.get("converged"):
        grid = np.linspace(0, bins["hi"].max(), 200)
        ax.plot(
            grid,
            unimodal(grid, fit["a"], fit["b"], fit["c"]),
            "k--",
            lw=1.2,
            label=f"fit: peak H={fit['peak_x']:.2f}, R²={fit['r2']:.2f}",
        )
    ax.set_title(
        f"N={stats['n']}, r={stats['pearson_r']:.2f}, ρ={stats['spearman_rho']:.2f}", fontsize=9
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)


def plot_run(run_dir: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    _panel(ax, run_dir)
    model, dataset = run_label(run_dir)
    ax.set_xlabel("nucleus entropy H (nats)")
    ax.set_ylabel("STOPS (mean pairwise cosine)")
    fig.suptitle(f"Entropy vs STOPS: {model}, {dataset}", fontsize=10)
    written = save(fig, run_dir / "figures" / "entropy_vs_stops")
    if (run_dir / "tables" / "summary.json").is_file():  # a graded run
        written += grading.plot_run(run_dir)
    return written


def plot_compare(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Grid with models as rows and datasets as columns, both in sorted (stable) order."""
    cells = {}
    for rd in run_dirs:
        key = run_label(rd)
        if key in cells:
            raise UserError(f"two runs of {key[0]} on {key[1]}: {cells[key]} and {rd}; pass one")
        cells[key] = rd
    models = sorted({m for m, _ in cells})
    datasets = sorted({d for _, d in cells})
    fig, axes = plt.subplots(
        len(models),
        len(datasets),
        squeeze=False,
        sharex=True,
        sharey=True,
        figsize=(4.5 * len(datasets), 3.6 * len(models)),
    )
    for i, model in enumerate(models):
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            if (model, dataset) in cells:
                _panel(ax, cells[(model, dataset)])
            else:
                ax.text(0.5, 0.5, "no run", ha="center", va="center", transform=ax.transAxes)
            if i == 0:
                ax.set_title(f"{dataset}\n{ax.get_title()}", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{model}\nSTOPS", fontsize=8)
            if i == len(models) - 1:
                ax.set_xlabel("nucleus entropy H (nats)")
    fig.suptitle("Entropy vs STOPS (bin median, IQR, unimodal fit)")
    return save(fig, out_dir / "entropy_vs_stops_grid")
