"""`entrain correlate`: per generated token, entropy against STOPS.

Two resumable stages. Generation (vLLM or transformers, with the KV cache, batched) writes
the sampled tokens; then one teacher-forced probe pass per batch computes every per-token
quantity from the full distribution in float32. Upstream re-ran the whole sequence for every
token at batch 1 and, by a bug, always used writingprompts; here ``--dataset`` is honoured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import registry
from ..engines import models
from ..engines.generate import Sampling, close_engines, make_engine, resolve_kind
from ..engines.probe import parse_layers
from ..engines.token_probe import TokenProbe
from ..errors import UserError
from ..runs.rundir import RunDir
from ..science import sparsity
from ..ui import progress
from . import analysis

log = logging.getLogger("entrain")

COMMAND = "correlate"
TOKEN_STATS = [
    "entropy",
    "logprob",
    "nucleus_size",
    "topp_entropy",
    "topp_entropy_norm",
    "stops",
    "logtoku_au",
    "logtoku_eu",
]


@dataclass
class CorrelateConfig:
    model: str | None = None
    dataset: str = "writingprompts"
    data_file: Path | None = None
    n_prompts: int = 100
    max_tokens: int = 100
    top_p: float = 0.9
    temperature: float = 1.0
    chat: bool = False
    engine: str = "auto"
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    hidden_metrics: list[str] | None = None  # None: no hidden-state metrics
    layers: str = "-1"
    min_nucleus: int = 2
    bins: int = 50
    n_boot: int = 1000
    run_dir: Path | None = None
    runs_dir: Path | None = None
    resume: bool = False
    quiet: bool = False


def validate(cfg: CorrelateConfig) -> tuple[Sampling, str, list[str]]:
    """Checks that need no model: (sampling, engine kind, canonical hidden-metric names)."""
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.seed)
    for name, value in (("--n-prompts", cfg.n_prompts), ("--batch-size", cfg.batch_size)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    kind = resolve_kind(cfg.engine)
    if cfg.hidden_metrics is None:
        return sampling, kind, []
    try:
        return sampling, kind, sparsity.resolve_metric_names(cfg.hidden_metrics or None)
    except KeyError as e:
        raise UserError(
            f"unknown metric {e}; known metrics: {', '.join(sparsity.METRICS)}"
        ) from None


def prompt_ids(tokenizer, text: str, chat: bool) -> list[int]:
    """Raw text with the tokenizer's special tokens (upstream), or the chat template."""
    if not chat:
        return tokenizer(text)["input_ids"]
    if not tokenizer.chat_template:
        raise UserError("--chat: this model's tokenizer has no chat template; use --no-chat")
    templated = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(templated, add_special_tokens=False)["input_ids"]


def run(cfg: CorrelateConfig) -> Path:
    sampling, kind, metric_names = validate(cfg)
    spec = registry.get_spec(cfg.dataset)
    if spec.text is None:
        raise UserError(
            f"dataset '{cfg.dataset}' has no prompt text; use one of "
            + ", ".join(n for n, s in registry.REGISTRY.items() if s.text)
        )
    data = registry.load(spec, cfg.data_file)
    texts = [spec.prompt_text(r) for r in data.rows[: cfg.n_prompts]]
    ids = data.ids[: cfg.n_prompts]
    if not texts:
        raise UserError(f"no prompts selected from {data.location}")
    device = models.pick_device(cfg.device)
    dtype = models.pick_dtype(cfg.dtype, device)
    resolved = models.resolve_model(cfg.model)
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(resolved.path)
    layers = parse_layers(cfg.layers, config.num_hidden_layers) if metric_names else []
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    token_lists = [prompt_ids(tokenizer, t, cfg.chat) for t in texts]
    context = getattr(config, "max_position_embeddings", None) or 10**9
    fits = [len(t) + cfg.max_tokens <= context for t in token_lists]
    if not any(fits):
        raise UserError(
            f"every prompt is longer than the model's context ({context} tokens) minus "
            f"--max-tokens {cfg.max_tokens}; lower --max-tokens or use another model"
        )

    identity = {
        "model": resolved.id,
        "dataset": data.fingerprint,
        "n_prompts": cfg.n_prompts,
        "max_tokens": cfg.max_tokens,
        "top_p": cfg.top_p,
        "temperature": cfg.temperature,
        "chat": cfg.chat,
        "seed": cfg.seed,
        "dtype": str(dtype),
        "hidden_metrics": metric_names,
        "layers": layers,
    }
    name = resolved.id if resolved.source != "embedded" else "smollm2-135m"
    rd = RunDir.open(
        command=COMMAND,
        identity=identity,
        run_dir=cfg.run_dir,
        runs_dir=cfg.runs_dir,
        name_parts=[name, spec.name],
        resume=cfg.resume,
    )
    with rd:
        skipped = [k for k, ok in zip(ids, fits, strict=True) if not ok]
        if skipped:
            log.warning(
                "skipping %d prompt(s) that do not fit the context of %d tokens "
                "with --max-tokens %d",
                len(skipped),
                context,
                cfg.max_tokens,
            )
        rd.record_setup(
            cfg,
            resolved,
            data,
            device,
            counts={"prompts": len(texts), "skipped_too_long": len(skipped)},
        )
        model = None
        if kind == "hf":  # the probe's model generates too
            with rd.stage("load_model"):
                model, tokenizer = models.load_model(resolved, device, dtype)
        engine = make_engine(
            kind,
            resolved.path,
            device=device,
            dtype=dtype,
            batch_size=cfg.batch_size,
            model=model,
            tokenizer=tokenizer,
        )
        rd.update(engine=engine.name)
        todo = [i for i, ok in enumerate(fits) if ok]
        _generate(rd, cfg, engine, sampling, ids, texts, token_lists, todo)
        del engine
        if kind == "vllm" and device.startswith("cuda"):
            close_engines()  # give vLLM's GPU memory to the probe's model
        if model is None:
            with rd.stage("load_model"):
                model, tokenizer = models.load_model(resolved, device, dtype)
        probe = TokenProbe(model, cfg.top_p, layers, metric_names)
        _probe(rd, cfg, probe, tokenizer, ids, device)
        prompts, tokens = _finalize(rd, tokenizer, ids)
        gap = (tokens["engine_logprob"] - tokens["logprob"]).abs()
        rd.update(
            counts={
                **rd.manifest["counts"],
                "generated_prompts": len(prompts),
                "empty_generations": int((prompts["n_tokens"] == 0).sum()),
                "tokens": len(tokens),
            },
            max_abs_logprob_diff=float(gap.max()) if len(gap) else None,
        )
        with rd.stage("analysis"):
            analysis.analyze_run(rd.path, cfg.min_nucleus, cfg.bins, cfg.n_boot, cfg.seed)
    return rd.path


