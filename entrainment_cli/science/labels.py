"""Which question a label column asks of per-example metrics, and its statistics.

A numeric (or ordinal) label: Pearson and Spearman; a two-valued one: AUROC and Mann-Whitney;
a group column: Kruskal-Wallis with epsilon^2; pairs under conditions: paired Wilcoxon with
the rank-biserial correlation. Every table has N, an effect size, p and a bootstrap CI, one
row per metric (and per value of the ``by`` columns, e.g. layer and position). Non-finite
metric values are left out of each test, never read as 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from . import stats


def _present(values: pd.Series) -> pd.Series:
    return values[values.notna()]


def label_kind(values: pd.Series, option: str = "--label") -> str:
    """'binary' (exactly two distinct values) or 'numeric' (more, all numbers); anything else
    is a UserError naming ``option``. Missing values do not count."""
    present = _present(values)
    distinct = list(dict.fromkeys(present.tolist()))
    if len(distinct) == 2:
        return "binary"
    if len(distinct) < 2:
        raise UserError(
            f"{option} '{values.name}' has {len(distinct)} distinct value(s); "
            "a label needs at least two"
        )
    if pd.to_numeric(present, errors="coerce").notna().all() and not any(
        isinstance(v, bool | np.bool_) for v in distinct
    ):
        return "numeric"
    shown = ", ".join(map(str, distinct[:4])) + (", ..." if len(distinct) > 4 else "")
    raise UserError(
        f"{option} '{values.name}' is neither numeric nor two-valued ({len(distinct)} values: "
        f"{shown}); for ordered text give their order with --label-order a,b,c, for "
        "categories use --group"
    )


def binary_values(values: pd.Series) -> tuple[Any, Any]:
    """(negative, positive) of a two-valued label: its values sorted (False < True, 0 < 1,
    alphabetical for text), so AUROC > 0.5 means higher metric values go with the positive."""
    negative, positive = sorted(
        dict.fromkeys(_present(values).tolist()), key=lambda v: (str(type(v)), v)
    )
    return negative, positive


def _per_metric(
    frame: pd.DataFrame,
    by: Sequence[str],
    metrics: Sequence[str],
    test: Callable[[pd.DataFrame, str], dict[str, Any] | list[dict[str, Any]]],
) -> pd.DataFrame:
    """``test(part, metric)`` (one record or several) for every group of ``by`` (sorted) and
    metric, as one table led by the ``by`` columns and ``metric``."""
    parts = frame.groupby(list(by), sort=True) if by else [((), frame)]
    records = []
    for key, part in parts:
        keys = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        for metric in metrics:
            out = test(part, metric)
            for rec in [out] if isinstance(out, dict) else out:
                records.append({**keys, "metric": metric, **rec})
    return pd.DataFrame.from_records(records)


def _numeric(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    return frame.assign(**{label: pd.to_numeric(frame[label], errors="coerce")})


def numeric_table(
    frame: pd.DataFrame,
    label: str,
    metrics: Sequence[str],
    by: Sequence[str] = (),
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Pearson and Spearman of the label against each metric, with p, N and bootstrap CIs."""
    return _per_metric(
        _numeric(frame, label),
        by,
        metrics,
        lambda part, m: stats.correlate(part[label], part[m], n_boot=n_boot, seed=seed),
    )


def binned_table(
    frame: pd.DataFrame, label: str, metrics: Sequence[str], by: Sequence[str] = (), bins: int = 5
) -> pd.DataFrame:
    """Mean and SEM of each metric per bin of a numeric label (the binned-means figure)."""
    return _per_metric(
        _numeric(frame, label),
        by,
        metrics,
        lambda part, m: stats.binned_means(part[label], part[m], bins).to_dict("records"),
    )


