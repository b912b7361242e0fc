"""Scaling benchmark: one study's work as 1 process against N shards run at once, and vLLM
tensor parallel size 1 against 2 where there are two GPUs.

Shards: the ``qa rankmath`` probe stage (its prompts over the bundled MATH-500 sample, cycled
to ``--n-problems`` with distinct ids; every metric at the last prompt token) runs as a job
would: a fresh process that loads the model, takes its shard (``Shard.select``: SHA-256 of the
id), probes and writes ``tables/samples.parquet`` into its own shard run directory. First one
process does all of it (shard 0/1), then N processes at once, each on its share of the machine
(CPU: cores split evenly, one affinity set each; GPUs: shard i on GPU i mod the GPU count),
and ``entrain merge``'s core (``check_shards``, ``merge_table``) joins their tables. The
merged table must equal the single process's (same rows in the same order, metrics within
1e-4) before any time is reported. Time = wall clock from starting the processes to the
merged table, model loads included: what a user waits for.

Tensor parallel (only with two or more GPUs and vLLM): the same prompts generated greedily by
``make_engine('vllm', parallel=Parallel(tensor_parallel_size=k))`` for k = 1, 2, each in its
own process; engine start and generation timed apart; the generated tokens must agree.

    python bench/bench_scaling.py                         # embedded SmolLM2, N = 2
    python bench/bench_scaling.py --random-config llama-8b --shards 4 --device cuda

Results: ``bench/results/scaling-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled math500 sample, without waiting

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from bench_probe import token_lists  # noqa: E402  (bench/ is on sys.path)
from common import RANDOM_CONFIGS, RESULTS  # noqa: E402

from entrainment_cli import pipeline  # noqa: E402
from entrainment_cli.data import registry  # noqa: E402
from entrainment_cli.engines import generate, models  # noqa: E402
from entrainment_cli.engines.probe import HiddenProbe  # noqa: E402
from entrainment_cli.runs import merge  # noqa: E402
from entrainment_cli.runs.rundir import RunDir  # noqa: E402
from entrainment_cli.runs.sharding import parse_shard  # noqa: E402
from entrainment_cli.science.sparsity import METRICS  # noqa: E402

HERE = Path(__file__).resolve()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model spec as for entrain --model")
    p.add_argument(
        "--random-config",
        choices=sorted(RANDOM_CONFIGS),
        help="random weights of this shape instead of --model (speed only)",
    )
    p.add_argument("--shards", type=int, default=2, help="N shards run at once")
    p.add_argument("--n-problems", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64, help="tensor-parallel rows")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto (float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # I/N: one shard process
    p.add_argument("--tp-worker", type=int, help=argparse.SUPPRESS)  # one generation process
    p.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.model and args.random_config:
        p.error("--model and --random-config exclude each other")
    if args.shards < 2:
        p.error("--shards must be at least 2")
    return args


def model_dir(args: argparse.Namespace, work: Path, device: str, dtype: torch.dtype) -> str:
    """The model every process loads: --model, or random weights saved once."""
    if not args.random_config:
        return str(models.resolve_model(args.model).path)
    from bench_correlate import build_random_model

    out = work / args.random_config
    if not out.is_dir():
        build_random_model(args.random_config, out, device, dtype)
    return str(out)


def prompts(tokenizer, n_problems: int, vocab_size: int) -> tuple[list[str], list[list[int]]]:
    """(ids, token lists): bench_probe's prompts (the math500 sample as qa rankmath builds
    them, cycled to ``n_problems``), each with an id of its own (``<id>#<round>``)."""
    ids = registry.load(registry.get_spec("math500")).ids
    own = [f"{ids[i % len(ids)]}#{i // len(ids)}" for i in range(n_problems)]
    return own, token_lists(tokenizer, n_problems, vocab_size)


def shard_worker(args: argparse.Namespace) -> None:
    """One shard process: load, select, probe, write the shard run (``--worker I/N``)."""
    shard = parse_shard(args.worker)
    device = models.pick_device(args.device)
    dtype = models.pick_dtype(args.dtype, device)
    resolved = models.ResolvedModel(args.model, Path(args.model), "local")
    model, tokenizer = models.load_model(resolved, device, dtype)
    ids, lists = prompts(tokenizer, args.n_problems, model.config.vocab_size)
    run = RunDir.open(
        command="bench scaling",
        identity={"model": args.model, "n_problems": args.n_problems, "shard": str(shard)},
        run_dir=args.work_dir / f"shard-{shard.index}-of-{shard.count}",
        runs_dir=None,
        name_parts=[],
        resume=False,
    )
    with run as rd:
        # what a study's shard holds and merge checks for: the options it ran with
        rd.write_text("config.yaml", yaml.safe_dump(dict(rd.manifest["identity"])))
        keep = merge.record_selection(rd, shard, ids)
        examples = pd.DataFrame({"id": [ids[i] for i in keep]})
        probe = HiddenProbe(model, [-1], ["last-prompt"])
        pipeline.probe_into(
            rd,
            "samples",
            examples,
            [lists[i] for i in keep],
            probe,
            list(METRICS),
            args.batch_size,
            tokenizer.pad_token_id,
            quiet=True,
        )
        samples = rd.read_in_order("samples", ["id", "layer", "position"], list(examples["id"]))
        rd.write_table("samples", samples)


def cpu_shares(n: int) -> list[list[int]]:
    cores = sorted(os.sched_getaffinity(0))
    size = max(1, len(cores) // n)
    return [cores[(i * size) % len(cores) :][:size] for i in range(n)]


def run_shards(args, model: str, work: Path, count: int, device: str) -> tuple[float, Path]:
    """Start ``count`` shard processes at once, wait for all; (seconds, their parent dir)."""
    out = work / f"runs-{count}"
    shares = cpu_shares(count)
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    start = time.perf_counter()
    procs = []
    for i in range(count):
        env = dict(os.environ)
        cmd = [sys.executable, str(HERE), "--worker", f"{i}/{count}", "--model", model]
        cmd += ["--n-problems", str(args.n_problems), "--batch-size", str(args.batch_size)]
        cmd += ["--device", args.device, "--dtype", args.dtype, "--work-dir", str(out)]
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        else:
            env["OMP_NUM_THREADS"] = str(len(shares[i]))
            cmd = ["taskset", "-c", ",".join(map(str, shares[i])), *cmd]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a shard process failed (exit codes {codes})")
    return time.perf_counter() - start, out


def tp_worker(args: argparse.Namespace) -> None:
    """Generate greedily with tensor parallel size ``--tp-worker``; print a JSON line."""
    from entrainment_cli.engines.generate import Parallel, Sampling, make_engine

    dtype = models.pick_dtype(args.dtype, "cuda")
    t0 = time.perf_counter()
    engine = make_engine(
        "vllm",
        Path(args.model),
        device="cuda",
        dtype=dtype,
        batch_size=args.batch_size,
        parallel=Parallel(tensor_parallel_size=args.tp_worker),
    )
    started = time.perf_counter() - t0
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ids, lists = prompts(
        tokenizer, args.n_problems, engine.llm.llm_engine.model_config.get_vocab_size()
    )
    sampling = Sampling(temperature=0.0, max_tokens=args.max_tokens)
    t0 = time.perf_counter()
    gens = engine.generate(lists, ids, sampling)
    seconds = time.perf_counter() - t0
    tokens = [g.token_ids for g in gens]
    print(json.dumps({"start_s": started, "generate_s": seconds, "tokens": tokens}))


def run_tp(args, model: str) -> dict:
    rows = {}
    for size in (1, 2):
        cmd = [sys.executable, str(HERE), "--tp-worker", str(size), "--model", model]
        cmd += ["--n-problems", str(args.n_problems), "--max-tokens", str(args.max_tokens)]
        cmd += ["--dtype", args.dtype, "--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[size] = json.loads(out.strip().splitlines()[-1])
    n_tokens = sum(len(t) for t in rows[1]["tokens"])
    same = sum(a == b for a, b in zip(rows[1]["tokens"], rows[2]["tokens"], strict=True))
    return {
        "prompts": args.n_problems,
        "generated_tokens_tp1": n_tokens,
        "identical_generations": f"{same}/{args.n_problems}",
        "tp1": {k: rows[1][k] for k in ("start_s", "generate_s")},
        "tp2": {k: rows[2][k] for k in ("start_s", "generate_s")},
        "generate_speedup_tp2": rows[1]["generate_s"] / rows[2]["generate_s"],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return shard_worker(args)
    if args.tp_worker:
        return tp_worker(args)
    device = models.pick_device(args.device)
    dtype = models.pick_dtype(args.dtype, device)
    with tempfile.TemporaryDirectory(prefix="entrain-scaling-") as tmp:
        work = Path(tmp)
        model = model_dir(args, work, device, dtype)
        one_s, one_dir = run_shards(args, model, work, 1, device)
        n_s, n_dir = run_shards(args, model, work, args.shards, device)
        t0 = time.perf_counter()
        shards = merge.check_shards(sorted(n_dir.iterdir()))
        merged = merge.merge_table(shards, "samples")
        merge_s = time.perf_counter() - t0
        n_s += merge_s
        single = pd.read_parquet(one_dir / "shard-0-of-1" / "tables" / "samples.parquet")
        pd.testing.assert_frame_equal(merged, single, rtol=1e-4, atol=1e-4)
        result = {
            "model": f"{args.random_config} (random weights)" if args.random_config else model,
            "device": device,
            "dtype": str(dtype),
            "problems": args.n_problems,
            "batch_size": args.batch_size,
            "cores": len(os.sched_getaffinity(0)),
            "gpus": torch.cuda.device_count() if device.startswith("cuda") else 0,
            "shards": args.shards,
            "one_process_s": one_s,
            "sharded_s": n_s,
            "merge_s": merge_s,
            "speedup": one_s / n_s,
        }
        two_gpus = device.startswith("cuda") and torch.cuda.device_count() >= 2
        if two_gpus and generate.vllm_available():
            result["tensor_parallel"] = run_tp(args, model)
    print(f"\nscaling: {result['model']} on {device}, {args.n_problems} problems")
    print(f"  1 process          {one_s:8.1f} s")
    print(f"  {args.shards} shards at once  {n_s:8.1f} s (merge {merge_s:.2f} s)")
    print(f"  speedup            {result['speedup']:8.2f}x")
    if "tensor_parallel" in result:
        tp = result["tensor_parallel"]
        print(f"  vLLM TP2 / TP1     {tp['generate_speedup_tp2']:8.2f}x generation speed")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"scaling-{device.split(':')[0]}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  -> {path}")


if __name__ == "__main__":
    main()
