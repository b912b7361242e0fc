"""The probe pass for generated tokens: one teacher-forced forward over prompt + generation.

Why not keep the engine's distributions: vLLM returns only the sampled token's log-prob,
and the upstream loop re-ran the whole sequence per token. One batched forward per prompt
gives every position's distribution at once; the LM head is applied in float32 to chunks of
at most ``chunk`` positions, so no [tokens x vocabulary] tensor outlives its chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..science.sparsity import compute_metrics
from ..science.uncertainty import embedding_norms, token_stats
from .probe import HiddenProbe


class TokenProbe:
    def __init__(
        self,
        model: nn.Module,
        top_p: float,
        hidden_layers: Sequence[int] = (),
        hidden_metrics: Sequence[str] = (),
        chunk: int = 256,
    ):
        self.top_p = top_p
        self.chunk = chunk
        self.hidden_layers = list(hidden_layers)
        self.hidden_metrics = list(hidden_metrics)
        self.probe = HiddenProbe(model, [*dict.fromkeys([-1, *self.hidden_layers])], ["generated"])
        head = model.get_output_embeddings()
        self.head_weight = head.weight.detach().to(torch.float32)  # one float32 copy
        bias = getattr(head, "bias", None)
        self.head_bias = None if bias is None else bias.detach().to(torch.float32)
        self.embeddings = model.get_input_embeddings().weight.detach()
        self.emb_norms = embedding_norms(self.embeddings)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        h = h.to(self.head_weight.device)
        return nn.functional.linear(h, self.head_weight, self.head_bias)

    @torch.inference_mode()
    def measure(
        self,
        prompts: Sequence[Sequence[int]],
        generations: Sequence[Sequence[int]],
        pad_id: int,
        device: str | torch.device,
    ) -> dict[str, torch.Tensor]:
        """Per generated token of every (prompt, generation) pair, flattened in input order.

        Returns 1-D CPU tensors: ``example`` (index into the inputs), ``step``, ``token_id``,
        the uncertainty quantities of :func:`token_stats`, and ``h{layer}_{metric}`` for the
        hidden-state metrics asked for.
        """
        lengths = [len(g) for g in generations]
        rows = [i for i, n in enumerate(lengths) if n > 0]
        if not rows:
            return {}
        seqs = [list(prompts[i]) + list(generations[i]) for i in rows]
        width = max(len(s) for s in seqs)
        steps = max(lengths[i] for i in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        gather = torch.zeros((len(rows), steps), dtype=torch.long)
        valid = torch.zeros((len(rows), steps), dtype=torch.bool)
        for r, (i, seq) in enumerate(zip(rows, seqs, strict=True)):
            offset = width - len(seq)  # left padding
            ids[r, offset:] = torch.as_tensor(seq)
            mask[r, offset:] = 1
            n = lengths[i]
            # the token at prompt position P + s is predicted from position P + s - 1
            gather[r, :n] = offset + len(prompts[i]) - 1 + torch.arange(n)
            valid[r, :n] = True
        captured = self.probe.capture(ids.to(device), mask.to(device), gather)
        flat_valid = valid.reshape(-1)
        sampled = torch.cat([torch.as_tensor(generations[i], dtype=torch.long) for i in rows])
        final = captured[(-1, "generated")].reshape(-1, captured[(-1, "generated")].shape[-1])
        final = final[flat_valid.to(final.device)]
        pieces: dict[str, list[torch.Tensor]] = {}
        for lo, hi in _spans(final.shape[0], self.chunk):
            stats = token_stats(
                self._logits(final[lo:hi]),
                sampled[lo:hi].to(self.head_weight.device),
                self.embeddings,
                self.top_p,
                emb_norms=self.emb_norms,
            )
            for key, value in stats.items():
                pieces.setdefault(key, []).append(value.cpu())
        out = {key: torch.cat(values) for key, values in pieces.items()}
        for layer in self.hidden_layers:
            vectors = captured[(layer, "generated")]
            vectors = vectors.reshape(-1, vectors.shape[-1])[flat_valid.to(vectors.device)]
            for name, value in compute_metrics(vectors, self.hidden_metrics).items():
                out[f"h{layer}_{name}"] = value.cpu()
        out["example"] = torch.cat([torch.full((lengths[i],), i) for i in rows])
        out["step"] = torch.cat([torch.arange(lengths[i]) for i in rows])
        out["token_id"] = sampled
        return out


def _spans(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)