def binary_table(
    frame: pd.DataFrame,
    label: str,
    metrics: Sequence[str],
    by: Sequence[str] = (),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Per metric: N per value, means, Mann-Whitney U and p, AUROC (P(metric of a positive >
    that of a negative), ties 1/2) with a stratified bootstrap CI, ``direction`` (whether
    higher or lower values go with the positive), and the rank-biserial r = 2 AUROC - 1."""
    negative, positive = binary_values(frame[label])

    def test(part: pd.DataFrame, metric: str) -> dict[str, Any]:
        values = part[metric].to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        pos = values[finite & (part[label] == positive).to_numpy()]
        neg = values[finite & (part[label] == negative).to_numpy()]
        rank = stats.rank_test(pos, neg)
        lo, hi = stats.bootstrap_ci(stats.auroc, [pos, neg], n_boot, seed, level)
        return {
            "positive": str(positive),
            "negative": str(negative),
            "n": int(pos.size + neg.size),
            "n_dropped": int((~finite & part[label].notna().to_numpy()).sum()),
            "n_positive": int(pos.size),
            "n_negative": int(neg.size),
            "mean_positive": float(pos.mean()) if pos.size else float("nan"),
            "mean_negative": float(neg.mean()) if neg.size else float("nan"),
            **rank,
            "auroc_lo": lo,
            "auroc_hi": hi,
            "rank_biserial": 2 * rank["auroc"] - 1,
        }

    return _per_metric(frame, by, metrics, test)


def group_tables(
    frame: pd.DataFrame,
    group: str,
    metrics: Sequence[str],
    by: Sequence[str] = (),
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-group summary: n, mean, std, SEM, median, min, max; Kruskal-Wallis per metric
    across the groups, with epsilon^2 and its bootstrap CI). Rows without a group are left out."""
    present = frame[frame[group].notna()]
    summary = stats.group_summary(present, [*by, group], metrics)

    def test(part: pd.DataFrame, metric: str) -> dict[str, Any]:
        values = [g[metric].to_numpy(dtype=np.float64) for _, g in part.groupby(group, sort=True)]
        return stats.kruskal_test(values, n_boot=n_boot, seed=seed)

    return summary, _per_metric(present, by, metrics, test)


def comparisons(
    frame: pd.DataFrame, pair_id: str, condition: str, by: Sequence[str] = ()
) -> list[tuple[Any, Any]]:
    """The comparisons (a, b) of every two conditions, in order of first appearance. A pair
    with two rows under one condition (within one group of ``by``) is a UserError."""
    dup = frame.duplicated([*by, pair_id, condition])
    if dup.any():
        row = frame[dup].iloc[0]
        raise UserError(
            f"--pair-id '{pair_id}' {row[pair_id]!r} has more than one row with --condition "
            f"'{condition}' {row[condition]!r}; each pair needs one row per condition"
        )
    conditions = list(dict.fromkeys(_present(frame[condition]).tolist()))
    if len(conditions) < 2:
        raise UserError(
            f"--condition '{condition}' has {len(conditions)} value(s); pairs need two conditions"
        )
    return list(combinations(conditions, 2))


def paired_table(
    frame: pd.DataFrame,
    pair_id: str,
    condition: str,
    metrics: Sequence[str],
    by: Sequence[str] = (),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> pd.DataFrame:
    """Per comparison (a, b) and metric: the Wilcoxon signed-rank test of b - a over the pairs
    that have both (``stats.paired_test``: mean and median difference, Cohen's dz, matched-pairs
    rank-biserial r) and a bootstrap CI of r resampling pairs."""
    pairs = comparisons(frame, pair_id, condition, by)
    present = frame[frame[pair_id].notna() & frame[condition].notna()]

    def test(part: pd.DataFrame, metric: str) -> list[dict[str, Any]]:
        wide = part.pivot(index=pair_id, columns=condition, values=metric)
        out = []
        for a, b in pairs:
            both = wide.reindex(columns=[a, b])  # a missing partner is dropped as non-finite
            d = (both[b] - both[a]).to_numpy(dtype=np.float64)
            lo, hi = stats.bootstrap_ci(
                stats.rank_biserial, [d[np.isfinite(d)]], n_boot, seed, level
            )
            out.append(
                {
                    "a": str(a),
                    "b": str(b),
                    **stats.paired_test(both[a], both[b]),
                    "rank_biserial_lo": lo,
                    "rank_biserial_hi": hi,
                }
            )
        return out

    return _per_metric(present, by, metrics, test)


def question_tables(
    frame: pd.DataFrame,
    metrics: Sequence[str],
    by: Sequence[str],
    *,
    label: str | None = None,
    group: str | None = None,
    pair_id: str | None = None,
    condition: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, pd.DataFrame]:
    """Every table the given columns ask for, by name: ``summary`` (each metric's
    distribution) always; ``label_correlations`` + ``label_binned`` for a numeric label or
    ``label_auroc`` for a two-valued one; ``group_summary`` + ``group_kruskal`` for a group
    column; ``paired`` for pairs under conditions. Each names the column it is about."""
    everything = frame.assign(_all="all")
    out = {"summary": stats.group_summary(everything, [*by, "_all"], metrics).drop(columns="_all")}
    if label is not None:
        if label_kind(frame[label]) == "numeric":
            out["label_correlations"] = numeric_table(frame, label, metrics, by, n_boot, seed)
            out["label_binned"] = binned_table(frame, label, metrics, by)
        else:
            out["label_auroc"] = binary_table(frame, label, metrics, by, n_boot, seed)
    if group is not None:
        summary, kruskal = group_tables(frame, group, metrics, by, n_boot, seed)
        out["group_summary"] = summary.rename(columns={group: "value"})
        out["group_kruskal"] = kruskal
    if pair_id is not None and condition is not None:
        out["paired"] = paired_table(frame, pair_id, condition, metrics, by, n_boot, seed)
    about = {
        "label_correlations": {"label": label},
        "label_binned": {"label": label},
        "label_auroc": {"label": label},
        "group_summary": {"group": group},
        "group_kruskal": {"group": group},
        "paired": {"pair_id": pair_id, "condition": condition},
    }
    return {name: table.assign(**about.get(name, {})) for name, table in out.items()}
