"""Multi-sample and --save-hidden benchmark: what K sampled answers and saved vectors cost.

Two measurements, each a ratio of two timings taken in the same process, on the same model,
prompts and machine:

1. ``--generations K``: K sampled answers per question against one, with the same engine.
   The prompts are ``correlate --grade``'s (GSM8K, the bundled sample, ``--prompting cot``
   with ``--shots`` examples: long few-shot prompts, short answers, where sharing the prompt
   matters), temperature 1, top-p 0.9, ``--max-tokens``. Per engine in ``--engines``:
   ``generate`` (one answer per question) against ``sample(n=K)`` (vLLM: one request with
   ``SamplingParams(n=K)``, children reuse the prompt's cached blocks; hf: K rows per
   question). For vLLM also K separate ``n=1`` requests per question, which is what a
   tool without ``n`` would send. Reported: seconds, generated tokens, and the ratio
   K-samples seconds / 1-sample seconds (goal on vLLM: at most 3x for K = 8).
2. ``--save-hidden``: the ``entrain probe`` study on ``--probe-rows`` rows (the bundled
   arithmetic sample, cycled, unique ids) with and without ``--save-hidden``, once at
   ``--layers -1`` and once at every layer and both prompt positions (the most vectors a run
   can save). Reported: the ``probe`` stage's seconds from each run's manifest (the stage
   that writes the vectors) and the ratio with / without (goal: at most 1.1x).

Each way gets a warm-up, then ``--repeats`` timed passes; the fastest counts. Results go to
``bench/results/samples-<device>.json``.

    python bench/bench_samples.py                    # embedded SmolLM2, vLLM (CPU build) and hf
    python bench/bench_samples.py --engines vllm --n-prompts 64 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled samples, without waiting

import torch  # noqa: E402
from common import RESULTS  # noqa: E402  (bench/ is on sys.path)

from entrainment_cli.data import prompts as prompt_templates  # noqa: E402
from entrainment_cli.data import registry  # noqa: E402
from entrainment_cli.engines import generate, models  # noqa: E402
from entrainment_cli.engines.generate import Sampling  # noqa: E402
from entrainment_cli.pipeline import run_study  # noqa: E402
from entrainment_cli.runs.rundir import read_manifest  # noqa: E402
from entrainment_cli.studies import BY_NAME, ProbeConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model spec as for entrain --model")
    p.add_argument("--engines", default="vllm,hf", help="comma list of vllm, hf")
    p.add_argument("--k", type=int, default=8, help="samples per question")
    p.add_argument("--n-prompts", type=int, default=16)
    p.add_argument("--shots", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="hf: rows per generate call")
    p.add_argument("--probe-rows", type=int, default=192)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-samples", action="store_true")
    p.add_argument("--skip-probe", action="store_true")
    return p.parse_args(argv)


def fastest(fn, repeats: int):
    best = None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if out is not None and torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if best is None or seconds < best[0]:
            best = (seconds, out)
    return best


def gsm8k_prompts(tokenizer, n: int, shots: int) -> tuple[list[list[int]], list[str]]:
    data = registry.load(registry.get_spec("gsm8k"))
    spec = registry.get_spec("gsm8k")
    rows = [data.rows[i % len(data.rows)] for i in range(n)]
    texts = [prompt_templates.build_prompt("cot", spec.prompt_text(r), shots, tokenizer, False)
             for r in rows]  # fmt: skip
    return [tokenizer(t)["input_ids"] for t in texts], [f"q{i}" for i in range(n)]


def bench_samples(args, resolved, device) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    prompts, keys = gsm8k_prompts(tokenizer, args.n_prompts, args.shots)
    sampling = Sampling(1.0, 0.9, args.max_tokens, 0)
    rows = []
    for kind in args.engines.split(","):
        engine = generate.make_engine(
            kind, resolved.path, device=device, dtype=torch.float32, batch_size=args.batch_size
        )
        engine.generate(prompts[:2], keys[:2], sampling)  # warm-up
        engine.sample(prompts[:2], keys[:2], sampling, args.k)
        ways = {
            "1 sample": lambda e=engine: [[g] for g in e.generate(prompts, keys, sampling)],
            f"{args.k} samples (n={args.k})": lambda e=engine: e.sample(
                prompts, keys, sampling, args.k
            ),
        }
        if kind == "vllm":
            seeds = [generate.sample_seed(0, k) + j for k in keys for j in range(args.k)]
            many = [p for p in prompts for _ in range(args.k)]
            many_keys = [k for k in keys for _ in range(args.k)]
            ways[f"{args.k} requests of n=1"] = lambda e=engine, m=many, mk=many_keys, s=seeds: (
                e._run(m, mk, sampling, s, 1, None)
            )
        base = None
        for way, fn in ways.items():
            seconds, out = fastest(fn, args.repeats)
            tokens = sum(len(g.token_ids) for answers in out for g in answers)
            base = base or seconds
            rows.append(
                {
                    "engine": kind,
                    "way": way,
                    "seconds": round(seconds, 3),
                    "answers": sum(len(a) for a in out),
                    "generated_tokens": tokens,
                    "tokens_per_s": round(tokens / seconds, 1),
                    "ratio_to_1_sample": round(seconds / base, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        if kind == "vllm":
            generate.close_engines()
    return rows


def bench_probe(args) -> list[dict]:
    sample = [json.loads(x) for x in (ROOT / "assets/samples/probe.jsonl").read_text().split("\n")
              if x.strip()]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        lines = [
            json.dumps({**sample[i % len(sample)], "uid": f"r{i}"}) for i in range(args.probe_rows)
        ]
        data.write_text("\n".join(lines) + "\n")
        n = 0
        for layers, positions in (("-1", ["last-prompt"]), ("all", ["last-prompt", "mean-prompt"])):
            times = {}
            for save in (False, True, False, True)[: 2 * args.repeats]:
                n += 1
                cfg = ProbeConfig(
                    model=args.model,
                    data_file=data,
                    text_field="text",
                    id_field="uid",
                    label="difficulty",
                    layers=layers,
                    positions=positions,
                    save_hidden=save,
                    batch_size=16,
                    device=args.device,
                    n_boot=10,
                    run_dir=Path(tmp) / f"run{n}",
                    quiet=True,
                )
                path = run_study(BY_NAME["probe"], cfg)
                seconds = read_manifest(path)["timings"]["probe"]["seconds"]
                times[save] = min(times.get(save, seconds), seconds)
            rows.append(
                {
                    "layers": layers,
                    "positions": ",".join(positions),
                    "rows": args.probe_rows,
                    "probe_s_without": times[False],
                    "probe_s_with_save_hidden": times[True],
                    "ratio": round(times[True] / times[False], 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    resolved = models.resolve_model(args.model)
    device = models.pick_device(args.device)
    out = {"device": device, "threads": torch.get_num_threads(), "args": vars(args)}
    if not args.skip_samples:
        out["samples"] = bench_samples(args, resolved, device)
    if not args.skip_probe:
        out["save_hidden"] = bench_probe(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"samples-{device.split(':')[0]}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
