"""Figures of `cot` runs, read from their saved tables only: accuracy by MATH level and by
sparsity level (Wilson 95% CIs), and the rank score against MATH level."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..runs.rundir import run_label
from .common import panel_grid, save

PANELS = (
    ("by_level", "level", "MATH level"),
    ("by_sparsity_level", "sparsity_level", "sparsity level (1 = least sparse)"),
)


def _summary(run_dir: Path) -> dict:
    path = run_dir / "tables" / "summary.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no tables/summary.json; finish the run (--resume) first")
    return json.loads(path.read_text())


def _bars(ax, records: list[dict], key: str, offset: float, width: float, label: str | None):
    """Accuracy bars with asymmetric Wilson intervals; n over each bar."""
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return
    x = frame[key].to_numpy(dtype=float) + offset
    acc = frame["accuracy"].to_numpy(dtype=float)
    err = np.vstack([acc - frame["ci_lo"], frame["ci_hi"] - acc])
    bars = ax.bar(x, acc, width=width, alpha=0.85, label=label)
    color = bars.patches[0].get_facecolor()[:3]
    # a point on each bar, so an accuracy of 0 shows too
    ax.errorbar(x, acc, yerr=err, fmt="o", ms=3, capsize=3, color=color, ecolor="black")
    for xi, n in zip(x, frame["n"], strict=True):
        ax.text(xi, 1.02, f"n={n}", ha="center", fontsize=6, rotation=90 if width < 0.4 else 0)


def _accuracy_axes(ax, xlabel: str, keys) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.15)
    ax.set_xticks(sorted(keys))


def plot_run(run_dir: Path) -> list[Path]:
    summary = _summary(run_dir)
    model, _ = run_label(run_dir)
    strategy = summary["strategy"]
    written: list[Path] = []
    for field, key, xlabel in PANELS:
        fig, (ax,) = panel_grid(1, 1, (5, 3.6))
        _bars(ax, summary[field], key, 0.0, 0.7, None)
        _accuracy_axes(ax, xlabel, [r[key] for r in summary[field]])
        ax.set_title(
            f"{strategy}: accuracy by {xlabel.split(' (')[0]} (Wilson 95% CI)\n{model}", fontsize=9
        )
        written += save(fig, run_dir / "figures" / f"accuracy_{field}")

    ranking = pd.read_parquet(run_dir / "tables" / "ranking.parquet")
    ranking = ranking.dropna(subset=["level"])  # pool problems of unknown level
    metric = ranking["metric"].iloc[0]
    fig, (ax,) = panel_grid(1, 1, (5.5, 3.8))
    levels = sorted(ranking["level"].unique())
    for k, (role, color) in enumerate((("pool", "#4C72B0"), ("test", "#DD8452"))):
        part = ranking[ranking["role"] == role]
        data = [part.loc[part["level"] == lv, "score"].to_numpy() for lv in levels]
        pos = np.arange(len(levels)) + (k - 0.5) * 0.35
        keep = [i for i, d in enumerate(data) if len(d)]
        if keep:
            ax.boxplot(
                [data[i] for i in keep],
                positions=pos[keep],
                widths=0.3,
                patch_artist=True,
                boxprops={"facecolor": color, "alpha": 0.5},
                medianprops={"color": "black"},
                showfliers=False,
            )
            rng = np.random.default_rng(0)
            for i in keep:
                ax.scatter(
                    pos[i] + rng.uniform(-0.08, 0.08, len(data[i])),
                    data[i],
                    s=6,
                    color=color,
                    label=role if i == keep[0] else None,
                )
    ax.set_xticks(range(len(levels)), [str(lv) for lv in levels])
    ax.set_xlabel("MATH level")
    ax.set_ylabel(f"{metric} (sparser when {ranking['sparser_when'].iloc[0]})")
    ax.legend(fontsize=7)
    ax.set_title(f"Rank score by MATH level: {model}", fontsize=9)
    written += save(fig, run_dir / "figures" / "sparsity_by_level")
    return written


def plot_compare(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Strategies side by side: accuracy by MATH level and by sparsity level."""
    loaded = []
    for rd in run_dirs:
        s = _summary(rd)
        label = f"{s['strategy']} ({s['overall']['accuracy']:.2f})"
        if any(label == other for other, _ in loaded):
            label = f"{label} {rd.name}"
        loaded.append((label, s))
    fig, axes = panel_grid(2, 2, (6, 3.8))
    width = 0.8 / len(loaded)
    for ax, (field, key, xlabel) in zip(axes, PANELS, strict=True):
        keys = set()
        for k, (label, s) in enumerate(loaded):
            _bars(ax, s[field], key, (k - (len(loaded) - 1) / 2) * width, width, label)
            keys |= {r[key] for r in s[field]}
        _accuracy_axes(ax, xlabel, keys)
        ax.set_title(f"accuracy by {xlabel.split(' (')[0]}", fontsize=9)
    axes[0].legend(fontsize=7, title="strategy (overall)", title_fontsize=7)
    model, _ = run_label(run_dirs[0])
    fig.suptitle(f"cot strategies on MATH-500: {model} (Wilson 95% CIs)", fontsize=10)
    return save(fig, out_dir / "cot_compare")
