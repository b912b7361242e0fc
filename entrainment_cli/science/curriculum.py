"""Sparsity levels and curriculum demonstration choice (spec 3.4), as pure functions.

Levels are quantile bins of the pool's scores, oriented so that level 1 is the least sparse
(easiest) and level n the sparsest (hardest), whichever way the metric points
(``sparsity.SPARSER``). A test problem gets the bin its score falls in, with the same
orientation. Upstream scanned positional level ranges and, for metrics where lower means
sparser (its default ``l0_norm``), sent scores below the pool to the easiest level, scores
above it to the hardest, and scores in gaps to level 1; here the bin edges decide alone.

Bands follow the method's intent with the thresholds its comments state (``<=``), so each
band is reachable for every ``n_levels >= 3`` (upstream's strict ``<`` made "easy" dead code at
5 levels): easy = levels 1..n//3, middle = up to 2n//3, hard = the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BANDS = ("easy", "middle", "hard")
# Per band, the levels of the two demonstrations relative to the problem's own level.
PLAN = {"easy": (0, +1), "middle": (0, 0), "hard": (-1, 0)}


def hardness(scores: Sequence[float], sparser: int) -> np.ndarray:
    """Scores turned so that larger = sparser = harder (``sparser`` is +1 or -1)."""
    if sparser not in (1, -1):
        raise ValueError(f"sparser must be +1 or -1, got {sparser}")
    return sparser * np.asarray(scores, dtype=np.float64)


def level_edges(pool_scores: Sequence[float], n_levels: int, sparser: int) -> np.ndarray:
    """The ``n_levels - 1`` inner quantile edges of the pool, in hardness units (ascending)."""
    h = hardness(pool_scores, sparser)
    if n_levels < 1:
        raise ValueError(f"n_levels must be >= 1, got {n_levels}")
    if h.size < n_levels:
        raise ValueError(f"{h.size} pool scores cannot fill {n_levels} levels")
    if not np.isfinite(h).all():
        raise ValueError("pool scores must be finite")
    return np.quantile(h, np.linspace(0, 1, n_levels + 1)[1:-1])


def assign_levels(scores: Sequence[float], edges: np.ndarray, sparser: int) -> np.ndarray:
    """Level (1 = easiest .. len(edges) + 1 = hardest) of each score: the bin (lo, hi] of the
    edges its hardness falls in. Below every edge is level 1, above every edge the top level;
    nothing depends on the pool's extremes, so a score outside the pool's range still lands
    on the side it belongs to."""
    h = hardness(scores, sparser)
    if not np.isfinite(h).all():
        raise ValueError("scores must be finite")
    return 1 + np.searchsorted(np.asarray(edges), h, side="left")


def band(level: int, n_levels: int) -> str:
    """easy (levels 1..n//3), middle (..2n//3) or hard (the rest)."""
    if not 1 <= level <= n_levels:
        raise ValueError(f"level {level} is outside 1..{n_levels}")
    if level <= n_levels // 3:
        return "easy"
    if level <= (2 * n_levels) // 3:
        return "middle"
    return "hard"


def select_demos(
    level: int, n_levels: int, order: Sequence[int], pool_levels: Sequence[int]
) -> list[tuple[int, int]]:
    """Two demonstrations for a problem of ``level``: [(pool index, target level)], in prompt
    order. ``order`` lists pool indices from most to least similar to the problem.

    easy: the most similar at the same level, then the most similar one level harder;
    middle: the two most similar at the same level; hard: the most similar one level easier,
    then the most similar at the same level. A target level outside 1..n is clamped; a
    target with no unused candidate falls back to the nearest level that has one (the more
    similar on a tie), so a turn is never empty while the pool has two problems.
    """
    pool_levels = np.asarray(pool_levels)
    chosen: list[tuple[int, int]] = []
    used: set[int] = set()
    for offset in PLAN[band(level, n_levels)]:
        target = min(max(level + offset, 1), n_levels)
        best = None
        for rank, i in enumerate(order):
            if i in used:
                continue
            key = (abs(int(pool_levels[i]) - target), rank)
            if best is None or key < best[0]:
                best = (key, i)
            if key[0] == 0:
                break  # the first same-level candidate in similarity order is the best
        if best is None:
            break  # the pool is exhausted
        used.add(best[1])
        chosen.append((best[1], target))
    return chosen
