"""Figures of the signals table of graded runs, from tables/signals.csv and risk_coverage.csv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..runs.rundir import atomic_write_text, read_manifest, run_label
from .common import plt, save

N_CURVES = 6  # risk-coverage curves drawn: the signals with the best PRR
KINDS = {
    "baseline": "tab:gray",
    "token": "tab:blue",
    "sparsity": "tab:orange",
    "samples": "tab:purple",
    "other": "tab:green",
}


def has_signals(run_dir: Path) -> bool:
    return (run_dir / "tables" / "signals.csv").is_file()


def _table(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "tables" / "signals.csv", keep_default_na=True)


def plot_run(run_dir: Path) -> list[Path]:
    """signals_rank (PRR and ROC-AUC of every signal with 95% CIs, best PRR on top, coloured
    by kind: the standard baselines grey) and
    risk_coverage (the best signals' curves between the oracle and random orders)."""
    table = _table(run_dir)
    curves = pd.read_csv(run_dir / "tables" / "risk_coverage.csv")
    figures = run_dir / "figures"
    scored = table[np.isfinite(table["prr"])].iloc[::-1]  # matplotlib draws bottom-up
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.28 * max(len(scored), 4)), sharey=True)
    y = np.arange(len(scored))
    for ax, metric, chance in ((axes[0], "prr", 0.0), (axes[1], "roc_auc", 0.5)):
        for kind, color in KINDS.items():  # the standard baselines apart from the new signals
            part = (scored["kind"] == kind).to_numpy()
            if part.any():
                rows = scored[part]
                err = np.abs(
                    [rows[metric] - rows[f"{metric}_lo"], rows[f"{metric}_hi"] - rows[metric]]
                )
                ax.errorbar(
                    rows[metric], y[part], xerr=err, fmt="o", color=color, capsize=2, label=kind
                )
        ax.axvline(chance, color="gray", ls=":", lw=1)
        ax.set_xlabel(f"{'PRR' if metric == 'prr' else 'ROC-AUC'} (errors positive), 95% CI")
    axes[0].set_yticks(y, scored["signal"].tolist())
    if len(scored):
        axes[1].legend(fontsize=7, loc="lower right")
    if not len(scored):
        notes = sorted(set(table["note"].dropna())) or ["no signal"]
        axes[0].text(0.02, 0.5, "\n".join(notes), transform=axes[0].transAxes, fontsize=8)
    fig.suptitle(_label(run_dir), fontsize=9)
    written = save(fig, figures / "signals_rank")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in scored["signal"].iloc[::-1].head(N_CURVES):
        part = curves[curves["signal"] == name]
        ax.plot(part["coverage"], part["risk"], lw=1.2, label=name)
    for name, style in (("oracle", "--"), ("random", ":")):
        part = curves[curves["signal"] == name]
        if len(part):
            ax.plot(part["coverage"], part["risk"], color="black", ls=style, lw=1, label=name)
    ax.set_xlabel("coverage (share of answers kept, least uncertain first)")
    ax.set_ylabel("risk (error rate among kept)")
    ax.set_title(_label(run_dir), fontsize=9)
    if len(curves):
        ax.legend(fontsize=7)
    else:  # every answer right (or wrong): no curve to draw, say why
        ax.text(0.02, 0.5, "\n".join(sorted(set(table["note"].dropna()))), fontsize=8)
    return written + save(fig, figures / "risk_coverage")


def _label(run_dir: Path) -> str:
    model, dataset = run_label(run_dir)
    strategy = read_manifest(run_dir).get("identity", {}).get("strategy")  # cot's, resolved
    return " / ".join([model, dataset, *([strategy] if strategy else [])])


def plot_compare(run_dirs: list[Path], out: Path) -> list[Path]:
    """signals_prr: each signal's PRR with its 95% CI, one marker per run, side by side;
    signals ordered by their mean PRR over the runs. Also the long table signals_prr.csv."""
    labels = [_label(rd) for rd in run_dirs]
    if len(set(labels)) < len(labels):  # two runs of one model, dataset and strategy
        labels = [f"{label} ({rd.name})" for label, rd in zip(labels, run_dirs, strict=True)]
    frames = [_table(rd).assign(run=label) for rd, label in zip(run_dirs, labels, strict=True)]
    long = pd.concat(frames, ignore_index=True)
    long = long[["run", "signal", "direction", "n", "n_errors", "prr", "prr_lo", "prr_hi", "note"]]
    order = long.groupby("signal")["prr"].mean().sort_values(na_position="first").index.tolist()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.3 * max(len(order), 4)))
    width = 0.8 / len(labels)
    for k, label in enumerate(labels):
        part = long[long["run"] == label].set_index("signal").reindex(order)
        y = np.arange(len(order)) - 0.4 + width * (k + 0.5)
        ok = np.isfinite(part["prr"].to_numpy(dtype=float))
        err = np.abs([(part["prr"] - part["prr_lo"])[ok], (part["prr_hi"] - part["prr"])[ok]])
        ax.errorbar(part["prr"][ok], y[ok], xerr=err, fmt="o", ms=4, capsize=2, label=label)
    ax.axvline(0, color="gray", ls=":", lw=1)
    ax.set_yticks(np.arange(len(order)), order)
    ax.set_xlabel("PRR (1 = oracle, 0 = chance), 95% CI")
    ax.legend(fontsize=7, loc="lower right")
    csv = out / "signals_prr.csv"
    atomic_write_text(csv, long.to_csv(index=False))
    return [csv, *save(fig, out / "signals_prr")]
