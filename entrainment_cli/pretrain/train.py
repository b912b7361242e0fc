"""Model construction, packed batches and the training loop of `entrain pretrain`.

Upstream (spec 2.5-2.6) ran the HF Trainer on pure-bf16 weights, one padded line per fact,
with the initialisation always seeded 42. Here: float32 master weights with bf16 autocast
(``--dtype``), the initialisation seeded by ``--seed``, facts packed into a few short
rows whose attention stays inside each fact (block-diagonal mask, positions restarting at 0
per fact, so the model computes exactly what it would on one padded line per fact), fused
AdamW, ``torch.compile`` on GPU, and the same schedule: linear warmup then cosine to 0.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import UserError

PACK = 4  # facts per packed row: attention cost grows with the square of the row width


@dataclass(frozen=True)
class LlamaSize:
    layers: int
    heads: int

    @property
    def hidden(self) -> int:
        return 64 * self.heads

    def n_params(self, vocab: int) -> int:
        """Upstream's count (spec 2.5): l (4 d^2 + 6 d^2 + 2 d) + d + 2 d v."""
        d = self.hidden
        return self.layers * (10 * d * d + 2 * d) + d + 2 * d * vocab


def parse_size(spec: str) -> LlamaSize:
    """``llama-L-H``: L layers, H heads of 64 dimensions (hidden 64 H)."""
    match = re.fullmatch(r"llama-(\d+)-(\d+)", spec.strip())
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise UserError(
            f"--llm-size '{spec}' is not of the form llama-LAYERS-HEADS with positive "
            "numbers, e.g. llama-16-16 (16 layers, 16 heads, hidden 1024)"
        )
    return LlamaSize(int(match[1]), int(match[2]))


def build_model(size: LlamaSize, tokenizer, seed: int):
    """A randomly initialised Llama (float32), its weights fixed by ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=2 * size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [rows, width]
    position_ids: torch.Tensor  # restart at 0 for every fact: the model's packing signal
    labels: torch.Tensor  # -100 on padding and on each fact's first token
    tokens: int  # real (non-padding) tokens


def pack(seqs: Sequence[Sequence[int]], max_len: int, pad_id: int) -> PackedBatch:
    """Facts laid end to end in rows of ``PACK * max_len`` tokens, none split across rows.

    The number of rows depends only on ``len(seqs)``, so shapes are static for
    ``torch.compile``: each row holds at least PACK facts of at most ``max_len`` tokens.
    """
    width = PACK * max_len
    rows = math.ceil(len(seqs) / PACK)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    pos = torch.zeros((rows, width), dtype=torch.long)
    labels = torch.full((rows, width), -100, dtype=torch.long)
    row = col = 0
    for seq in seqs:
        n = len(seq)
        if col + n > width:
            row, col = row + 1, 0
        ids[row, col : col + n] = torch.as_tensor(seq)
        pos[row, col : col + n] = torch.arange(n)
        labels[row, col + 1 : col + n] = ids[row, col + 1 : col + n]
        col += n
    return PackedBatch(ids, pos, labels, sum(len(s) for s in seqs))


def fact_batches(
    seqs: Sequence[Sequence[int]], batch_size: int, seed: int
) -> Iterator[list[Sequence[int]]]:
    """``batch_size`` facts per step, every fact once per epoch in a seeded order.

    Upstream drew facts with replacement from a buffer reseeded by each evaluation (spec 7.2
    item 4), so its data stream depended on ``--eval-every``; this one depends on the seed only.
    """
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = list(range(len(seqs)))
                rng.shuffle(order)
            batch.append(seqs[order.pop()])
        yield batch


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 (the HF Trainer's rule)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, steps - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_optimizer(model, lr: float) -> torch.optim.Optimizer:
    """AdamW as the Trainer's defaults (betas 0.9/0.999, eps 1e-8, no weight decay), fused."""
    kwargs = dict(lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    try:
        return torch.optim.AdamW(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device without the fused kernel
        return torch.optim.AdamW(model.parameters(), foreach=True, **kwargs)


def autocast_dtype(dtype: str, device: str) -> torch.dtype | None:
    """bfloat16 for autocast (weights stay float32), or None for plain float32 (``--dtype``).

    ``auto`` is bf16 on CUDA and on CPUs with native bf16 matrix products (AVX512-BF16 or
    AMX), where it is much faster than float32 (bench/README.md), float32 elsewhere.
    """
    if dtype == "float32":
        return None
    if dtype == "bfloat16" or device.startswith("cuda"):
        return torch.bfloat16
    if device == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def train(
    model,
    batches: Iterator[list[Sequence[int]]],
    *,
    steps: int,
    lr: float,
    warmup_ratio: float,
    max_len: int,
    pad_id: int,
    device: str,
    amp: torch.dtype | None,
    compile_model: bool,
    on_step: Callable[[int, float, float, int], None],
    evaluate_at: Callable[[int], None],
    log_every: int = 10,
    save_every: int = 0,
    save: Callable[[dict], None] | None = None,
    state: dict | None = None,
) -> None:
    """Run ``steps`` optimizer steps. ``on_step(step, loss, lr, tokens)`` gets every
    ``log_every``-th step's loss (one device sync per ``log_every`` steps); ``evaluate_at(step)``
    is called after every step (and once before the first, with 0) and decides itself.

    Every ``save_every`` steps (after that step's evaluation) ``save`` gets the training state
    (model, optimizer, schedule, RNG, step, the partial loss sum); ``state`` (such a dict)
    continues from it: the batches of the steps done are skipped, so the continued run sees
    the same data and computes the same numbers as one never stopped.
    """
    model.to(device)
    optimizer = make_optimizer(model, lr)
    warmup = math.ceil(warmup_ratio * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup))
    loss_sum = torch.zeros((), device=device)
    tokens, start = 0, 1
    if state is None:
        evaluate_at(0)
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        loss_sum += state["loss_sum"]
        tokens, start = state["tokens"], state["step"] + 1
        for _ in range(state["step"]):
            next(batches)
    model.train()
    forward = torch.compile(model) if compile_model else model
    for step in range(start, steps + 1):
        batch = pack(next(batches), max_len, pad_id)
        with torch.autocast(device.split(":")[0], dtype=amp, enabled=amp is not None):
            out = forward(
                input_ids=batch.input_ids.to(device, non_blocking=True),
                position_ids=batch.position_ids.to(device, non_blocking=True),
                labels=batch.labels.to(device, non_blocking=True),
                use_cache=False,
            )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        current_lr = schedule.get_last_lr()[0]
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += out.loss.detach()
        tokens += batch.tokens
        if step % log_every == 0 or step == steps:
            n = (step - 1) % log_every + 1
            on_step(step, float(loss_sum) / n, current_lr, tokens)
            loss_sum.zero_()
            tokens = 0
        evaluate_at(step)
        if save is not None and save_every and step % save_every == 0 and step < steps:
            save(
                {
                    "step": step,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all()
                    if torch.cuda.is_available()
                    else None,
                    "loss_sum": float(loss_sum),
                    "tokens": tokens,
                }
            )
    model.eval()
