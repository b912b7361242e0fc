"""Figures of `qa accuracy`, `qa deepmath`, `qa longreason` and `qa conflict` runs, read from
their saved tables only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..runs.rundir import run_label
from .common import bar_ylim, layer_name, panel_grid, plt, save, sparsity_rows

PANEL = 3.2  # inches per panel side
SPLIT_COLORS = {"8k": "#1f77b4", "16k": "#2ca02c", "32k": "#d62728", "64k": "#ff7f0e"}


def _grid(n: int):
    return panel_grid(n, 4, (PANEL, PANEL))


def _labels(run_dirs: list[Path]) -> list[str]:
    """Model names of the runs, made unique by the run's directory name where they repeat."""
    names = [run_label(rd)[0] for rd in run_dirs]
    return [
        f"{n} ({rd.name})" if names.count(n) > 1 else n
        for n, rd in zip(names, run_dirs, strict=True)
    ]


def _grouped_bars(ax, frames: list[pd.DataFrame], labels: list[str], x: str, y: str, err=None):
    """One bar group per value of ``x``, one bar per run (named in the legend); ``err``: a
    (lo, hi) column pair."""
    keys = sorted(set().union(*(f[x] for f in frames)), key=str)
    pos = {k: i for i, k in enumerate(keys)}
    width = 0.8 / len(frames)
    for k, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        xs = frame[x].map(pos) + (k - (len(frames) - 1) / 2) * width
        yerr = None
        if err is not None:
            yerr = np.vstack([frame[y] - frame[err[0]], frame[err[1]] - frame[y]]).clip(0)
        ax.bar(xs, frame[y], width=width, yerr=yerr, capsize=2, label=label)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([str(k) for k in keys], fontsize=7, rotation=45, ha="right")
    ax.legend(fontsize=7)


# -- deepmath ----------------------------------------------------------------------------------


def plot_deepmath(run_dir: Path) -> list[Path]:
    """Per layer: a scatter of each metric against difficulty with the OLS line and band."""
    tables = run_dir / "tables"
    samples = pd.read_parquet(tables / "samples.parquet")
    corr = sparsity_rows(pd.read_csv(tables / "correlations.csv"))
    band = pd.read_csv(tables / "band.csv")
    model, _ = run_label(run_dir)
    metrics = list(dict.fromkeys(corr["metric"]))
    written: list[Path] = []
    for layer, part in samples.groupby("layer", sort=True):
        fig, axes = _grid(len(metrics))
        for ax, metric in zip(axes, metrics, strict=True):
            ax.scatter(part["difficulty"], part[metric], s=10, alpha=0.35, color="#4C72B0")
            b = band[(band.layer == layer) & (band.metric == metric)]
            if b["fit"].notna().any():
                ax.plot(b["x"], b["fit"], color="#C44E52", lw=1.5)
                ax.fill_between(b["x"], b["lo"], b["hi"], color="#C44E52", alpha=0.2, lw=0)
            c = corr[(corr.layer == layer) & (corr.metric == metric)].iloc[0]
            ax.set_title(
                f"{metric}\nr={c.pearson_r:.2f}, ρ={c.spearman_rho:.2f} "
                f"(p={c.spearman_p:.2g}, N={c.n})",
                fontsize=8,
            )
            ax.set_xlabel("difficulty")
        fig.suptitle(
            f"Sparsity vs DeepMath difficulty: {model}, {layer_name(layer)} (OLS fit, 95% band)",
            fontsize=11,
        )
        written += save(fig, run_dir / "figures" / f"difficulty_scatter_layer{layer}")
    return written


