"""`entrain cot` benchmark: the ranking stage and retrieval against the upstream way.

Ranking (spec 3.3): upstream cot/utils/rank.py loads the model once for the pool and again for
the test set, and runs one unbatched forward per problem with ``output_hidden_states=True``
(all layers, plus the LM head), taking the last-layer state at the last token. Ours is the
`cot` path: one model load, then ``pipeline.probe_into`` over pool + test together (batched hook
probe, decoder only, shards written to a run directory). Both score the same prompts with the
same metric; the benchmark checks that the scores agree before it reports any speed.

Retrieval (spec 3.5): upstream re-embeds the whole pool for every test problem; ours
(``engines.embed``) embeds the pool once and ranks every query by one matrix product. Both
must give the same top-20 order.

Dtype: upstream ran fp16 on the GPU. Both ways here run in ``--dtype`` (auto: float16 on CUDA,
float32 on the CPU, where fp16 matrix products are emulated and far slower: comparing in
fp16 there would flatter ours).

    python bench/bench_cot.py                     # embedded SmolLM2, 100 pool + 25 test
    python bench/bench_cot.py --n-pool 500 --n-test 500 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled samples, without waiting
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import RESULTS, sync, timed  # noqa: E402  (bench/ is on sys.path)

from entrainment_cli import pipeline  # noqa: E402
from entrainment_cli.cot.run import messages, render  # noqa: E402
from entrainment_cli.data import registry  # noqa: E402
from entrainment_cli.engines import embed, models  # noqa: E402
from entrainment_cli.engines.probe import HiddenProbe  # noqa: E402
from entrainment_cli.runs.rundir import RunDir  # noqa: E402
from entrainment_cli.science.sparsity import compute_metrics  # noqa: E402

METRIC = "l0_outlier"
CHECK = "eff_rank_l1"  # continuous companion metric for the agreement check (l0 is a count)
TOP_K = 20  # upstream's candidate list


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model spec as for entrain --model")
    p.add_argument("--n-pool", type=int, default=100)
    p.add_argument("--n-test", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=8, help="ours (cot's default)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes; the fastest counts")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto: float16 on cuda, float32 on cpu")
    return p.parse_args()


def problems(n_pool: int, n_test: int) -> tuple[list[str], list[str]]:
    """Problem texts of the bundled (or hub) pool and test sets, cycled to the sizes asked."""
    pool = [str(r["problem"]) for r in registry.load(registry.get_spec("math_train")).rows]
    test = [str(r["problem"]) for r in registry.load(registry.get_spec("math500")).rows]
    return [pool[i % len(pool)] for i in range(n_pool)], [
        test[i % len(test)] for i in range(n_test)
    ]


def rank_upstream(resolved, device, dtype, prompts_by_set) -> tuple[float, np.ndarray]:
    """Per set (pool, then test): load the model, one full forward per problem with every
    hidden state, the last layer's last-token vector, its metrics; then free the model.
    Returns (seconds in forwards alone, [problems x (METRIC, CHECK)])."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows, forward_s = [], 0.0
    for prompts in prompts_by_set:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=dtype).to(device).eval()
        start = time.perf_counter()
        with torch.no_grad():
            for text in prompts:
                inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=2048)
                inputs = {k: v.to(device) for k, v in inputs.items()}
                outputs = model(**inputs, output_hidden_states=True)
                last = inputs["attention_mask"].sum() - 1
                h = outputs.hidden_states[-1][0, last]
                values = compute_metrics(h, [METRIC, CHECK])
                rows.append([float(values[METRIC]), float(values[CHECK])])
        sync(device)
        forward_s += time.perf_counter() - start
        del model
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return forward_s, np.asarray(rows)


def rank_ours(resolved, device, dtype, frame, batch_size) -> tuple[float, np.ndarray]:
    """cot's ranking: one load, one batched probe pass over pool + test into a run's shards."""
    model, tokenizer = models.load_model(resolved, device, dtype)
    tokens = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in frame["prompt"]]
    with tempfile.TemporaryDirectory() as tmp:
        rd = RunDir.open(
            command="bench",
            identity={},
            run_dir=Path(tmp) / "run",
            runs_dir=None,
            name_parts=[],
            resume=False,
        )
        with rd:
            start = time.perf_counter()
            pipeline.probe_into(
                rd,
                "ranking",
                frame[["id"]],
                tokens,
                HiddenProbe(model, [-1], ["last-prompt"]),
                [METRIC, CHECK],
                batch_size,
                tokenizer.pad_token_id,
                quiet=True,
            )
            sync(device)
            forward_s = time.perf_counter() - start
            out = rd.read_in_order("ranking", ["id"], frame["id"].tolist())
    del model
    return forward_s, out[[METRIC, CHECK]].to_numpy()