def _generate(rd, cfg, engine, sampling, ids, texts, token_lists, todo):
    """Sample every prompt not generated yet, saving a shard every ``save_every`` prompts."""
    done = rd.done_ids("generations", "prompt_id")
    todo = [i for i in todo if ids[i] not in done]
    save_every = max(cfg.batch_size, 32)
    with rd.stage("generate") as timing, progress(cfg.quiet) as bar:
        task = bar.add_task(f"generate ({engine.name})", total=len(todo), unit="prompts")
        n_tokens = 0
        for lo in range(0, len(todo), save_every):
            part = todo[lo : lo + save_every]
            gens = engine.generate(
                [token_lists[i] for i in part],
                [ids[i] for i in part],
                sampling,
                on_done=lambda n: bar.advance(task, n),
            )
            rd.append_shard(
                "generations",
                pd.DataFrame(
                    {
                        "prompt_id": [ids[i] for i in part],
                        "prompt": [texts[i] for i in part],
                        "prompt_token_ids": [token_lists[i] for i in part],
                        "token_ids": [g.token_ids for g in gens],
                        "engine_logprobs": [g.logprobs for g in gens],
                        "finish_reason": [g.finish_reason for g in gens],
                    }
                ),
            )
            n_tokens += sum(len(g.token_ids) for g in gens)
        timing["prompts"] = len(todo)
        timing["tokens"] = n_tokens


def _probe(rd, cfg, probe, tokenizer, ids, device):
    gens = rd.read_shards("generations")
    done = rd.done_ids("probed", "prompt_id")
    gens = gens[~gens["prompt_id"].isin(done)].reset_index(drop=True)
    with rd.stage("probe") as timing, progress(cfg.quiet) as bar:
        task = bar.add_task("probe", total=len(gens), unit="prompts")
        order = np.argsort(
            [
                -(len(p) + len(t))
                for p, t in zip(gens["prompt_token_ids"], gens["token_ids"], strict=True)
            ]
        )
        for lo in range(0, len(order), cfg.batch_size):
            part = gens.iloc[order[lo : lo + cfg.batch_size]].reset_index(drop=True)
            out = probe.measure(
                [list(p) for p in part["prompt_token_ids"]],
                [list(t) for t in part["token_ids"]],
                tokenizer.pad_token_id,
                device,
            )
            if out:
                example = out.pop("example").numpy()
                frame = pd.DataFrame({k: v.numpy() for k, v in out.items()})
                frame.insert(0, "prompt_id", part["prompt_id"].to_numpy()[example])
                engine_lp = [lp for lps in part["engine_logprobs"] for lp in lps]
                frame["engine_logprob"] = np.asarray(engine_lp, dtype=np.float64)
                rd.append_shard("tokens", frame)
            rd.append_shard("probed", part[["prompt_id"]])
            bar.advance(task, len(part))
        timing["prompts"] = len(gens)
        timing["tokens"] = int(sum(len(t) for t in gens["token_ids"]))


def _finalize(rd, tokenizer, ids) -> tuple[pd.DataFrame, pd.DataFrame]:
    """prompts.parquet and tokens.parquet in dataset order, whatever the batch order."""
    order = {pid: i for i, pid in enumerate(ids)}
    gens = rd.read_shards("generations").drop_duplicates("prompt_id", keep="last")
    gens = gens.assign(_o=gens["prompt_id"].map(order)).sort_values("_o").drop(columns="_o")
    prompts = pd.DataFrame(
        {
            "prompt_id": gens["prompt_id"],
            "prompt": gens["prompt"],
            "prompt_token_ids": gens["prompt_token_ids"],
            "generated_text": [
                tokenizer.decode(list(t), skip_special_tokens=False) for t in gens["token_ids"]
            ],
            "n_tokens": [len(t) for t in gens["token_ids"]],
            "finish_reason": gens["finish_reason"],
        }
    ).reset_index(drop=True)
    tokens = rd.read_shards("tokens")
    if tokens is None:
        raise UserError("no tokens were generated (every generation was empty); see run.log")
    tokens = tokens.drop_duplicates(["prompt_id", "step"], keep="last")
    tokens = tokens.assign(_o=tokens["prompt_id"].map(order))
    tokens = tokens.sort_values(["_o", "step"]).drop(columns="_o").reset_index(drop=True)
    tokens["token"] = tokenizer.batch_decode([[t] for t in tokens["token_id"]])
    first = ["prompt_id", "step", "token_id", "token", *TOKEN_STATS, "engine_logprob"]
    tokens = tokens[first + [c for c in tokens.columns if c not in first]]
    rd.write_table("prompts", prompts)
    rd.write_table("tokens", tokens)
    return prompts, tokens