def compare_deepmath(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Spearman ρ (bootstrap CI) of difficulty vs each metric, one bar per run, at layer -1
    (else the first layer all runs share)."""
    corrs = [pd.read_csv(rd / "tables" / "correlations.csv") for rd in run_dirs]
    layer = _shared_layer([set(c["layer"]) for c in corrs])
    frames = [c[c.layer == layer] for c in corrs]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(frames[0])), 4))
    _grouped_bars(ax, frames, _labels(run_dirs), "metric", "spearman_rho")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("Spearman ρ (difficulty, metric)")
    fig.suptitle(f"DeepMath difficulty vs sparsity across models ({layer_name(layer)})")
    return save(fig, out_dir / "deepmath_compare")


def _shared_layer(layer_sets: list[set]) -> int:
    shared = set.intersection(*layer_sets)
    if not shared:
        raise UserError("these runs share no layer; nothing to compare")
    return -1 if -1 in shared else min(shared)


# -- conflict ----------------------------------------------------------------------------------

CONDITION_COLORS = {"conflict": "#C44E52", "nonconflict": "#4C72B0", "control": "#8C8C8C"}


def plot_conflict(run_dir: Path) -> list[Path]:
    """Per layer: box plots of each metric by condition, titled with the paired tests."""
    tables = run_dir / "tables"
    samples = pd.read_parquet(tables / "samples.parquet")
    paired = pd.read_csv(tables / "paired.csv")
    model, _ = run_label(run_dir)
    metrics = list(dict.fromkeys(sparsity_rows(paired)["metric"]))
    conditions = [c for c in CONDITION_COLORS if c in set(samples["condition"])]
    written: list[Path] = []
    for layer, part in samples.groupby("layer", sort=True):
        fig, axes = _grid(len(metrics))
        for ax, metric in zip(axes, metrics, strict=True):
            values = [part.loc[part.condition == c, metric].dropna() for c in conditions]
            box = ax.boxplot(values, patch_artist=True, showmeans=True, widths=0.6)
            for patch, c in zip(box["boxes"], conditions, strict=True):
                patch.set_facecolor(CONDITION_COLORS[c])
                patch.set_alpha(0.5)
            ax.set_xticks(range(1, len(conditions) + 1))
            ax.set_xticklabels(conditions, fontsize=8)
            lines = [metric]
            for row in paired[(paired.layer == layer) & (paired.metric == metric)].itertuples():
                lines.append(
                    f"{row.b}−{row.a}: Δ={row.mean_diff:.3g}, r={row.rank_biserial:.2f}, "
                    f"p={row.wilcoxon_p:.2g}"
                )
            ax.set_title("\n".join(lines), fontsize=7)
        fig.suptitle(
            f"Knowledge conflict: {model}, {layer_name(layer)} (Wilcoxon signed-rank over "
            "items; r = matched-pairs rank-biserial)",
            fontsize=10,
        )
        written += save(fig, run_dir / "figures" / f"conditions_layer{layer}")
    return written


def compare_conflict(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Rank-biserial effect of conflict vs non-conflict per metric, one bar per run."""
    tables = [pd.read_csv(rd / "tables" / "paired.csv") for rd in run_dirs]
    layer = _shared_layer([set(t["layer"]) for t in tables])
    frames = [
        t[(t.layer == layer) & (t.a == "nonconflict") & (t.metric != "n_prompt_chars")]
        for t in tables
    ]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(frames[0])), 4))
    _grouped_bars(ax, frames, _labels(run_dirs), "metric", "rank_biserial")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("rank-biserial r (conflict − non-conflict)")
    fig.suptitle(f"Knowledge conflict across models ({layer_name(layer)})")
    return save(fig, out_dir / "conflict_compare")


# -- longreason --------------------------------------------------------------------------------

ZOOM_LAYERS = 5


def _split_color(split: str, k: int) -> str:
    return SPLIT_COLORS.get(split, plt.get_cmap("tab10")(k % 10))


def plot_longreason(run_dir: Path) -> list[Path]:
    """Layer profile of each metric, one line per split (mean ± SEM over questions), the
    final-norm state drawn as a separate point (it is not one more residual layer), with an
    inset on the last layers; and accuracy per split."""
    from mpl_toolkits.axes_grid1.inset_locator import inset_axes

    tables = run_dir / "tables"
    profile = pd.read_csv(tables / "profile.csv", dtype={"split": str})
    accuracy = pd.read_csv(tables / "accuracy.csv", dtype={"split": str})
    model, _ = run_label(run_dir)
    splits = list(accuracy["split"])
    metrics = list(dict.fromkeys(profile["metric"]))
    residual = sorted(x for x in profile["layer"].unique() if x != -1)
    norm_x = (max(residual) + 1) if residual else 0
    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        zoom = None
        if len(residual) > ZOOM_LAYERS:
            zoom = inset_axes(ax, width="40%", height="40%", loc="lower right", borderpad=1.2)
        for k, split in enumerate(splits):
            m = profile[(profile.metric == metric) & (profile.split == split)]
            if m.empty:
                continue
            color = _split_color(split, k)
            res = m[m.layer != -1].sort_values("layer")
            norm = m[m.layer == -1]
            for target, part in ((ax, res), (zoom, res[res.layer >= norm_x - ZOOM_LAYERS])):
                if target is None:
                    continue
                target.plot(
                    part["layer"],
                    part["mean"],
                    color=color,
                    marker="o",
                    ms=2.5,
                    lw=1.2,
                    label=split if target is ax else None,
                )
                target.fill_between(
                    part["layer"],
                    part["mean"] - part["sem"].fillna(0),
                    part["mean"] + part["sem"].fillna(0),
                    color=color,
                    alpha=0.15,
                    lw=0,
                )
                if len(norm):
                    target.errorbar(
                        [norm_x],
                        norm["mean"],
                        yerr=norm["sem"].fillna(0),
                        color=color,
                        marker="D",
                        ms=4,
                        ls="none",
                        capsize=2,
                    )
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("layer (◆ = after the final norm)", fontsize=8)
        if zoom is not None:
            zoom.set_xlim(norm_x - ZOOM_LAYERS - 0.5, norm_x + 0.5)
            zoom.tick_params(labelsize=6)
            zoom.set_title(f"last {ZOOM_LAYERS} layers + norm", fontsize=6)
    axes[0].legend(fontsize=7, title="split", title_fontsize=7, loc="upper left")
    fig.suptitle(f"Layer profile by context length: {model} (mean ± SEM)", fontsize=11)
    written = save(fig, run_dir / "figures" / "layer_profile")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    acc = accuracy.fillna({"accuracy": 0.0, "ci_lo": 0.0, "ci_hi": 0.0})
    ax.bar(
        acc["split"],
        acc["accuracy"],
        color=[_split_color(s, k) for k, s in enumerate(splits)],
        yerr=np.vstack([acc["accuracy"] - acc["ci_lo"], acc["ci_hi"] - acc["accuracy"]]),
        capsize=3,
    )
    for x, row in enumerate(accuracy.itertuples()):
        ax.annotate(
            f"{row.correct}/{row.n_answered}\n({row.skipped_too_long} too long)",
            (x, 0.02),
            ha="center",
            fontsize=7,
        )
    ax.axhline(0.2, color="gray", ls=":", lw=1, label="chance (5 options)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (Wilson 95% CI)")
    ax.legend(fontsize=7)
    fig.suptitle(f"LongReason accuracy by context length: {model}", fontsize=10)
    return written + save(fig, run_dir / "figures" / "accuracy")


