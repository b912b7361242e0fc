"""Figures of `pretrain` runs, read from their saved tables only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..runs.rundir import read_manifest
from .common import bar_ylim, layer_name, panel_grid, save

SPLITS = {
    "id": ("ID", "#1f77b4"),
    "ood_medium": ("OOD-medium", "#2ca02c"),
    "ood_hard": ("OOD-hard", "#ff7f0e"),
}
DYNAMICS = ["top5_energy", "top10_energy", "eff_rank", "accuracy"]


def _label(run_dir: Path) -> str:
    options = read_manifest(run_dir).get("options", {})
    return f"{options.get('llm_size', run_dir.name)} (seed {options.get('seed', '?')})"


def _columns(name: str) -> tuple[str, str]:
    return (
        (name, f"{name}_sem") if name in ("accuracy", "loss") else (f"{name}_mean", f"{name}_sem")
    )


# The model-free answerers of the accuracy panels: dashed (relation prior), dash-dot (popularity).
BASELINES = {
    "prior_accuracy": ("relation prior", "--"),
    "popularity_accuracy": ("popularity", "-."),
}


def _baselines(ax, part: pd.DataFrame) -> None:
    """The baselines of each split against step, in the split's colour; labelled once."""
    for column, (title, style) in BASELINES.items():
        if column not in part:
            continue
        for k, (split, (_, color)) in enumerate(SPLITS.items()):
            s = part[part.split == split].sort_values("step")
            ax.plot(s.step, s[column], ls=style, lw=1, color=color, label=title if k == 0 else None)


def _split_baselines(ax, frame: pd.DataFrame, present: list[str]) -> None:
    """The model-free answerers' accuracy (the ``BASELINES`` columns ``frame`` has, indexed by
    split) as a dashed line across each split's bar."""
    for column, (title, style) in BASELINES.items():
        if column in frame:
            for x, split in enumerate(present):
                ax.hlines(
                    frame.loc[split, column],
                    x - 0.4,
                    x + 0.4,
                    colors="black",
                    linestyles=style,
                    lw=1,
                    label=title if x == 0 else None,
                )


