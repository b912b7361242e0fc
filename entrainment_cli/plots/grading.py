"""Figures of graded `correlate` runs: confidence against correctness, from saved tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .common import panel_grid, plt, save

METRICS = ["entropy", "topp_entropy_norm", "stops", "logtoku_au", "logtoku_eu"]
COLORS = {True: "tab:green", False: "tab:red"}


def _panels(n: int):
    return panel_grid(n, 3, (4.2, 3.4))


def plot_run(run_dir: Path) -> list[Path]:
    tables = run_dir / "tables"
    prompts = pd.read_parquet(tables / "prompts.parquet")
    parsed = prompts[~prompts["parse_failed"]]
    summary = json.loads((tables / "summary.json").read_text())
    title = (f"accuracy {summary['accuracy_all']:.1%} of {summary['n_prompts']} "
             f"({summary['n_parse_failed']} unparsed)")  # fmt: skip
    written = []

    # split violins: correct on the left half, incorrect on the right, with the points
    fig, axes = _panels(len(METRICS))
    rng = np.random.default_rng(0)  # jitter only
    for ax, metric in zip(axes, METRICS, strict=True):
        col = f"answer_{metric}"
        names = []
        for ok, side in ((True, -1), (False, 1)):
            values = parsed.loc[parsed["correct"] == ok, col].dropna().to_numpy()
            names.append(f"{'correct' if ok else 'incorrect'} (n={values.size})")
            if values.size == 0:
                continue
            if values.size >= 2 and np.ptp(values) > 0:
                parts = ax.violinplot(values, positions=[0], showextrema=False, widths=0.9)
                for body in parts["bodies"]:
                    verts = body.get_paths()[0].vertices
                    verts[:, 0] = (
                        np.minimum(verts[:, 0], 0) if side < 0 else np.maximum(verts[:, 0], 0)
                    )
                    body.set_facecolor(COLORS[ok])
                    body.set_edgecolor(COLORS[ok])
                    body.set_alpha(0.4)
            median = np.median(values)
            ax.plot([0, side * 0.45], [median, median], color=COLORS[ok], lw=2)
            jitter = side * rng.uniform(0.05, 0.35, values.size)
            ax.scatter(jitter, values, s=7, color=COLORS[ok], alpha=0.7, linewidths=0)
        ax.set_xticks([-0.25, 0.25], names, fontsize=8)
        ax.set_xlim(-0.55, 0.55)
        ax.set_title(col, fontsize=9)
    fig.suptitle(f"Answer-token confidence by correctness (line: median): {title}", fontsize=10)
    written += save(fig, run_dir / "figures" / "correct_vs_incorrect")

    # LogTokU AU x EU, quadrants split at the medians
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    au, eu = parsed["answer_logtoku_au"].to_numpy(), parsed["answer_logtoku_eu"].to_numpy()
    finite = np.isfinite(au) & np.isfinite(eu)
    for ok in (True, False):
        sel = finite & (parsed["correct"].to_numpy() == ok)
        ax.scatter(au[sel], eu[sel], s=14, alpha=0.7, color=COLORS[ok],
                   label="correct" if ok else "incorrect")  # fmt: skip
    quadrants = pd.read_csv(tables / "quadrants.csv")
    if len(quadrants):
        ax.axvline(quadrants["au_median"].iloc[0], color="grey", ls="--", lw=1)
        ax.axhline(quadrants["eu_median"].iloc[0], color="grey", ls="--", lw=1)
        text = "\n".join(
            f"{q.quadrant}: acc {q.accuracy:.0%}" for q in quadrants.itertuples(index=False)
        )
        ax.text(0.02, 0.98, text, transform=ax.transAxes, va="top", fontsize=7)
    ax.set_xlabel("aleatoric uncertainty (AU)")
    ax.set_ylabel("epistemic uncertainty (EU)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"LogTokU over answer tokens, split at the medians\n{title}", fontsize=9)
    written += save(fig, run_dir / "figures" / "logtoku_quadrants")

    # reliability: accuracy per quantile bin of each metric
    reliability = pd.read_csv(tables / "reliability.csv")
    fig, axes = _panels(len(METRICS))
    for ax, metric in zip(axes, METRICS, strict=True):
        col = f"answer_{metric}"
        bins = reliability[reliability["metric"] == col]
        if len(bins):
            mid = (bins["lo"] + bins["hi"]) / 2
            err = [bins["accuracy"] - bins["ci_lo"], bins["ci_hi"] - bins["accuracy"]]
            ax.errorbar(mid, bins["accuracy"], yerr=err, marker="o", capsize=3)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel(col, fontsize=8)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    fig.suptitle("Accuracy by quantile bin of each metric (Wilson 95% CI)", fontsize=10)
    written += save(fig, run_dir / "figures" / "reliability")
    return written