def compare_longreason(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Accuracy per split (Wilson CI), one bar per run."""
    frames = [pd.read_csv(rd / "tables" / "accuracy.csv", dtype={"split": str}) for rd in run_dirs]
    fig, ax = plt.subplots(figsize=(6, 4))
    _grouped_bars(
        ax,
        [f.fillna(0.0) for f in frames],
        _labels(run_dirs),
        "split",
        "accuracy",
        err=("ci_lo", "ci_hi"),
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    fig.suptitle("LongReason accuracy by context length across models")
    return save(fig, out_dir / "longreason_compare")


# -- accuracy ----------------------------------------------------------------------------------


def plot_accuracy(run_dir: Path) -> list[Path]:
    """Per (layer, position): each metric's level means (bars, ± SEM) with the accuracy per
    level on a twin axis, titled with the per-problem point-biserial r and AUROC."""
    tables = run_dir / "tables"
    by_level = pd.read_csv(tables / "accuracy_by_level.csv")
    summary = pd.read_csv(tables / "summary.csv")
    assoc = sparsity_rows(pd.read_csv(tables / "association.csv"))
    model, _ = run_label(run_dir)
    metrics = list(dict.fromkeys(assoc["metric"]))
    written: list[Path] = []
    for (layer, position), part in summary.groupby(["layer", "position"], sort=True):
        fig, axes = _grid(len(metrics))
        for ax, metric in zip(axes, metrics, strict=True):
            m = part[part.metric == metric].sort_values("level")
            ax.bar(m["level"], m["mean"], yerr=m["sem"], color="#4C72B0", alpha=0.6, capsize=2)
            bar_ylim(ax, m["mean"], m["sem"], f"{metric} at {layer_name(layer)}, {position}")
            ax.set_xlabel("MATH level")
            twin = ax.twinx()
            twin.plot(by_level["level"], by_level["accuracy"], color="#C44E52", marker="o")
            twin.set_ylim(-0.02, 1.02)
            twin.tick_params(labelsize=7, colors="#C44E52")
            a = assoc[(assoc.layer == layer) & (assoc.position == position)]
            a = a[a.metric == metric].iloc[0]
            ax.set_title(
                f"{metric}\nr_pb={a.point_biserial_r:.2f} (p={a.point_biserial_p:.2g}), "
                f"AUROC={a.auroc:.2f}, N={a.n}",
                fontsize=8,
            )
        fig.suptitle(
            f"Accuracy (red, right axis) and sparsity by MATH level: {model}, "
            f"{layer_name(layer)}, {position}",
            fontsize=10,
        )
        written += save(fig, run_dir / "figures" / f"accuracy_levels_layer{layer}_{position}")
    return written


def compare_accuracy(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Accuracy per MATH level (Wilson CI), one bar per run."""
    frames = [pd.read_csv(rd / "tables" / "accuracy_by_level.csv") for rd in run_dirs]
    fig, ax = plt.subplots(figsize=(6, 4))
    _grouped_bars(ax, frames, _labels(run_dirs), "level", "accuracy", err=("ci_lo", "ci_hi"))
    ax.set_ylim(0, 1)
    ax.set_xlabel("MATH level")
    ax.set_ylabel("accuracy")
    fig.suptitle("MATH accuracy by level across models")
    return save(fig, out_dir / "accuracy_compare")