def plot_run(run_dir: Path) -> list[Path]:
    """Per probed layer: metrics and accuracy against step (one line per split, SEM bands,
    the baselines dashed), and the per-split comparison at the last step; plus the training
    loss curve. A run of several seeds: :func:`plot_seeds`."""
    if (run_dir / "tables" / "seeds.csv").is_file():
        return plot_seeds(run_dir)
    dyn = pd.read_parquet(run_dir / "tables" / "dynamics.parquet")
    label = _label(run_dir)
    metrics = [c[: -len("_mean")] for c in dyn.columns if c.endswith("_mean")]
    lines = [m for m in DYNAMICS if m == "accuracy" or m in metrics]
    bars = ["accuracy", "loss", *metrics]
    written: list[Path] = []
    for layer, part in dyn.groupby("layer", sort=True):
        fig, axes = panel_grid(len(lines), 2, (4.2, 3.2))
        for ax, name in zip(axes, lines, strict=True):
            mean, sem = _columns(name)
            for split, (title, color) in SPLITS.items():
                s = part[part.split == split].sort_values("step")
                if s.empty:
                    continue
                ax.plot(
                    s.step,
                    s[mean],
                    marker="o",
                    ms=3,
                    color=color,
                    label=f"{title} (n={s.n.iloc[-1]})",
                )
                ax.fill_between(
                    s.step,
                    s[mean] - s[sem].fillna(0),
                    s[mean] + s[sem].fillna(0),
                    color=color,
                    alpha=0.2,
                )
            if name == "accuracy":
                _baselines(ax, part)
                ax.axhline(0.1, color="grey", ls=":", lw=1, label="chance")
                ax.legend(fontsize=6)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("training step")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"Learning dynamics: {label}, {layer_name(layer)} (mean ± SEM)", fontsize=11)
        written += save(fig, run_dir / "figures" / f"dynamics_layer{layer}")

        last = part[part.step == part.step.max()].set_index("split")
        present = [s for s in SPLITS if s in last.index]
        fig, axes = panel_grid(len(bars), 4, (3.0, 2.8))
        for ax, name in zip(axes, bars, strict=True):
            mean, sem = _columns(name)
            means, errs = last.loc[present, mean], last.loc[present, sem].fillna(0)
            ax.bar(
                [SPLITS[s][0] for s in present],
                means,
                yerr=errs,
                color=[SPLITS[s][1] for s in present],
                capsize=3,
            )
            floor = 0 if name in ("accuracy", "loss") else None
            bar_ylim(ax, means, errs, f"{name} at {layer_name(layer)}", pad=0.3, floor=floor)
            if name == "accuracy":
                _split_baselines(ax, last, present)
                drawn = last.loc[present, [c for c in BASELINES if c in last]].to_numpy(float)
                if np.isfinite(drawn).any():  # keep the dashed lines inside the panel
                    ax.set_ylim(top=max(ax.get_ylim()[1], np.nanmax(drawn) * 1.1))
                ax.legend(fontsize=6)
            ax.set_title(name, fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
        fig.suptitle(
            f"By split at step {int(last.step.max())}: {label}, {layer_name(layer)}", fontsize=11
        )
        written += save(fig, run_dir / "figures" / f"final_layer{layer}")

    log = pd.read_parquet(run_dir / "tables" / "train.parquet")
    fig, axes = panel_grid(1, 1, (5.0, 3.2))
    axes[0].plot(log.step, log.loss, color="#444444")
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel("training loss (per token)")
    axes[0].set_title(f"Training loss: {label}", fontsize=10)
    written += save(fig, run_dir / "figures" / "train_loss")
    return written


def plot_compare(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Several runs (sizes, seeds): accuracy and top-5% energy against step, per split."""
    loaded = []
    for rd in run_dirs:
        dyn = pd.read_parquet(rd / "tables" / "dynamics.parquet")
        loaded.append((_label(rd), dyn[dyn.layer == -1] if (dyn.layer == -1).any() else dyn))
    if any(d.empty for _, d in loaded):
        raise UserError("every compared pretrain run needs dynamics; finish the runs first")
    names = [n for n in ("accuracy", "top5_energy") if all(_columns(n)[0] in d for _, d in loaded)]
    fig, axes = panel_grid(len(names) * len(SPLITS), len(SPLITS), (3.6, 3.0))
    for row, name in enumerate(names):
        mean, sem = _columns(name)
        for col, (split, (title, _)) in enumerate(SPLITS.items()):
            ax = axes[row * len(SPLITS) + col]
            for label, dyn in loaded:
                s = dyn[dyn.split == split].sort_values("step")
                ax.plot(s.step, s[mean], marker="o", ms=2, label=label)
                ax.fill_between(
                    s.step, s[mean] - s[sem].fillna(0), s[mean] + s[sem].fillna(0), alpha=0.15
                )
            ax.set_title(f"{title}: {name}", fontsize=9)
            ax.set_xlabel("training step")
    axes[0].legend(fontsize=7)
    fig.suptitle("Learning dynamics across runs (mean ± SEM)")
    return save(fig, out_dir / "pretrain_compare")


def plot_seeds(run_dir: Path) -> list[Path]:
    """A run of several seeds: each seed's accuracy against step (the spread), and the
    across-seed mean with its 95% CI beside the baselines, per split."""
    seeds = read_manifest(run_dir).get("seed_runs", [])
    written = plot_compare([run_dir / s for s in seeds], run_dir / "figures")
    summary = pd.read_csv(run_dir / "tables" / "seeds.csv")
    summary = summary[summary.layer == summary.layer.iloc[0]].set_index("split")
    present = [s for s in SPLITS if s in summary.index]
    fig, axes = panel_grid(1, 1, (4.5, 3.2))
    ax = axes[0]
    ax.bar(
        [SPLITS[s][0] for s in present],
        summary.loc[present, "accuracy"],
        yerr=summary.loc[present, "accuracy_ci"].fillna(0),
        color=[SPLITS[s][1] for s in present],
        capsize=3,
    )
    _split_baselines(ax, summary, present)
    ax.axhline(0.1, color="grey", ls=":", lw=1, label="chance")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    ax.set_title(f"Final accuracy across {len(seeds)} seeds (mean, 95% CI)", fontsize=10)
    return written + save(fig, run_dir / "figures" / "seeds_accuracy")
