"""Probe pass benchmark: our batched hook probe against the upstream per-problem forward.

Both ways measure every metric in ``sparsity.METRICS`` of the final hidden state (after the
last norm) at the last prompt token, for the same prompts on the same model:

- upstream: a faithful re-implementation of QA-bench/rankmath/hard.py. One unbatched forward
  of the full causal LM per problem with ``output_hidden_states=True`` (so every layer's
  hidden states and the LM-head logits are computed), then the metrics of
  ``hidden_states[-1][0, -1]`` on the CPU afterwards;
- ours: ``HiddenProbe(model, [-1], ["last-prompt"]).measure(...)`` over ``batches(...)``.

The benchmark first checks that both ways give the same metric values for every problem, so
the speed comparison is of the same computation. It prints problems/s and the peak extra
memory of each way, and writes them to ``bench/results/probe-<device>.json``.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above what is allocated after the
model is loaded. On the CPU each way runs in its own child process (``--only``), and the
peak is ``ru_maxrss`` at its end minus the RSS just after the model is loaded, with its
memory-mapped weights paged in first and the high-water mark reset (where Linux allows it),
so that neither loading nor the weights count.

    python bench/bench_probe.py                      # embedded SmolLM2, CPU or GPU
    python bench/bench_probe.py --random-config llama-1b --device cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled math500 sample, without waiting

import torch  # noqa: E402
from common import RANDOM_CONFIGS, RESULTS, sync  # noqa: E402  (bench/ is on sys.path)

from entrainment_cli.data import registry  # noqa: E402
from entrainment_cli.engines import models  # noqa: E402
from entrainment_cli.engines.probe import HiddenProbe, batches  # noqa: E402
from entrainment_cli.qa.rankmath import build_prompt  # noqa: E402
from entrainment_cli.science.sparsity import METRICS, compute_metrics  # noqa: E402

METRIC_NAMES = list(METRICS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model spec as for entrain --model")
    p.add_argument(
        "--random-config",
        choices=sorted(RANDOM_CONFIGS),
        help="random weights of this shape instead of --model (speed only)",
    )
    p.add_argument("--n-problems", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="timed passes; the fastest counts")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto (float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--only", choices=["upstream", "ours"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def load(args: argparse.Namespace, device: str, dtype: torch.dtype):
    """(model, tokenizer, model name); the tokenizer of random configs is SmolLM2's."""
    resolved = models.resolve_model(None if args.random_config else args.model)
    if not args.random_config:
        model, tokenizer = models.load_model(resolved, device, dtype)
        return model, tokenizer, resolved.id
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    torch.manual_seed(0)  # the same weights in both child processes
    config = LlamaConfig(**RANDOM_CONFIGS[args.random_config])
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    return model, tokenizer, f"{args.random_config} (random weights)"


def token_lists(tokenizer, n_problems: int, vocab_size: int) -> list[list[int]]:
    """The math500 sample's prompts, built as qa rankmath does, cycled to ``n_problems``."""
    data = registry.load(registry.get_spec("math500"))
    problems = [str(row["problem"]) for row in data.rows]
    out = []
    for i in range(n_problems):
        text, _ = build_prompt(tokenizer, problems[i % len(problems)])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append([min(t, vocab_size - 1) for t in ids])
    return out


def run_upstream(model, toks: list[list[int]], device: str) -> torch.Tensor:
    """One unbatched full-LM forward per problem, metrics on the CPU afterwards."""
    rows = []
    with torch.inference_mode():
        for ids in toks:
            input_ids = torch.tensor([ids], device=device)
            outputs = model(input_ids, output_hidden_states=True)
            h = outputs.hidden_states[-1][0, -1].to("cpu")
            values = compute_metrics(h, METRIC_NAMES)
            rows.append(torch.stack([values[m] for m in METRIC_NAMES]))
    return torch.stack(rows)


