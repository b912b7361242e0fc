"""What the benchmarks share: where results go, model shapes for speed-only runs, timing."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import torch

# Where every benchmark writes its results; bench/gpu.sh points it elsewhere.
RESULTS = Path(os.environ.get("ENTRAIN_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))

# Shapes of real models, for speed-only runs with random weights.
RANDOM_CONFIGS = {
    "llama-1b": dict(  # Llama-3.2-1B
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    ),
    "llama-8b": dict(  # Llama-3.1-8B
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        tie_word_embeddings=False,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    ),
    "tiny": dict(  # for testing this code path on the CPU
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=49152,
        tie_word_embeddings=False,
        max_position_embeddings=8192,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
    ),
}


def sync(device: str) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str):
    """(seconds, every pass's seconds, output) of the fastest of ``repeats`` passes: the one
    least disturbed by other work on the machine."""
    best, times = None, []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
        if best is None or times[-1] < best[0]:
            best = (times[-1], out)
    return best[0], times, best[1]
