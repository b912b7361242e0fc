"""Figures of `qa rankmath` runs, read from their saved tables only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..runs.rundir import run_label
from .common import bar_ylim, check_summary, layer_name, panel_grid, plt, save, sparsity_rows

PANEL = 3.2  # inches per panel side


def _grid(n: int):
    return panel_grid(n, 4, (PANEL, PANEL))


def _tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """summary.csv and correlations.csv, checked whole and agreeing with each other."""
    tables = run_dir / "tables"
    keys = ["layer", "position", "metric"]
    path = tables / "summary.csv"
    summary = check_summary(pd.read_csv(path), [*keys, "level"], path)
    corr = sparsity_rows(pd.read_csv(tables / "correlations.csv"))
    # every probed problem is in one level: the levels' counts add up to each panel's N
    totals = summary.groupby(keys)["n"].sum()
    if (
        len(corr) != len(totals)
        or not corr.set_index(keys)["n"].reindex(totals.index).eq(totals).all()
    ):
        raise ValueError(
            f"{path} is incomplete or damaged (its counts do not add up to the N "
            "of correlations.csv)"
        )
    return summary, corr


def plot_run(run_dir: Path) -> list[Path]:
    """Per-level bars for each (layer, position), and a layer profile when several layers."""
    summary, corr = _tables(run_dir)
    model, _ = run_label(run_dir)
    written: list[Path] = []
    metrics = list(dict.fromkeys(summary["metric"]))
    for (layer, position), part in summary.groupby(["layer", "position"], sort=True):
        fig, axes = _grid(len(metrics))
        for ax, metric in zip(axes, metrics, strict=True):
            m = part[part["metric"] == metric].sort_values("level")
            ax.bar(
                m["level"].astype(str),
                m["mean"],
                yerr=m["sem"],
                capsize=3,
                color="#4C72B0",
                alpha=0.85,
            )
            c = corr[(corr.layer == layer) & (corr.position == position) & (corr.metric == metric)]
            c = c.iloc[0]
            ax.set_title(
                f"{metric}\nρ={c.spearman_rho:.2f} (p={c.spearman_p:.2g}, N={c.n})", fontsize=9
            )
            ax.set_xlabel("MATH level")
            bar_ylim(ax, m["mean"], m["sem"], f"{metric} at {layer_name(layer)}, {position}")
        fig.suptitle(
            f"Sparsity by MATH level: {model}, {layer_name(layer)}, {position} (mean ± SEM)",
            fontsize=11,
        )
        written += save(fig, run_dir / "figures" / f"levels_layer{layer}_{position}")

    layers = sorted(summary["layer"].unique(), key=lambda x: 10**9 if x == -1 else x)
    if len(layers) > 1:
        for position, part in summary.groupby("position", sort=True):
            fig, axes = _grid(len(metrics))
            xs = {layer: i for i, layer in enumerate(layers)}
            cmap = plt.get_cmap("viridis")
            levels = sorted(part["level"].unique())
            for ax, metric in zip(axes, metrics, strict=True):
                for k, level in enumerate(levels):
                    m = part[(part.metric == metric) & (part.level == level)]
                    m = m.assign(x=m["layer"].map(xs)).sort_values("x")
                    ax.plot(
                        m["x"],
                        m["mean"],
                        marker="o",
                        ms=3,
                        label=f"level {level}",
                        color=cmap(k / max(1, len(levels) - 1)),
                    )
                ax.set_title(metric, fontsize=9)
                ax.set_xticks(range(len(layers)))
                ax.set_xticklabels(
                    ["norm" if x == -1 else str(x) for x in layers],
                    fontsize=7,
                    rotation=90 if len(layers) > 12 else 0,
                )
                ax.set_xlabel("layer")
            axes[0].legend(fontsize=7)
            fig.suptitle(f"Layer profile by MATH level: {model}, {position}", fontsize=11)
            written += save(fig, run_dir / "figures" / f"layer_profile_{position}")
    return written


def plot_compare(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Several models side by side: grouped bars per level, at the layer all runs share."""
    loaded = []
    for rd in run_dirs:
        summary, _ = _tables(rd)
        label, _ = run_label(rd)
        if any(label == other for other, _ in loaded):
            label = f"{label} ({rd.name})"
        loaded.append((label, summary))
    shared = set.intersection(*({(r.layer, r.position) for r in s.itertuples()} for _, s in loaded))
    if not shared:
        from ..errors import UserError

        raise UserError("these rankmath runs share no (layer, position); nothing to compare")
    layer, position = min(shared, key=lambda lp: (lp[0] != -1, lp[0], lp[1]))
    metrics = [
        m
        for m in dict.fromkeys(loaded[0][1]["metric"])
        if all(m in set(s["metric"]) for _, s in loaded)
    ]
    fig, axes = _grid(len(metrics))
    width = 0.8 / len(loaded)
    for ax, metric in zip(axes, metrics, strict=True):
        for k, (label, s) in enumerate(loaded):
            m = s[(s.layer == layer) & (s.position == position) & (s.metric == metric)]
            m = m.sort_values("level")
            ax.bar(
                m["level"] + (k - (len(loaded) - 1) / 2) * width,
                m["mean"],
                width=width,
                yerr=m["sem"],
                capsize=2,
                label=label,
            )
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("MATH level")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Sparsity by MATH level across models ({layer_name(layer)}, {position})")
    return save(fig, out_dir / "rankmath_compare")