def run_ours(model, toks: list[list[int]], device: str, batch_size: int, pad_id: int):
    """The batched hook probe; the metric values are brought to the CPU as qa rankmath does."""
    probe = HiddenProbe(model, [-1], ["last-prompt"])
    out = torch.empty(len(toks), len(METRIC_NAMES))
    with torch.inference_mode():
        for batch in batches(toks, batch_size, pad_id, device):
            values = probe.measure(batch.input_ids, batch.attention_mask, METRIC_NAMES)
            values = values[(-1, "last-prompt")]
            out[batch.indices] = torch.stack([values[m] for m in METRIC_NAMES], -1).cpu()
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Reset the RSS high-water mark (Linux >= 4.0), so ru_maxrss counts from here."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def measure(way: str, model, toks, device: str, args) -> dict:
    """Warm up, then time ``way`` over all problems; returns speed, peak memory and values.

    The peak covers the warm-up and every timed pass (they are alike: the peak is the same)."""

    def call(part):
        if way == "upstream":
            return run_upstream(model, part, device)
        return run_ours(model, part, device, args.batch_size, args.pad_id)

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
        reset_peak_rss()
    warm = 1 if way == "upstream" else args.batch_size
    call(sorted(toks, key=len, reverse=True)[:warm])  # the longest: no later allocation is new
    sync(device)
    times, cpu0 = [], time.process_time()
    for _ in range(args.repeats):  # the fastest pass is the one least disturbed by other work
        start = time.perf_counter()
        values = call(toks)
        sync(device)
        times.append(time.perf_counter() - start)
    seconds = min(times)
    # Below the thread count when other work on the machine took cores from this pass.
    cores_used = (time.process_time() - cpu0) / sum(times)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "way": way,
        "seconds": seconds,
        "all_seconds": times,
        "cores_used": cores_used,
        "problems_per_s": len(toks) / seconds,
        "peak_extra_mib": peak / 2**20,
        "values": values.tolist(),
    }


def child_run(way: str, argv: list[str]) -> dict:
    """Run one way in a fresh process so its ru_maxrss is its own."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--only", way]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"the '{way}' child process failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_agree(upstream: dict, ours: dict, dtype: torch.dtype) -> float:
    """Assert both ways give the same metric values; returns the largest difference."""
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    a, b = torch.tensor(upstream["values"]), torch.tensor(ours["values"])
    bad = ~torch.isclose(b, a, rtol=tol, atol=tol, equal_nan=True)
    if bad.any():
        p, m = (int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{int(bad.sum())} metric value(s) differ beyond rtol=atol={tol}; first: problem "
            f"{p}, {METRIC_NAMES[m]}: upstream {a[p, m].item()!r}, ours {b[p, m].item()!r}"
        )
    return float((a - b).abs().nan_to_num(0).max())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = models.pick_device(args.device)
    dtype = models.pick_dtype(args.dtype, device)
    if device == "cpu" and args.only is None:
        # Each way in its own process, for a clean peak RSS.
        results = {way: child_run(way, argv) for way in ("upstream", "ours")}
        meta = results["ours"].pop("meta")
        results["upstream"].pop("meta")
    else:
        model, tokenizer, name = load(args, device, dtype)
        with torch.inference_mode():  # page in memory-mapped weights: they are not the pass's
            for tensor in [*model.parameters(), *model.buffers()]:
                tensor.sum()
        vocab = model.get_input_embeddings().weight.shape[0]
        toks = token_lists(tokenizer, args.n_problems, vocab)
        args.pad_id = min(tokenizer.pad_token_id, vocab - 1)
        ways = [args.only] if args.only else ["upstream", "ours"]
        results = {way: measure(way, model, toks, device, args) for way in ways}
        meta = {
            "model": name,
            "device": device,
            "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
            "cpu_threads": torch.get_num_threads(),
            "dtype": str(dtype).removeprefix("torch."),
            "torch": torch.__version__,
            "n_problems": args.n_problems,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "mean_prompt_tokens": sum(map(len, toks)) / len(toks),
        }
        if args.only:
            print(json.dumps({**results[args.only], "meta": meta}))
            return

    max_diff = check_agree(results["upstream"], results["ours"], dtype)
    up, ours = results["upstream"], results["ours"]
    speedup = ours["problems_per_s"] / up["problems_per_s"]
    mem_ratio = up["peak_extra_mib"] / max(ours["peak_extra_mib"], 1e-9)

    print(f"model {meta['model']}, {meta['device_name']}, {meta['dtype']}, "
          f"{meta['n_problems']} problems ({meta['mean_prompt_tokens']:.0f} tokens on average), "
          f"batch size {meta['batch_size']}")  # fmt: skip
    print(f"metric values agree (largest absolute difference {max_diff:.2e})\n")
    print(f"{'way':<10} {'problems/s':>11} {'peak extra MiB':>15} {'cores used':>11}")
    for r in (up, ours):
        print(f"{r['way']:<10} {r['problems_per_s']:>11.2f} {r['peak_extra_mib']:>15.1f} "
              f"{r['cores_used']:>11.2f}")  # fmt: skip
    print(f"\nspeed ours/upstream:  {speedup:.2f}x")
    print(f"memory upstream/ours: {mem_ratio:.2f}x")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"probe-{'cuda' if device.startswith('cuda') else device}.json"
    summary = {
        **meta,
        "max_abs_difference": max_diff,
        "ways": {w: {k: v for k, v in r.items() if k != "values"} for w, r in results.items()},
        "speed_ours_over_upstream": speedup,
        "memory_upstream_over_ours": mem_ratio,
    }
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
