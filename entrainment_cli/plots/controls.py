"""The controls figure of a run (tables/controls.csv): each metric's raw Spearman rho with its
label beside the partial rho given prompt length, with CIs, and prompt length's own rho as a
reference line, one panel per layer and position (and comparison, in paired studies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..runs.rundir import run_label
from .common import layer_name, panel_grid, save

RAW, CONTROLLED, EXPLAINED = "#8C8C8C", "#4C72B0", "#C44E52"


def _panels(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per comparison, layer and position the table holds."""
    keys = [k for k in ("a", "b", "layer", "position") if k in table and table[k].notna().any()]
    if not keys:
        return [("", table)]
    out = []
    for key, part in table.groupby(keys, sort=True, dropna=False):
        where = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        title = []
        if "a" in where:
            title.append(f"{where['b']} vs {where['a']}")
        if "layer" in where and pd.notna(where["layer"]):
            title.append(layer_name(int(where["layer"])))
        if "position" in where and pd.notna(where["position"]):
            title.append(str(where["position"]))
        out.append((", ".join(title), part))
    return out


def plot_run(run_dir: Path) -> list[Path]:
    """figures/controls.png and .pdf; nothing for a run without a controls table."""
    path = run_dir / "tables" / "controls.csv"
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    if table.empty:
        return []
    panels = _panels(table)
    metrics = list(dict.fromkeys(table.loc[table["kind"] == "metric", "metric"]))
    fig, axes = panel_grid(len(panels), 3, (4.2, 0.32 * len(metrics) + 1.6))
    for ax, (title, part) in zip(axes, panels, strict=True):
        rows = part[part["kind"] == "metric"].set_index("metric").reindex(metrics)
        y = np.arange(len(metrics))
        for offset, (prefix, color) in (
            (0.17, ("spearman", RAW)),
            (-0.17, ("partial", CONTROLLED)),
        ):
            value = rows["spearman_rho" if prefix == "spearman" else "partial_rho"]
            lo, hi = rows[f"{prefix}_lo"], rows[f"{prefix}_hi"]
            ax.errorbar(
                value, y + offset, xerr=[(value - lo).clip(lower=0), (hi - value).clip(lower=0)],
                fmt="o", ms=3.5,
                color=color, capsize=2, lw=1,
                label="raw" if prefix == "spearman" else "given prompt length",
            )  # fmt: skip
        length = part[part["metric"] == "n_prompt_tokens"]
        if len(length) and np.isfinite(length["spearman_rho"].iloc[0]):
            ax.axvline(length["spearman_rho"].iloc[0], color=EXPLAINED, ls="--", lw=1,
                       label="prompt length (tokens)")  # fmt: skip
        ax.axvline(0, color="k", lw=0.6)
        ax.set_yticks(y)
        ax.set_yticklabels(metrics, fontsize=8)
        for tick, verdict in zip(ax.get_yticklabels(), rows["verdict"], strict=True):
            if verdict == "explained by length":
                tick.set_color(EXPLAINED)
        ax.invert_yaxis()
        ax.set_xlim(-1.05, 1.05)
        ax.set_xlabel(f"Spearman ρ with {part['label'].iloc[0]}", fontsize=8)
        ax.set_title(title, fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False)
    fig.subplots_adjust(bottom=0.08)
    model, _ = run_label(run_dir)
    fig.suptitle(
        f"{model}: each metric raw and given prompt length (95% CIs; red: explained by length)",
        fontsize=10,
    )
    return save(fig, run_dir / "figures" / "controls")