def retrieve_upstream(pool: list[str], test: list[str], device: str) -> np.ndarray:
    """For each query: embed the whole pool and the query again, dot product, top-k."""
    model = embed.encoder(device)
    out = []
    for query in test:
        p = model.encode(pool, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        q = model.encode([query], batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        out.append(np.argsort(-(p @ q[0]), kind="stable")[:TOP_K])
    return np.asarray(out)


def retrieve_ours(pool: list[str], test: list[str], device: str) -> np.ndarray:
    order, _ = embed.similarity_order(embed.embed(test, device), embed.embed(pool, device))
    return order[:, :TOP_K]


def main() -> None:
    args = parse_args()
    device = models.pick_device(args.device)
    # auto: float16 on CUDA as upstream (entrain's own auto is bfloat16 there)
    auto_fp16 = args.dtype == "auto" and device.startswith("cuda")
    dtype = torch.float16 if auto_fp16 else models.pick_dtype(args.dtype, device)
    resolved = models.resolve_model(args.model)
    pool, test = problems(args.n_pool, args.n_test)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    prompts = [render(tokenizer, messages(p, [])) for p in pool + test]
    frame = pd.DataFrame({"id": [f"p{i}" for i in range(len(prompts))], "prompt": prompts})
    # upstream tokenized with the tokenizer's special tokens; the chat template already has them
    assert (
        tokenizer(prompts[0])["input_ids"]
        == tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    )

    rank_ours(resolved, device, dtype, frame.head(args.batch_size), args.batch_size)  # warm-up
    up_s, up_times, (up_fwd, up_vals) = timed(
        lambda: rank_upstream(
            resolved, device, dtype, [prompts[: len(pool)], prompts[len(pool) :]]
        ),
        args.repeats,
        device,
    )
    our_s, our_times, (our_fwd, our_vals) = timed(
        lambda: rank_ours(resolved, device, dtype, frame, args.batch_size), args.repeats, device
    )
    from transformers import AutoConfig

    d = AutoConfig.from_pretrained(resolved.path).hidden_size
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    np.testing.assert_allclose(our_vals[:, 1], up_vals[:, 1], rtol=tol, atol=tol)
    l0_gap = float(np.abs(our_vals[:, 0] - up_vals[:, 0]).max())
    assert l0_gap <= 1.0 / d + 1e-9, f"{METRIC} differs by {l0_gap} (> one coordinate)"

    embed.encoder(device)  # loaded once for both ways, not timed
    embed.embed(test[:2], device)
    up_r, _, up_top = timed(lambda: retrieve_upstream(pool, test, device), 1, device)
    our_r, _, our_top = timed(lambda: retrieve_ours(pool, test, device), args.repeats, device)
    same = float((up_top == our_top).all(axis=1).mean())
    assert same >= 0.95, f"only {same:.0%} of queries have the same top-{TOP_K}"

    result = {
        "model": resolved.id,
        "device": device,
        "dtype": str(dtype),
        "threads": torch.get_num_threads(),
        "n_pool": args.n_pool,
        "n_test": args.n_test,
        "batch_size": args.batch_size,
        "ranking": {
            "upstream_s": up_s,
            "upstream_all_s": up_times,
            "upstream_forward_s": up_fwd,
            "ours_s": our_s,
            "ours_all_s": our_times,
            "ours_forward_s": our_fwd,
            "speedup_stage": up_s / our_s,
            "speedup_forward": up_fwd / our_fwd,
            "max_l0_gap": l0_gap,
        },
        "retrieval": {
            "upstream_s": up_r,
            "ours_s": our_r,
            "speedup": up_r / our_r,
            "encodings_upstream": args.n_test * (args.n_pool + 1),
            "encodings_ours": args.n_pool + args.n_test,
            "same_top20": same,
        },
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"cot-{device.split(':')[0]}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    r, q = result["ranking"], result["retrieval"]
    print(
        f"{resolved.id} on {device} ({dtype}, {result['threads']} threads): "
        f"{args.n_pool} pool + {args.n_test} test problems"
    )
    print("| stage | upstream (s) | ours (s) | ratio |\n|---|---:|---:|---:|")
    print(
        f"| ranking, stage (model loads + passes) | {r['upstream_s']:.2f} | {r['ours_s']:.2f} "
        f"| {r['speedup_stage']:.1f}x |"
    )
    print(
        f"| ranking, forward passes only | {r['upstream_forward_s']:.2f} | "
        f"{r['ours_forward_s']:.2f} | {r['speedup_forward']:.1f}x |"
    )
    print(
        f"| retrieval ({q['encodings_upstream']} vs {q['encodings_ours']} encodings) | "
        f"{q['upstream_s']:.2f} | {q['ours_s']:.2f} | {q['speedup']:.1f}x |"
    )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
