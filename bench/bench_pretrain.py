"""Training throughput of `entrain pretrain` against the upstream HF-Trainer setup.

Both ways train the same Llama size from the same seeded initialisation on the same
knowledge-graph facts, batch 32 facts per step, lr 1e-4, 20% warmup and cosine decay:

- upstream: a faithful re-implementation of pretrain/pretrain.py (spec 2.4-2.6). The model is
  created in bfloat16 where the device supports it and trained without autocast
  (``bf16=False``), by ``transformers.Trainer`` with its defaults (AdamW, clipping 1.0),
  logging every step, from an iterable dataset that draws random training facts, one line
  per fact (``Q<h> P<r> Q<t>`` + EOS), padded right by the collator to the longest line;
- ours: ``pretrain.train.train``: float32 weights, bf16 autocast where ``--dtype auto``
  puts it (GPU, CPUs with native bf16), facts packed into
  short rows with attention kept inside each fact, fused AdamW, ``torch.compile`` on GPU.

Throughput is real (non-padding) training tokens per second over the timed steps, after
``--warmup-steps`` untimed ones (compilation, allocator warm-up), overall and in the fastest
50-step chunk (the one least disturbed by other jobs on a shared machine). On CUDA it also prints
the model FLOPs utilisation: 6 x parameters x tokens/s over ``--peak-tflops``.

    python bench/bench_pretrain.py                                  # CPU: llama-2-4, 1 thread
    python bench/bench_pretrain.py --llm-size llama-16-16 --device cuda --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch
from common import RESULTS, sync  # bench/ is on sys.path

from entrainment_cli.engines.models import pick_device
from entrainment_cli.pretrain import train
from entrainment_cli.pretrain.evaluate import encode
from entrainment_cli.pretrain.tokenizer import build_tokenizer
from entrainment_cli.science import kg

# The demo's graph: generated in a fraction of a second, with facts of the usual lengths.
GRAPH = kg.KGParams(
    n_entities=1000, n_relations=20, n_rules=10, n_deductible=8, n_atomic=2000, n_derived=2000
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llm-size", default=None, help="default: llama-2-4 on CPU, else 16-16")
    p.add_argument("--steps", type=int, default=None, help="timed steps (CPU 150, GPU 300)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed (CPU 10, GPU 30)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (0: torch's default). 1 by default: on a shared 2-core "
        "machine two threads made both ways 7 to 30x slower and the ratio unstable",
    )
    p.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    return p.parse_args()


def bf16_supported(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


CHUNK = 50  # timed steps per chunk; the fastest chunk is the least disturbed by other jobs


def timed_steps(args) -> set[int]:
    return set(range(args.warmup_steps, args.warmup_steps + args.steps + 1, CHUNK))


def speeds(marks: dict[int, float], step_tokens: list[int], args) -> dict:
    """Overall and fastest-chunk tokens/s; ``step_tokens[k]`` is step k+1's token count."""
    steps = sorted(marks)
    chunks = [
        sum(step_tokens[a:b]) / (marks[b] - marks[a])
        for a, b in zip(steps, steps[1:], strict=False)
    ]
    first, last = steps[0], steps[-1]
    return {
        "seconds": marks[last] - marks[first],
        "tokens": sum(step_tokens[first:last]),
        "tokens_per_s": sum(step_tokens[first:last]) / (marks[last] - marks[first]),
        "best_chunk_tokens_per_s": max(chunks),
    }


