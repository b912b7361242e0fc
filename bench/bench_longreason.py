"""`qa longreason` benchmark: our every-layer probe + batched greedy answers against the
upstream per-prompt loop.

Both ways take the same LongReason prompts (built as `qa longreason` builds them) on the same
model and produce, per prompt, every metric of ``sparsity.METRICS`` at the last prompt token of
every layer, and a greedy answer of ``--max-tokens`` tokens:

- upstream: a faithful re-implementation of Longreason/analyze_length_sparsity.py. Per prompt,
  one unbatched forward of the full causal LM with ``output_hidden_states=True`` (every layer's
  [T x d] states and the LM-head logits), the metrics of each layer's last vector, then
  ``model.generate`` (greedy), which runs the prefill again. Upstream computed the metrics in
  fp16; here they are computed as ours (float32, ``compute_metrics``) to compare like with
  like;
- ours: ``HiddenProbe(model, layers, ["last-prompt"])`` over ``batches(...)`` (hooks, decoder
  only), then the transformers engine (``HFEngine``, KV cache, batched, left-padded).

It first checks that both ways give the same metric values at the layers both have (the
embeddings, the residual stream after blocks 1..L-1, and the final-norm state; upstream's tuple
has no pre-norm state after the last block) and reports how many answers agree. It prints
prompts/s and writes ``bench/results/longreason-<device>.json``.

    python bench/bench_longreason.py                 # embedded SmolLM2, the bundled sample
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled sample, without waiting
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from common import RESULTS, sync  # noqa: E402  (bench/ is on sys.path)

from entrainment_cli.data import registry  # noqa: E402
from entrainment_cli.engines import models  # noqa: E402
from entrainment_cli.engines.generate import HFEngine, Sampling  # noqa: E402
from entrainment_cli.engines.probe import HiddenProbe, batches  # noqa: E402
from entrainment_cli.qa.longreason import build_prompt  # noqa: E402
from entrainment_cli.science.sparsity import METRICS, compute_metrics  # noqa: E402

METRIC_NAMES = list(METRICS)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model spec as for entrain --model")
    p.add_argument("--splits", default="8k,16k,32k,64k")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=5, help="upstream generated 5 tokens")
    p.add_argument("--repeats", type=int, default=2, help="timed passes; the fastest counts")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    return p.parse_args()


def prompts(tokenizer, splits: list[str]) -> list[list[int]]:
    spec = registry.get_spec("longreason")
    out = []
    for split in splits:
        for row in registry.load(spec, None, split).rows:
            text, _ = build_prompt(tokenizer, str(row["background"]), str(row["question"]))
            out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def run_upstream(model, toks, device, n_blocks, max_tokens, pad_id):
    """Per prompt: full forward with all hidden states, metrics per layer, then generate."""
    values, answers = [], []
    with torch.inference_mode():
        for ids in toks:
            input_ids = torch.tensor([ids], device=device)
            hidden = model(input_ids, output_hidden_states=True).hidden_states
            # tuple index i < L: embeddings / residual after block i; index L: after the norm
            vectors = torch.stack([hidden[i][0, -1] for i in range(n_blocks + 1)]).float()
            m = compute_metrics(vectors, METRIC_NAMES)
            values.append(torch.stack([m[k] for k in METRIC_NAMES], -1).cpu())
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
            answers.append(out[0, len(ids) :].tolist())
    return torch.stack(values), answers


def run_ours(model, tokenizer, toks, device, n_blocks, args):
    """Hook probe at the same layers (0..L-1 and -1), batched; then batched greedy answers."""
    layers = [*range(n_blocks), -1]
    probe = HiddenProbe(model, layers, ["last-prompt"])
    values = torch.empty(len(toks), len(layers), len(METRIC_NAMES))
    with torch.inference_mode():
        for batch in batches(toks, args.batch_size, tokenizer.pad_token_id, device):
            measured = probe.measure(batch.input_ids, batch.attention_mask, METRIC_NAMES)
            for j, layer in enumerate(layers):
                m = measured[(layer, "last-prompt")]
                values[batch.indices, j] = torch.stack([m[k] for k in METRIC_NAMES], -1).cpu()
    engine = HFEngine(model, tokenizer, batch_size=args.batch_size)
    gens = engine.generate(
        toks, [str(i) for i in range(len(toks))], Sampling(0.0, 1.0, args.max_tokens, 0)
    )
    return values, [g.token_ids for g in gens]


def main() -> None:
    args = parse_args()
    device = models.pick_device(args.device)
    dtype = models.pick_dtype(args.dtype, device)
    resolved = models.resolve_model(args.model)
    model, tokenizer = models.load_model(resolved, device, dtype)
    n_blocks = model.config.num_hidden_layers
    toks = prompts(tokenizer, args.splits.split(","))
    stop = set(HFEngine(model, tokenizer, batch_size=1).stop_ids)
    timings: dict[str, list[float]] = {"upstream": [], "ours": []}
    results = {}
    for _ in range(args.repeats):
        for way in ("upstream", "ours"):
            start = time.perf_counter()
            if way == "upstream":
                results[way] = run_upstream(
                    model, toks, device, n_blocks, args.max_tokens, tokenizer.pad_token_id
                )
            else:
                results[way] = run_ours(model, tokenizer, toks, device, n_blocks, args)
            sync(device)
            timings[way].append(time.perf_counter() - start)

    (up_values, up_answers), (our_values, our_answers) = results["upstream"], results["ours"]
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    close = torch.isclose(our_values, up_values, rtol=tol, atol=tol, equal_nan=True)
    if not close.all():
        p, layer, m = (int(i) for i in (~close).nonzero()[0])
        raise AssertionError(
            f"{int((~close).sum())} metric values differ beyond {tol}; first: prompt {p}, "
            f"layer index {layer}, {METRIC_NAMES[m]}: {up_values[p, layer, m].item()!r} vs "
            f"{our_values[p, layer, m].item()!r}"
        )
    max_diff = float((our_values - up_values).abs().nan_to_num(0).max())

    def cut(ids):  # upstream's generate keeps the EOS and pads after it; ours stops before it
        return next((ids[:i] for i, t in enumerate(ids) if t in stop), ids)

    same = sum(cut(a) == b for a, b in zip(up_answers, our_answers, strict=True))
    speeds = {w: len(toks) / min(t) for w, t in timings.items()}
    ratio = speeds["ours"] / speeds["upstream"]
    mean_tokens = sum(map(len, toks)) / len(toks)
    print(f"model {resolved.id}, {device}, {str(dtype).removeprefix('torch.')}, "
          f"{len(toks)} prompts ({mean_tokens:.0f} tokens on average), {n_blocks + 1} layers, "
          f"{args.max_tokens} answer tokens, batch size {args.batch_size}")  # fmt: skip
    print(f"metric values agree at every layer (largest absolute difference {max_diff:.2e}); "
          f"greedy answers identical for {same}/{len(toks)} prompts\n")  # fmt: skip
    for way in ("upstream", "ours"):
        print(f"{way:<10} {speeds[way]:>8.2f} prompts/s")
    print(f"\nspeed ours/upstream: {ratio:.2f}x")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"longreason-{'cuda' if device.startswith('cuda') else device}.json"
    summary = {
        "model": resolved.id,
        "device": device,
        "dtype": str(dtype),
        "cpu_threads": torch.get_num_threads(),
        "prompts": len(toks),
        "mean_prompt_tokens": mean_tokens,
        "batch_size": args.batch_size,
        "max_tokens": args.max_tokens,
        "timings": timings,
        "prompts_per_s": speeds,
        "speed_ours_over_upstream": ratio,
        "max_abs_difference": max_diff,
        "answers_identical": same,
    }
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
