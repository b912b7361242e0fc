"""Each metric against an independent NumPy computation, and the Gaussian baselines."""

import math

import numpy as np
import pytest
import torch

from entrainment_cli.science import sparsity


def _entropy(p):
    p = p[p > 0]
    return -(p * np.log(p)).sum()


def reference(name: str, h: np.ndarray) -> float:
    h = h.astype(np.float64)
    a = np.abs(h)
    d = h.size
    srt = np.sort(a)[::-1]
    if name == "l1":
        return a.sum()
    if name == "l1_rel":
        return a.sum() / (math.sqrt(d) * np.sqrt((h**2).sum()))
    if name == "l0_outlier":
        return float(np.mean(a > a.mean() + a.std(ddof=1)))
    if name.endswith("_energy") or name.endswith("_l1share"):
        pct = int(name[3:].split("_")[0])
        k = max(1, int(np.floor(pct / 100 * d)))
        if name.endswith("_energy"):
            return (srt[:k] ** 2).sum() / (a**2).sum()
        return srt[:k].sum() / a.sum()
    if name == "eff_rank":
        return math.exp(_entropy(h**2 / (h**2).sum())) / d
    if name == "eff_rank_l1":
        return math.exp(_entropy(a / a.sum())) / d
    if name == "hoyer":
        return (math.sqrt(d) - a.sum() / np.sqrt((h**2).sum())) / (math.sqrt(d) - 1)
    if name == "gini":
        x = np.sort(a)
        i = np.arange(1, d + 1)
        return 2 * (i * x).sum() / (d * x.sum()) - (d + 1) / d
    if name == "participation_ratio":
        return (h**2).sum() ** 2 / (h**4).sum() / d
    raise KeyError(name)


@pytest.mark.parametrize("name", list(sparsity.METRICS))
def test_metric_matches_numpy_over_batch_dims(name):
    rng = np.random.default_rng(1)
    h = rng.standard_t(df=3, size=(3, 4, 257)).astype(np.float32)
    h[0, 0, :10] = 0.0  # exact zeros exercise 0 ln 0
    got = sparsity.METRICS[name](torch.from_numpy(h))
    assert got.shape == (3, 4) and got.dtype == torch.float32
    want = np.array([[reference(name, h[i, j]) for j in range(4)] for i in range(3)])
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=1e-6)


def test_gaussian_baselines():
    """Spec 1.5: the values an i.i.d. N(0, 1) vector gives."""
    h = torch.randn(64, 4096, generator=torch.Generator().manual_seed(0))
    m = {k: v.mean().item() for k, v in sparsity.compute_metrics(h).items()}
    expected = {
        "top5_energy": 0.278,
        "top10_energy": 0.438,
        "eff_rank": 0.482,
        "hoyer": 0.207,
        "eff_rank_l1": 0.753,
        "top10_l1share": 0.258,
        "l0_outlier": 0.161,
    }
    for name, value in expected.items():
        assert m[name] == pytest.approx(value, abs=0.004), name
    assert m["l1"] / 4096 == pytest.approx(math.sqrt(2 / math.pi), rel=0.005)
    assert m["participation_ratio"] == pytest.approx(1 / 3, abs=0.01)  # E[x^2]^2 / E[x^4]


def test_half_precision_input_is_computed_in_float32():
    h = torch.randn(2, 1024, generator=torch.Generator().manual_seed(0)) * 300
    for dtype in (torch.float16, torch.bfloat16):
        low = h.to(dtype)
        got = sparsity.compute_metrics(low)
        want = sparsity.compute_metrics(low.to(torch.float32))
        for name in got:
            assert got[name].dtype == torch.float32
            torch.testing.assert_close(got[name], want[name])
        # sum h^2 ~ 1e8 would overflow fp16 arithmetic; here it stays finite
        assert torch.isfinite(got["top10_energy"]).all()


def test_nonfinite_inputs_stay_nonfinite():
    h = torch.randn(3, 64)
    h[1, 5] = float("nan")
    h[2, 7] = float("inf")
    for name, values in sparsity.compute_metrics(h).items():
        assert torch.isfinite(values[0]), name
        assert not torch.isfinite(values[1]), name
        if name not in {"l1"}:  # l1 of an inf vector is inf; ratios become NaN
            assert not torch.isfinite(values[2]), name


def test_names_and_aliases():
    assert sparsity.resolve_metric_names(["l0_norm", "l1", "l1"]) == ["l0_outlier", "l1"]
    assert sparsity.resolve_metric_names(None) == list(sparsity.METRICS)
    with pytest.raises(KeyError):
        sparsity.resolve_metric_names(["l2"])
    assert set(sparsity.SPARSER) == set(sparsity.METRICS)