def run_upstream(size, tokenizer, seqs, args, device: str) -> dict:
    """HF Trainer on pure bf16 weights, one padded line per fact (upstream's setup)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    dtype = torch.bfloat16 if bf16_supported(device) else torch.float32
    model = train.build_model(size, tokenizer, seed=0).to(dtype)
    rng = random.Random(0)
    batch_tokens: list[int] = []

    class Facts(torch.utils.data.IterableDataset):
        def __iter__(self):
            while True:  # uniform draws with replacement, as upstream's TrainDataset
                ids = seqs[rng.randrange(len(seqs))]
                yield {"input_ids": ids, "labels": ids}

    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask = (ids != tokenizer.pad_token_id).long()
        batch_tokens.append(int(mask.sum()))
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": ids.masked_fill(mask == 0, -100),
        }

    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, _control, **_kw):
            if state.global_step in timed_steps(args):
                sync(device)
                marks[state.global_step] = time.perf_counter()

    total = args.warmup_steps + args.steps
    targs = TrainingArguments(
        output_dir=str(RESULTS / "trainer-tmp"),
        per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4,
        warmup_steps=0.2,  # a float below 1 is a ratio (transformers 5's warmup_ratio)
        lr_scheduler_type="cosine",
        max_steps=total,
        bf16=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=42,
        disable_tqdm=True,
        use_cpu=device == "cpu",
    )
    trainer = Trainer(
        model=model, args=targs, train_dataset=Facts(), data_collator=collate, callbacks=[Clock()]
    )
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {
        "weights": str(dtype),
        # batch k (1-based) is step k's, whether or not the loader fetched one batch ahead
        **speeds(marks, batch_tokens, args),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def run_ours(size, tokenizer, seqs, args, device: str) -> dict:
    model = train.build_model(size, tokenizer, seed=0)
    amp = train.autocast_dtype("auto", device)
    step_tokens: list[int] = []
    total = args.warmup_steps + args.steps
    marks: dict[int, float] = {}
    losses: list[float] = []

    def counted():
        for batch in train.fact_batches(seqs, args.batch_size, seed=0):
            step_tokens.append(sum(map(len, batch)))
            yield batch

    def mark(step: int) -> None:
        if step in timed_steps(args):
            sync(device)
            marks[step] = time.perf_counter()

    train.train(
        model,
        counted(),
        steps=total,
        lr=1e-4,
        warmup_ratio=0.2,
        max_len=max(map(len, seqs)),
        pad_id=tokenizer.pad_token_id,
        device=device,
        amp=amp,
        compile_model=device.startswith("cuda"),
        on_step=lambda step, loss, lr, n: losses.append(loss),
        evaluate_at=mark,
    )
    return {
        "weights": "torch.float32" + (" + bf16 autocast" if amp else ""),
        **speeds(marks, step_tokens, args),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    gpu = device.startswith("cuda")
    if args.threads and not gpu:
        torch.set_num_threads(args.threads)
    args.llm_size = args.llm_size or ("llama-16-16" if gpu else "llama-2-4")
    args.steps = args.steps or (300 if gpu else 150)
    args.warmup_steps = args.warmup_steps or (30 if gpu else 10)
    size = train.parse_size(args.llm_size)
    tokenizer = build_tokenizer()
    graph = kg.generate(GRAPH, seed=0)
    seqs = [encode(tokenizer, kg.fact_text(*f)) + [tokenizer.eos_token_id] for f in graph.train]
    n_params = size.n_params(len(tokenizer))
    results = {}
    for way, fn in (("upstream", run_upstream), ("ours", run_ours)):
        t0, c0 = time.perf_counter(), time.process_time()
        r = fn(size, tokenizer, seqs, args, device)
        r["cores_used"] = (time.process_time() - c0) / (time.perf_counter() - t0)
        if gpu:
            r["mfu"] = 6 * n_params * r["tokens_per_s"] / (args.peak_tflops * 1e12)
        results[way] = r
    ratio = results["ours"]["tokens_per_s"] / results["upstream"]["tokens_per_s"]
    best = "best_chunk_tokens_per_s"
    best_ratio = results["ours"][best] / results["upstream"][best]
    name = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"\n{args.llm_size} ({n_params / 1e6:.2f}M parameters), {name}, batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup_steps}"
    )
    print(
        f"{'way':10} {'weights':30} {'tokens/s':>10} {'best chunk':>11} "
        f"{'loss first->last':>18} {'cores':>6}" + ("   MFU" if gpu else "")
    )
    for way, r in results.items():
        print(
            f"{way:10} {r['weights']:30} {r['tokens_per_s']:10.0f} {r[best]:11.0f} "
            f"{r['first_loss']:8.3f}->{r['last_loss']:<8.3f} {r['cores_used']:6.2f}"
            + (f" {r['mfu']:6.1%}" if gpu else "")
        )
    print(
        f"ratio ours/upstream: {ratio:.2f}x overall, {best_ratio:.2f}x fastest {CHUNK}-step chunk"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"pretrain-{'cuda' if gpu else 'cpu'}.json"
    out.write_text(
        json.dumps(
            {"args": vars(args), "results": results, "ratio": ratio, "best_ratio": best_ratio},
            indent=1,
        )
    )
    print(f"written {out}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
