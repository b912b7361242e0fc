"""Sparsity metrics of hidden-state vectors (DESIGN.md, "Metric definitions").

Every function takes a tensor ``h`` of shape ``[..., d]`` and returns ``[...]``: the
metric of each vector along the last dimension. Arithmetic is float32 on the tensor's own
device, whatever the model dtype, because fp16/bf16 arithmetic quantises ratios and
overflows sums of squares (spec 1.4). Non-finite inputs give non-finite outputs; they are
never replaced by 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

Tensor = torch.Tensor


def _f32(h: Tensor) -> Tensor:
    return h.to(torch.float32)


def _k(d: int, p: float) -> int:
    return max(1, math.floor(p * d))


def _top_abs(a: Tensor, p: float) -> Tensor:
    """The k = max(1, floor(p d)) largest |h_i| of each vector."""
    return a.topk(_k(a.shape[-1], p), dim=-1).values


def _entropy(p: Tensor) -> Tensor:
    """Shannon entropy in nats with 0 ln 0 = 0 (exact, no epsilon)."""
    return -torch.special.xlogy(p, p).sum(-1)


def l1(h: Tensor) -> Tensor:
    return _f32(h).abs().sum(-1)


def l1_rel(h: Tensor) -> Tensor:
    h = _f32(h)
    return h.abs().sum(-1) / (math.sqrt(h.shape[-1]) * h.norm(dim=-1))


def l0_outlier(h: Tensor) -> Tensor:
    """Fraction of coordinates with |h_i| > mean(|h|) + std(|h|), std unbiased as upstream."""
    a = _f32(h).abs()
    thr = a.mean(-1, keepdim=True) + a.std(-1, keepdim=True)
    out = (a > thr).to(torch.float32).mean(-1)
    return torch.where(torch.isfinite(a).all(-1), out, torch.nan)


def _top_energy(p: float) -> Callable[[Tensor], Tensor]:
    def metric(h: Tensor) -> Tensor:
        a = _f32(h).abs()
        return _top_abs(a, p).square().sum(-1) / a.square().sum(-1)

    return metric


def _top_l1share(p: float) -> Callable[[Tensor], Tensor]:
    def metric(h: Tensor) -> Tensor:
        a = _f32(h).abs()
        return _top_abs(a, p).sum(-1) / a.sum(-1)

    return metric


def eff_rank(h: Tensor) -> Tensor:
    """exp(H(h^2 / sum h^2)) / d."""
    sq = _f32(h).square()
    return torch.exp(_entropy(sq / sq.sum(-1, keepdim=True))) / h.shape[-1]


def eff_rank_l1(h: Tensor) -> Tensor:
    """exp(H(|h| / sum |h|)) / d."""
    a = _f32(h).abs()
    return torch.exp(_entropy(a / a.sum(-1, keepdim=True))) / h.shape[-1]


def hoyer(h: Tensor) -> Tensor:
    h = _f32(h)
    rd = math.sqrt(h.shape[-1])
    return (rd - h.abs().sum(-1) / h.norm(dim=-1)) / (rd - 1)


def gini(h: Tensor) -> Tensor:
    """Gini coefficient of |h|: 2 sum_i i x_(i) / (d sum x) - (d + 1) / d, x ascending."""
    x = _f32(h).abs().sort(dim=-1).values
    d = x.shape[-1]
    i = torch.arange(1, d + 1, device=x.device, dtype=torch.float32)
    return 2 * (i * x).sum(-1) / (d * x.sum(-1)) - (d + 1) / d


def participation_ratio(h: Tensor) -> Tensor:
    sq = _f32(h).square()
    return sq.sum(-1).square() / sq.square().sum(-1) / h.shape[-1]


METRICS: dict[str, Callable[[Tensor], Tensor]] = {
    "l1": l1,
    "l1_rel": l1_rel,
    "l0_outlier": l0_outlier,
    **{f"top{pct}_energy": _top_energy(pct / 100) for pct in (1, 5, 10)},
    **{f"top{pct}_l1share": _top_l1share(pct / 100) for pct in (1, 5, 10)},
    "eff_rank": eff_rank,
    "eff_rank_l1": eff_rank_l1,
    "hoyer": hoyer,
    "gini": gini,
    "participation_ratio": participation_ratio,
}
ALIASES = {"l0_norm": "l0_outlier"}

# +1: a higher value means sparser; -1: a lower value means sparser.
SPARSER = {
    "l1": -1,
    "l1_rel": -1,
    "l0_outlier": -1,
    "eff_rank": -1,
    "eff_rank_l1": -1,
    "participation_ratio": -1,
    **{name: +1 for name in METRICS if name.startswith("top")},
    "hoyer": +1,
    "gini": +1,
}


def sparser_when(metric: str) -> str:
    """'higher' or 'lower': which values of ``metric`` mean a sparser vector (for tables)."""
    return "higher" if SPARSER[metric] > 0 else "lower"


def resolve_metric_names(names: Iterable[str] | None) -> list[str]:
    """Canonical metric names, in the order given; None means all. Raises KeyError on unknown."""
    if names is None:
        return list(METRICS)
    out: list[str] = []
    for raw in names:
        name = ALIASES.get(raw, raw)
        if name not in METRICS:
            raise KeyError(raw)
        if name not in out:
            out.append(name)
    return out


def compute_metrics(h: Tensor, names: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Every requested metric of each vector of ``h`` ([..., d] -> [...] per metric)."""
    return {name: METRICS[name](h) for name in resolve_metric_names(names)}
