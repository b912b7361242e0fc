"""Per-token uncertainty metrics of a next-token distribution (DESIGN.md, "Metric definitions").

``token_stats`` takes a chunk of N positions and returns one value per position. The nucleus
is chosen as upstream (spec 2.2: the smallest top-probability prefix whose mass reaches
``top_p``), but from float32 softmax and cumsum, because upstream's fp16 cumsum chose the
wrong set in a quarter of its steps. Every metric is float32 on the logits' device, whatever
the model dtype. There is no Python loop over positions: the work is done on the sorted
``[N, V]`` distribution with a mask of the ranks below K.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

MAX_ROWS = 2**14  # embedding rows gathered at once for STOPS: bounds memory at MAX_ROWS * d


def embedding_norms(embeddings: Tensor, *, max_rows: int = MAX_ROWS) -> Tensor:
    """L2 norm of each row in float32, in slices so a bf16 [V, d] matrix is never copied whole."""
    parts = [
        embeddings[s : s + max_rows].to(torch.float32).norm(dim=-1)
        for s in range(0, embeddings.shape[0], max_rows)
    ]
    return torch.cat(parts)


def _stops(
    ids: Tensor, rows: Tensor, k: Tensor, embeddings: Tensor, norms: Tensor, max_rows: int
) -> Tensor:
    """Mean pairwise cosine of the nucleus rows, (||sum e_i||^2 - K) / (K (K - 1)).

    O(K d) per position: the unit rows of each (position, id) pair are summed into an
    [N, d] accumulator, ``max_rows`` pairs at a time, so neither a K x K Gram matrix nor an
    [N, K_max, d] tensor is formed. NaN for K = 1 (no pair), and for a nucleus holding a
    zero embedding row (its cosine is undefined).
    """
    dev = k.device
    acc = torch.zeros(k.shape[0], embeddings.shape[1], dtype=torch.float32, device=dev)
    for s in range(0, ids.shape[0], max_rows):
        sl = ids[s : s + max_rows].to(embeddings.device)
        e = embeddings[sl].to(dev, torch.float32) / norms[sl].to(dev, torch.float32)[:, None]
        acc.index_add_(0, rows[s : s + max_rows], e)
    kf = k.to(torch.float32)
    out = (acc.square().sum(-1) - kf) / (kf * (kf - 1))
    return torch.where(k > 1, out, torch.nan)


def token_stats(
    logits: Tensor,
    sampled: Tensor,
    embeddings: Tensor,
    top_p: float,
    *,
    emb_norms: Tensor | None = None,
    max_rows: int = MAX_ROWS,
) -> dict[str, Tensor]:
    """Every per-token metric of ``logits`` [N, V] at temperature 1 -> {name: [N]}.

    ``sampled`` [N] holds the generated ids, ``embeddings`` [V, d] the model's *input*
    embedding matrix (STOPS, spec 3.3). Pass ``emb_norms`` (``embedding_norms(embeddings)``)
    when calling once per chunk, so the norms are not recomputed. ``max_rows`` bounds the
    embedding rows gathered at once.

    LogTokU (spec 3.5) uses the float32 nucleus logits, not upstream's fp16 ones; as upstream,
    AU and EU are NaN when every nucleus logit is <= -1 (alpha_0 = 0), which is not guarded.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    z = logits.to(torch.float32)
    p, logp = torch.softmax(z, -1), torch.log_softmax(z, -1)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    logprob = logp.gather(1, sampled.to(z.device, torch.long)[:, None]).squeeze(1)

    # Softmax is monotone, so sorting the logits sorts the probabilities too.
    z_s, idx = z.sort(dim=-1, descending=True)
    p_s = p.gather(1, idx)
    cum = p_s.cumsum(-1)
    before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], dim=-1)
    # Rank i is in the nucleus iff the mass ranked before it is < top_p (compared in float32).
    mask = before < top_p
    k = mask.sum(-1)
    kf = k.to(torch.float32)

    p_n = torch.where(mask, p_s, 0.0)
    q = p_n / p_n.sum(-1, keepdim=True)
    topp_entropy = -torch.special.xlogy(q, q).sum(-1)  # q = p/p = 1 exactly when K = 1
    plogp = -torch.special.xlogy(p_n, p_n).sum(-1)
    topp_entropy_norm = torch.where(k > 1, plogp / kf.log(), 0.0)

    rows, ranks = mask.nonzero(as_tuple=True)
    norms = embedding_norms(embeddings, max_rows=max_rows) if emb_norms is None else emb_norms
    stops = _stops(idx[rows, ranks], rows, k, embeddings, norms, max_rows)

    alpha = torch.where(mask, torch.relu(z_s + 1), 0.0)
    alpha0 = alpha.sum(-1)
    dg = torch.special.digamma(alpha + 1) - torch.special.digamma(alpha0 + 1)[:, None]
    au = -torch.where(mask, alpha / alpha0[:, None] * dg, 0.0).sum(-1)
    eu = kf / (alpha0 + kf)

    return {
        "entropy": entropy,
        "logprob": logprob,
        "nucleus_size": k.to(torch.int64),
        "topp_entropy": topp_entropy,
        "topp_entropy_norm": topp_entropy_norm,
        "stops": stops,
        "logtoku_au": au,
        "logtoku_eu": eu,
    }
