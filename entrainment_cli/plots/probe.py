"""Figures of `entrain probe` runs, read from their saved tables only.

A run measures in scopes: each (layer, position) of the hidden-state metrics
(tables/samples.parquet) and, when it generated, the per-example aggregates of the
per-token metrics (tables/token_summary.parquet; layer empty, position ``generated``).
Each scope gets the per-metric distributions and one figure per question the run asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ..runs.rundir import run_label
from .common import bar_ylim, layer_name, panel_grid, plt, save
from .qa import _grouped_bars, _labels

PANEL = 3.2  # inches per panel side
COLORS = ("#4C72B0", "#C44E52", "#55A868", "#8172B2", "#CCB974", "#64B5CD")


def _grid(n: int):
    return panel_grid(n, 4, (PANEL, PANEL))


def _table(run_dir: Path, name: str) -> pd.DataFrame | None:
    path = run_dir / "tables" / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else None


def _at(table: pd.DataFrame, layer, position: str) -> pd.DataFrame:
    """The rows of one scope (a NaN layer is the generated-token scope)."""
    same_layer = table["layer"].isna() if pd.isna(layer) else table["layer"] == layer
    return table[same_layer & (table["position"] == position)]


def _scopes(run_dir: Path) -> Iterator[tuple[str, str, pd.DataFrame, pd.DataFrame]]:
    """(file stem, title, per-example frame, that scope's summary rows) per scope."""
    tables = run_dir / "tables"
    summary = pd.read_csv(tables / "summary.csv")
    samples = pd.read_parquet(tables / "samples.parquet")
    for layer, position in summary[["layer", "position"]].drop_duplicates().to_numpy():
        part = _at(summary, layer, position)
        if pd.isna(layer):
            frame = pd.read_parquet(tables / "token_summary.parquet")
            yield "generated", "generated tokens (per-example mean and max)", frame, part
        else:
            frame = samples[(samples["layer"] == layer) & (samples["position"] == position)]
            title = f"{layer_name(int(layer))}, {position}"
            yield f"layer{int(layer)}_{position}", title, frame, part


# figure stem -> (the tables it reads, what it shows, how it is drawn from the scope's
# per-example frame, those tables and the metrics)
FIGURES = {
    "label_binned": (
        ("label_binned", "label_correlations"),
        "binned means ± SEM",
        lambda frame, t, metrics: _binned(t["label_binned"], t["label_correlations"], metrics),
    ),
    "label_violins": (
        ("label_auroc",),
        "by label",
        lambda frame, t, metrics: _violins(frame, t["label_auroc"], metrics),
    ),
    "group_bars": (
        ("group_summary", "group_kruskal"),
        "mean ± SEM by group",
        lambda frame, t, metrics: _bars(t["group_summary"], t["group_kruskal"], metrics),
    ),
    "paired": (
        ("paired",),
        "paired differences",
        lambda frame, t, metrics: _paired(frame, t["paired"], metrics),
    ),
}


def plot_run(run_dir: Path) -> list[Path]:
    """Per scope: the distributions, and the figure of each question the run asked: binned
    means (numeric label), violins (two-valued label), bars with SEM (group), paired
    differences (pairs under conditions)."""
    model, _ = run_label(run_dir)
    names = {name for needed, _, _ in FIGURES.values() for name in needed}
    tables = {name: t for name in names if (t := _table(run_dir, name)) is not None}
    written: list[Path] = []
    for stem, title, frame, summary in _scopes(run_dir):
        layer, position = summary["layer"].iloc[0], summary["position"].iloc[0]
        scoped = {name: _at(t, layer, position) for name, t in tables.items()}
        metrics = list(dict.fromkeys(summary["metric"]))
        fig = _distributions(frame, summary, metrics)
        fig.suptitle(f"{model}: {title}, per-metric distributions", fontsize=11)
        written += save(fig, run_dir / "figures" / f"distributions_{stem}")
        for name, (needed, what, draw) in FIGURES.items():
            if all(n in scoped for n in needed):
                fig = draw(frame, scoped, metrics)
                fig.suptitle(f"{model}: {title}, {what}", fontsize=11)
                written += save(fig, run_dir / "figures" / f"{name}_{stem}")
    return written + _layer_profiles(run_dir, model)


# question table -> (statistic, its CI's low and high columns, axis label, no-effect value)
PROFILES = {
    "label_correlations": (
        "spearman_rho", "spearman_lo", "spearman_hi", "Spearman ρ with the label", 0.0,
    ),
    "label_auroc": ("auroc", "auroc_lo", "auroc_hi", "AUROC of the label", 0.5),
    "group_kruskal": (
        "epsilon_sq", "epsilon_sq_lo", "epsilon_sq_hi", "Kruskal-Wallis ε² across groups", 0.0,
    ),
    "paired": (
        "rank_biserial", "rank_biserial_lo", "rank_biserial_hi", "paired rank-biserial r", 0.0,
    ),
    "summary": ("mean", None, None, "mean ± SEM over the examples", None),
}  # fmt: skip


def _layer_profiles(run_dir: Path, model: str) -> list[Path]:
    """With two or more probed layers: each question's statistic (with its CI), or without a
    question each metric's mean (± SEM), against the layer (the final norm last), one line per
    position (and per pair of conditions): ``layer_profile_<table>``."""
    written: list[Path] = []
    for name, (effect, lo, hi, axis, null) in PROFILES.items():
        table = _table(run_dir, name)
        if table is None or (name == "summary" and len(written)):
            continue
        table = table[table["layer"].notna()]
        layers = sorted({int(v) for v in table["layer"]}, key=lambda v: (v == -1, v))
        if len(layers) < 2:
            return written
        x_of = {layer: i for i, layer in enumerate(layers)}
        lines = ["position", *(("a", "b") if name == "paired" else ())]
        metrics = list(dict.fromkeys(table["metric"]))
        fig, axes = _grid(len(metrics))
        for ax, metric in zip(axes, metrics, strict=True):
            rows = table[table["metric"] == metric]
            for k, (key, part) in enumerate(rows.groupby(lines, sort=False)):
                part = part.sort_values("layer", key=lambda s: s.map(x_of))
                x = part["layer"].astype(int).map(x_of).to_numpy()
                color = COLORS[k % len(COLORS)]
                what = " ".join(map(str, key if isinstance(key, tuple) else (key,)))
                if name == "paired":
                    what = f"{part['position'].iloc[0]} {part['b'].iloc[0]}−{part['a'].iloc[0]}"
                ax.plot(x, part[effect], marker="o", ms=3, color=color, label=what)
                if lo is not None:
                    ax.fill_between(x, part[lo], part[hi], color=color, alpha=0.2, lw=0)
                else:
                    ax.fill_between(
                        x, part[effect] - part["sem"], part[effect] + part["sem"],
                        color=color, alpha=0.2, lw=0,
                    )  # fmt: skip
            if null is not None:
                ax.axhline(null, color="grey", lw=0.8, ls="--")
            ax.set_xticks(range(len(layers)))
            ax.set_xticklabels(["final" if v == -1 else str(v) for v in layers], fontsize=6)
            ax.set_xlabel("layer", fontsize=7)
            baseline = metric.startswith("n_prompt_")  # the prompt-length controls
            ax.set_title(f"{metric} (length baseline)" if baseline else metric, fontsize=8)
        axes[0].legend(fontsize=6)
        fig.suptitle(f"{model}: {axis}, by layer", fontsize=11)
        written += save(fig, run_dir / "figures" / f"layer_profile_{name}")
    return written


def _distributions(frame: pd.DataFrame, summary: pd.DataFrame, metrics: list[str]):
    fig, axes = _grid(len(metrics))
    s = summary.set_index("metric")
    for ax, metric in zip(axes, metrics, strict=True):
        values = frame[metric].to_numpy(dtype=np.float64)
        ax.hist(values[np.isfinite(values)], bins=20, color=COLORS[0], alpha=0.8)
        ax.axvline(s.loc[metric, "median"], color="k", lw=1, ls="--")
        ax.set_title(
            f"{metric}\nN={s.loc[metric, 'n']}, mean={s.loc[metric, 'mean']:.3g}", fontsize=8
        )
    return fig


def _binned(binned: pd.DataFrame, corr: pd.DataFrame, metrics: list[str]):
    fig, axes = _grid(len(metrics))
    label = corr["label"].iloc[0]
    c = corr.set_index("metric")
    for ax, metric in zip(axes, metrics, strict=True):
        b = binned[binned["metric"] == metric]
        ax.errorbar(b["x_mean"], b["mean"], yerr=b["sem"], marker="o", capsize=3, color=COLORS[0])
        r = c.loc[metric]
        ax.set_title(
            f"{metric}\nr={r.pearson_r:.2f}, ρ={r.spearman_rho:.2f} "
            f"[{r.spearman_lo:.2f}, {r.spearman_hi:.2f}]\np={r.spearman_p:.2g}, N={r.n}",
            fontsize=7,
        )
        ax.set_xlabel(label)
    return fig


def _violins(frame: pd.DataFrame, auroc: pd.DataFrame, metrics: list[str]):
    fig, axes = _grid(len(metrics))
    label = auroc["label"].iloc[0]
    a = auroc.set_index("metric")
    values = frame[label].astype(str)
    for ax, metric in zip(axes, metrics, strict=True):
        r = a.loc[metric]
        sides = [str(r.negative), str(r.positive)]
        data = [frame.loc[values == v, metric].to_numpy(dtype=np.float64) for v in sides]
        data = [d[np.isfinite(d)] for d in data]
        shown = [k for k, d in enumerate(data) if d.size]
        if shown:
            parts = ax.violinplot([data[k] for k in shown], positions=shown, showmedians=True)
            for body, k in zip(parts["bodies"], shown, strict=True):
                body.set_facecolor(COLORS[k])
        ax.set_xticks([0, 1])
        ax.set_xticklabels([f"{label}={v}" for v in sides], fontsize=7)
        ax.set_title(
            f"{metric}\nAUROC={r.auroc:.2f} [{r.auroc_lo:.2f}, {r.auroc_hi:.2f}] ({r.direction})"
            f"\nMann-Whitney p={r.p:.2g}, N={r.n}",
            fontsize=7,
        )
    return fig


def _bars(summary: pd.DataFrame, kruskal: pd.DataFrame, metrics: list[str]):
    fig, axes = _grid(len(metrics))
    k = kruskal.set_index("metric")
    for ax, metric in zip(axes, metrics, strict=True):
        s = summary[summary["metric"] == metric]
        ax.bar(
            s["value"].astype(str), s["mean"], yerr=s["sem"], capsize=3, color=COLORS[0], alpha=0.85
        )
        ax.tick_params(axis="x", labelsize=7, rotation=45)
        bar_ylim(ax, s["mean"], s["sem"], f"{metric} by group")
        r = k.loc[metric]
        ax.set_title(
            f"{metric}\nε²={r.epsilon_sq:.2f} [{r.epsilon_sq_lo:.2f}, {r.epsilon_sq_hi:.2f}]"
            f"\nKruskal-Wallis p={r.p:.2g}, N={r.n}",
            fontsize=7,
        )
    return fig


def _paired(frame: pd.DataFrame, paired: pd.DataFrame, metrics: list[str]):
    """Per metric: each pair's difference b - a per comparison (a strip with the median)."""
    fig, axes = _grid(len(metrics))
    pair_id, condition = paired["pair_id"].iloc[0], paired["condition"].iloc[0]
    wide = frame.astype({condition: str}).pivot(index=pair_id, columns=condition, values=metrics)
    for ax, metric in zip(axes, metrics, strict=True):
        rows = paired[paired["metric"] == metric]
        lines = [metric]
        for x, r in enumerate(rows.itertuples()):
            d = (wide[(metric, str(r.b))] - wide[(metric, str(r.a))]).to_numpy(dtype=np.float64)
            d = d[np.isfinite(d)]
            jitter = np.random.default_rng(x).uniform(-0.15, 0.15, d.size)  # display only
            ax.scatter(x + jitter, d, s=10, alpha=0.6, color=COLORS[x % len(COLORS)])
            ax.hlines(np.median(d) if d.size else np.nan, x - 0.3, x + 0.3, color="k")
            lines.append(
                f"{r.b}−{r.a}: r={r.rank_biserial:.2f} [{r.rank_biserial_lo:.2f}, "
                f"{r.rank_biserial_hi:.2f}], p={r.wilcoxon_p:.2g}, N={r.n}"
            )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{r.b}−{r.a}" for r in rows.itertuples()], fontsize=7)
        ax.set_title("\n".join(lines), fontsize=6)
    return fig


EFFECTS = {  # question table -> (effect column, axis label)
    "label_correlations": ("spearman_rho", "Spearman ρ with the label"),
    "label_auroc": ("auroc", "AUROC of the label"),
    "group_kruskal": ("epsilon_sq", "Kruskal-Wallis ε² across groups"),
    "paired": ("rank_biserial", "paired rank-biserial r"),
}


def _compared_scopes(tables: list[pd.DataFrame]) -> list[tuple[float, str]]:
    """The scopes every run has: the first hidden one (layer -1 first, then the lowest) and
    the generated-token scope."""
    keys = [
        {
            (float(layer), position)
            for layer, position in t[["layer", "position"]].itertuples(index=False)
        }
        for t in tables
    ]
    shared = set.intersection(*keys)
    hidden = sorted((k for k in shared if not np.isnan(k[0])), key=lambda k: (k[0] != -1, k))
    return hidden[:1] + [k for k in shared if np.isnan(k[0])]


def plot_compare(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Several runs (e.g. models) on one question: each metric's effect size, one bar per run,
    in the scopes they share."""
    written: list[Path] = []
    for name, (effect, axis) in EFFECTS.items():
        tables = [_table(rd, name) for rd in run_dirs]
        if any(t is None for t in tables):
            continue
        for layer, position in _compared_scopes(tables):
            frames = [_at(t, layer, position) for t in tables]
            fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(frames[0])), 4))
            _grouped_bars(ax, frames, _labels(run_dirs), "metric", effect)
            ax.set_ylabel(axis)
            hidden = not np.isnan(layer)
            where = f"{layer_name(int(layer))}, {position}" if hidden else "generated tokens"
            fig.suptitle(f"{axis} across runs ({where})")
            stem = f"layer{int(layer)}_{position}" if hidden else "generated"
            written += save(fig, out_dir / f"compare_{name}_{stem}")
    return written
