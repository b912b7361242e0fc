"""Sparsity levels and curriculum demonstration choice (science/curriculum.py)."""

import numpy as np
import pytest

from entrainment_cli.science import curriculum as cur

POOL = np.arange(1.0, 11.0)  # 10 distinct scores, 2 per level at 5 levels


def levels_of(scores, pool, n_levels, sparser):
    return cur.assign_levels(scores, cur.level_edges(pool, n_levels, sparser), sparser).tolist()


def by_rank(pool, n_levels, sparser):
    """Independent: equal-count levels by rank of hardness (distinct scores, n | N)."""
    order = np.argsort(sparser * np.asarray(pool))
    per = len(pool) // n_levels
    out = np.empty(len(pool), dtype=int)
    out[order] = np.arange(len(pool)) // per + 1
    return out.tolist()


@pytest.mark.parametrize("sparser", [1, -1])
def test_pool_levels_are_equal_count_quantile_bins(sparser):
    assert levels_of(POOL, POOL, 5, sparser) == by_rank(POOL, 5, sparser)
    rng = np.random.default_rng(0)
    pool = rng.normal(size=100)
    levels = levels_of(pool, pool, 5, sparser)
    assert levels == by_rank(pool, 5, sparser)
    assert np.bincount(levels).tolist() == [0, 20, 20, 20, 20, 20]


def test_higher_is_sparser_below_inside_above():
    # top*-like metric: higher = sparser = harder
    assert levels_of([-100.0], POOL, 5, +1) == [1]  # below the pool: easiest
    assert levels_of([1000.0], POOL, 5, +1) == [5]  # above the pool: hardest
    assert levels_of([1.0, 2.0, 5.0, 6.0, 10.0], POOL, 5, +1) == [1, 1, 3, 3, 5]
    assert levels_of([1.5, 9.5], POOL, 5, +1) == [1, 5]


def test_lower_is_sparser_below_inside_above():
    # l0_outlier-like metric: lower = sparser = harder. Upstream sent a score below the whole
    # pool (the sparsest, hardest) to level 1 and one above it to level n: the reverse.
    assert levels_of([-100.0], POOL, 5, -1) == [5]
    assert levels_of([1000.0], POOL, 5, -1) == [1]
    assert levels_of([1.0, 2.0, 5.0, 6.0, 10.0], POOL, 5, -1) == [5, 5, 3, 3, 1]
    assert levels_of([1.5, 9.5], POOL, 5, -1) == [5, 1]


def test_lower_is_sparser_gaps_between_level_ranges():
    pool = np.array([1, 2, 11, 12, 21, 22, 31, 32, 41, 42], dtype=float)
    assert levels_of(pool, pool, 5, -1) == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    # upstream mapped every gap score of a descending metric to level 1
    assert levels_of([26.0], pool, 5, -1)[0] in (2, 3)
    assert levels_of([6.0], pool, 5, -1)[0] in (4, 5)
    assert levels_of([36.0], pool, 5, -1)[0] in (1, 2)


@pytest.mark.parametrize("sparser", [1, -1])
def test_levels_are_monotone_in_hardness(sparser):
    rng = np.random.default_rng(1)
    pool = rng.normal(size=37)
    x = np.sort(rng.normal(scale=2, size=200))
    levels = np.asarray(levels_of(x, pool, 7, sparser))
    steps = np.diff(levels if sparser > 0 else levels[::-1])
    assert (steps >= 0).all() and levels.min() == 1 and levels.max() == 7


def test_level_errors():
    with pytest.raises(ValueError, match="cannot fill"):
        cur.level_edges([1.0, 2.0], 3, 1)
    with pytest.raises(ValueError, match="finite"):
        cur.level_edges([1.0, np.nan, 2.0], 3, 1)
    with pytest.raises(ValueError, match="finite"):
        cur.assign_levels([np.inf], np.array([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="sparser"):
        cur.hardness([1.0], 0)


@pytest.mark.parametrize(
    "n, expected",
    [
        (3, ["easy", "middle", "hard"]),
        (5, ["easy", "middle", "middle", "hard", "hard"]),
        (7, ["easy", "easy", "middle", "middle", "hard", "hard", "hard"]),
    ],
)
def test_bands_every_band_reachable(n, expected):
    assert [cur.band(level, n) for level in range(1, n + 1)] == expected
    assert set(expected) == set(cur.BANDS)


def test_band_rejects_out_of_range():
    with pytest.raises(ValueError):
        cur.band(0, 5)
    with pytest.raises(ValueError):
        cur.band(6, 5)


# pool index:     0  1  2  3  4  5  6  7  8  9
LEVELS = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, 5])
ORDER = [9, 3, 6, 0, 8, 1, 5, 2, 7, 4]  # most similar first


def test_easy_same_then_harder():
    assert cur.select_demos(1, 5, ORDER, LEVELS) == [(0, 1), (6, 2)]


def test_middle_two_same_level():
    assert cur.select_demos(3, 5, ORDER, LEVELS) == [(2, 3), (7, 3)]
    assert cur.select_demos(2, 5, ORDER, LEVELS) == [(6, 2), (1, 2)]


def test_hard_easier_then_same():
    assert cur.select_demos(5, 5, ORDER, LEVELS) == [(3, 4), (9, 5)]
    assert cur.select_demos(4, 5, ORDER, LEVELS) == [(2, 3), (3, 4)]


def test_fallback_to_nearest_level_never_empty():
    levels = np.array([5, 5, 3, 1])
    order = [2, 3, 1, 0]
    # hard: no level 4, so levels 3 and 5 tie on distance; the more similar (index 2) wins
    assert cur.select_demos(5, 5, order, levels) == [(2, 4), (1, 5)]
    # middle at level 3 with one level-3 problem: the second is the nearest level left
    # (levels 1 and 5 tie on distance 2: the most similar, index 3)
    assert cur.select_demos(3, 5, order, levels) == [(2, 3), (3, 3)]
    # easy at level 1 with nothing at level 2: nearest is level 3
    assert cur.select_demos(1, 5, order, levels) == [(3, 1), (2, 2)]
    assert cur.select_demos(1, 5, [1], np.array([4, 4])) == [(1, 1)]  # pool exhausted


@pytest.mark.parametrize("n", [3, 5, 7])
def test_every_level_gets_two_distinct_demos(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        size = int(rng.integers(2, 12))
        levels = rng.integers(1, n + 1, size=size)
        order = rng.permutation(size).tolist()
        for level in range(1, n + 1):
            picks = cur.select_demos(level, n, order, levels)
            assert len(picks) == 2 and picks[0][0] != picks[1][0]
            targets = [t for _, t in picks]
            offsets = cur.PLAN[cur.band(level, n)]
            assert targets == [level + o for o in offsets]
            for i, target in picks:  # nothing unused was nearer the target level
                others = [j for j in range(size) if j not in (p for p, _ in picks)]
                assert all(abs(levels[j] - target) >= abs(levels[i] - target) for j in others)
