"""Per-token uncertainty metrics against a plain float64 NumPy computation, plus edge cases."""

import math

import numpy as np
import pytest
import torch
from scipy.special import digamma

from entrainment_cli.science.uncertainty import embedding_norms, token_stats

N, V, D = 7, 300, 16
FLOAT_KEYS = [
    "entropy",
    "logprob",
    "topp_entropy",
    "topp_entropy_norm",
    "stops",
    "logtoku_au",
    "logtoku_eu",
]


def reference(logits: np.ndarray, sampled: np.ndarray, emb: np.ndarray, top_p: float) -> dict:
    """One position at a time, float64, explicit K x K Gram matrix for STOPS."""
    out = {key: [] for key in [*FLOAT_KEYS, "nucleus_size"]}
    for z, tok in zip(logits.astype(np.float64), sampled, strict=True):
        lse = z.max() + np.log(np.exp(z - z.max()).sum())
        p = np.exp(z - lse)
        out["entropy"].append(-sum(pi * math.log(pi) for pi in p if pi > 0))
        out["logprob"].append(z[tok] - lse)

        order = np.argsort(-p, kind="stable")
        k, mass = 1, p[order[0]]
        while mass < top_p and k < len(p):
            mass += p[order[k]]
            k += 1
        pn, ids = p[order[:k]], order[:k]
        out["nucleus_size"].append(k)

        q = pn / pn.sum()
        out["topp_entropy"].append(-(q * np.log(q)).sum())
        out["topp_entropy_norm"].append(-(pn * np.log(pn)).sum() / math.log(k) if k > 1 else 0.0)

        e = emb[ids].astype(np.float64)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        gram = e @ e.T
        out["stops"].append(gram[np.triu_indices(k, 1)].mean() if k > 1 else math.nan)

        alpha = np.maximum(z[ids] + 1, 0)
        a0 = alpha.sum()
        out["logtoku_au"].append(-(alpha / a0 * (digamma(alpha + 1) - digamma(a0 + 1))).sum())
        out["logtoku_eu"].append(k / (a0 + k))
    return {key: np.array(val) for key, val in out.items()}


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # Rows of different sharpness, so K ranges from a few tokens to most of the vocabulary.
    scale = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 1.5, 2.5])[:, None]
    logits = torch.randn(N, V, generator=g) * scale
    sampled = torch.randint(0, V, (N,), generator=g)
    emb = torch.randn(V, D, generator=g) + 0.3  # shared offset: cosines are not all near 0
    return logits, sampled, emb


def _check(got: dict, ref: dict) -> None:
    assert got["nucleus_size"].dtype == torch.int64
    np.testing.assert_array_equal(got["nucleus_size"].numpy(), ref["nucleus_size"])
    for key in FLOAT_KEYS:
        assert got[key].dtype == torch.float32, key
        assert got[key].shape == (len(ref[key]),), key
        np.testing.assert_allclose(
            got[key].numpy(), ref[key], rtol=2e-5, atol=2e-5, equal_nan=True, err_msg=key
        )


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95, 1.0])
def test_matches_reference(top_p):
    logits, sampled, emb = _inputs()
    got = token_stats(logits, sampled, emb, top_p)
    ref = reference(logits.numpy(), sampled.numpy(), emb.numpy(), top_p)
    _check(got, ref)
    if top_p < 1:
        assert len(set(ref["nucleus_size"])) > 3  # the test exercises several nucleus sizes
    else:
        assert (ref["nucleus_size"] == V).all()


def test_peaked_distribution_gives_singleton_nucleus():
    logits, sampled, emb = _inputs(1)
    logits[2] = 0.0
    logits[2, 17] = 40.0
    got = token_stats(logits, sampled, emb, 0.9)
    assert got["nucleus_size"][2] == 1
    assert math.isnan(got["stops"][2])
    assert got["topp_entropy"][2] == 0.0 and got["topp_entropy_norm"][2] == 0.0
    assert got["logtoku_au"][2] == 0.0
    assert got["logtoku_eu"][2] == pytest.approx(1 / 42)
    _check(got, reference(logits.numpy(), sampled.numpy(), emb.numpy(), 0.9))


@pytest.mark.parametrize(
    ("probs", "top_p", "k"),
    [
        ([0.5, 0.25, 0.125, 0.125], 0.5, 1),  # mass 0.5 reached by the first token alone
        ([0.5, 0.25, 0.125, 0.125], 0.75, 2),
        ([0.5, 0.25, 0.125, 0.125], 0.875, 3),
        ([0.5, 0.25, 0.125, 0.125], 0.8751, 4),
        ([0.5, 0.25, 0.15, 0.1], 0.9, 3),  # cumsum is float32(0.9) at rank 3
        ([0.5, 0.25, 0.15, 0.1], 0.8999, 3),
        ([0.5, 0.25, 0.15, 0.1], 0.9001, 4),
    ],
)
def test_nucleus_boundary(probs, top_p, k):
    logits = torch.tensor([[math.log(x) for x in probs]])
    if probs[2] == 0.125:  # dyadic: the float32 softmax is exact, so the boundary is exact
        assert torch.softmax(logits, -1).tolist() == [probs]
    got = token_stats(logits, torch.tensor([0]), torch.randn(4, 3), top_p)
    assert got["nucleus_size"].item() == k


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_give_float32_outputs(dtype):
    logits, sampled, emb = _inputs(2)
    logits, emb = logits.to(dtype), emb.to(dtype)
    got = token_stats(logits, sampled, emb, 0.9)
    want = token_stats(logits.float(), sampled, emb.float(), 0.9)
    for key, val in got.items():
        assert val.dtype == want[key].dtype
        torch.testing.assert_close(val, want[key], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("max_rows", [1, 3, 7, 64])
def test_stops_slicing_does_not_change_the_result(max_rows):
    logits, sampled, emb = _inputs(3)
    full = token_stats(logits, sampled, emb, 0.95)
    norms = embedding_norms(emb, max_rows=max_rows)
    torch.testing.assert_close(norms, emb.norm(dim=-1))
    sliced = token_stats(logits, sampled, emb, 0.95, emb_norms=norms, max_rows=max_rows)
    assert full["nucleus_size"].sum() > 64  # several slices even at the largest max_rows
    torch.testing.assert_close(sliced["stops"], full["stops"], equal_nan=True)


def test_all_logits_below_minus_one_give_nan_au():
    logits = torch.full((1, 10), -5.0)
    got = token_stats(logits, torch.tensor([0]), torch.randn(10, 4), 0.9)
    assert got["nucleus_size"].item() == 9
    assert math.isnan(got["logtoku_au"].item())
    assert got["logtoku_eu"].item() == 1.0


def test_rejects_top_p_out_of_range():
    logits, sampled, emb = _inputs()
    for top_p in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            token_stats(logits, sampled, emb, top_p)
