"""The probe pass: hidden states at chosen layers and positions, captured by forward hooks.

Why hooks: ``output_hidden_states=True`` keeps all L+1 layers x T x d alive and the LM head
adds T x vocabulary logits, when a study needs one vector per prompt from one or two layers.
Here the decoder alone runs (no LM head), each hook reduces its layer to the requested
positions at once, and the forward stops after the last layer anyone asked for.

Layer numbering (DESIGN.md): ``-1`` is the final hidden state after the model's last norm;
``0`` the embedding output (input of block 0); ``i`` in 1..L the residual stream after block i.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..science.sparsity import compute_metrics

POSITIONS = ("last-prompt", "mean-prompt")  # per prompt; "generated" is per token


def decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module]:
    """(decoder without LM head, its blocks, its final norm) for HF decoder-only models."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    blocks = next(
        (getattr(decoder, n) for n in ("layers", "h", "blocks") if hasattr(decoder, n)), None
    )
    norm = next(
        (getattr(decoder, n) for n in ("norm", "final_layernorm", "ln_f") if hasattr(decoder, n)),
        None,
    )
    if blocks is None or norm is None:
        raise UserError(
            f"cannot find the blocks and final norm of {type(model).__name__}; "
            "entrain supports Llama/Qwen/Mistral-style decoder-only models"
        )
    return decoder, blocks, norm


def parse_layers(spec: str, n_blocks: int) -> list[int]:
    """'-1', '0,10,-1', '4-8' or 'all' (every residual layer 0..L and -1) -> layer indices."""
    if spec.strip() == "all":
        return [*range(n_blocks + 1), -1]
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        try:
            span = re.fullmatch(r"(\d+)-(\d+)", part)
            values = range(int(span[1]), int(span[2]) + 1) if span else [int(part)]
            if re.fullmatch(r"-\s*0+", part):  # int('-0') is 0: not what -0 seems to say
                raise UserError(
                    f"--layers: '{part}' is not a layer; use 0 (the embeddings) or -1 (after "
                    "the final norm)"
                )
        except ValueError:
            raise UserError(
                f"--layers: cannot read '{part}'; use -1, a list like 0,10,-1, a range like "
                "4-8, or all"
            ) from None
        for layer in values:
            if not -1 <= layer <= n_blocks:
                raise UserError(
                    f"--layers: layer {layer} is out of range; this model has {n_blocks} "
                    f"blocks, so use -1 (after the final norm) or 0..{n_blocks}"
                )
            if layer not in out:
                out.append(layer)
    if not out:
        raise UserError("--layers is empty; use -1, a list like 0,10,-1, or all")
    return out


class _Done(Exception):
    """Raised from the last hook: nothing after it is needed."""


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended token of each row, for left or right padding."""
    return mask.shape[1] - 1 - mask.flip(-1).to(torch.int64).argmax(-1)


def _reduce(
    hidden: torch.Tensor, mask: torch.Tensor, position: str, gather: torch.Tensor | None
) -> torch.Tensor:
    mask = mask.to(hidden.device)
    if position == "generated":  # [B, S] indices of the positions that produced a token
        rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1)
        return hidden[rows, gather.to(hidden.device)].to(torch.float32)
    if position == "last-prompt":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, _last_index(mask)].to(torch.float32)
    if position == "mean-prompt":
        w = mask.to(torch.float32).unsqueeze(-1)
        return (hidden.to(torch.float32) * w).sum(1) / w.sum(1)
    raise ValueError(position)


class HiddenProbe:
    """Captures [batch, d] float32 vectors at (layer, position) pairs during one forward."""

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int],
        positions: Sequence[str],
        logit_ids: Sequence[int] | None = None,
    ):
        """With ``logit_ids``, the same pass also leaves in ``self.logits`` the [B, len(ids)]
        float32 next-token logits at each row's last token over those vocabulary ids: the LM
        head applied to that one final-norm vector, never to the whole sequence."""
        self.model = model
        self.decoder, self.blocks, self.norm = decoder_parts(model)
        self.layers = list(layers)
        self.positions = list(positions)
        self.logit_ids = None if logit_ids is None else torch.as_tensor(list(logit_ids))
        self.logits: torch.Tensor | None = None
        hooked = [*self.layers, *([-1] if logit_ids is not None else [])]
        # Forward order: layer 0 < 1 < ... < L < -1 (the norm runs last).
        self._order = sorted(
            dict.fromkeys(hooked), key=lambda i: len(self.blocks) + 1 if i == -1 else i
        )

    def _store(self, layer: int, hidden: torch.Tensor) -> None:
        if layer in self.layers:
            for p in self.positions:
                self._out[(layer, p)] = _reduce(hidden, self._mask, p, self._gather)
        if layer == -1 and self.logit_ids is not None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            last = hidden[rows, _last_index(self._mask.to(hidden.device))]
            head = self.model.get_output_embeddings()(last)
            self.logits = head[:, self.logit_ids.to(head.device)].to(torch.float32)
        if layer == self._order[-1]:
            raise _Done

    def _hooks(self) -> list[torch.utils.hooks.RemovableHandle]:
        handles = []

        def first(layer):
            def hook(_module, args, kwargs):
                self._store(layer, args[0] if args else kwargs["hidden_states"])

            return hook

        def after(layer):
            def hook(_module, _args, output):
                self._store(layer, output[0] if isinstance(output, tuple) else output)

            return hook

        for layer in self._order:
            if layer == 0:
                h = self.blocks[0].register_forward_pre_hook(first(0), with_kwargs=True)
            elif layer == -1:
                h = self.norm.register_forward_hook(after(-1))
            else:
                h = self.blocks[layer - 1].register_forward_hook(after(layer))
            handles.append(h)
        return handles

    @torch.inference_mode()
    def capture(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        gather: torch.Tensor | None = None,
    ) -> dict[tuple[int, str], torch.Tensor]:
        """[B, d] float32 per (layer, position); [B, S, d] for 'generated' (needs ``gather``)."""
        self._out: dict[tuple[int, str], torch.Tensor] = {}
        self._mask = attention_mask
        self._gather = gather
        handles = self._hooks()
        try:
            self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Done:
            pass
        finally:
            for h in handles:
                h.remove()
        return self._out

    def measure(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, metrics: Iterable[str]
    ) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
        """Sparsity metrics of every captured vector, computed where the vectors are; the
        vectors stay in ``self.vectors`` until the next pass (for ``--save-hidden``)."""
        names = list(metrics)
        self.vectors = self.capture(input_ids, attention_mask)
        return {key: compute_metrics(vectors, names) for key, vectors in self.vectors.items()}


@dataclass
class Batch:
    indices: list[int]  # positions in the caller's list
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def batches(
    token_lists: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    device: str | torch.device,
    padding_side: str = "left",
) -> Iterator[Batch]:
    """Padded batches of similar length (longest first, so memory peaks at the start)."""
    order = sorted(range(len(token_lists)), key=lambda i: -len(token_lists[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(token_lists[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            toks = torch.as_tensor(token_lists[i], dtype=torch.long)
            sl = slice(width - len(toks), width) if padding_side == "left" else slice(0, len(toks))
            ids[row, sl] = toks
            mask[row, sl] = 1
        yield Batch(idx, ids.to(device), mask.to(device))
