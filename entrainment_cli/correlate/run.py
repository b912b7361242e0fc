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

from .. import study
from ..data import prompts, registry
from ..engines.generate import Generation, Sampling, resolve_kind
from ..engines.probe import parse_layers
from ..engines.token_probe import TokenProbe
from ..errors import UserError
from ..science import grading
from ..ui import progress
from . import analysis
from . import grading as grading_run

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
    grade: bool = False
    prompting: str = "baseline"
    shots: int = 8
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
    study.check_positive(("--n-prompts", cfg.n_prompts), ("--batch-size", cfg.batch_size))
    kind = resolve_kind(cfg.engine)
    if cfg.hidden_metrics is None:
        return sampling, kind, []
    return sampling, kind, study.metric_names(cfg.hidden_metrics or None)


def build_prompt(cfg: CorrelateConfig, text: str, tokenizer) -> tuple[str, list[int]]:
    """(exact text given to the tokenizer, its ids).

    Ungraded: the raw text with the tokenizer's special tokens (as upstream), or the chat
    template. Graded: the few-shot prompt of ``--prompting`` with ``--shots`` examples.
    """
    if cfg.grade:
        prompt = prompts.build_prompt(cfg.prompting, text, cfg.shots, tokenizer, cfg.chat)
    elif cfg.chat:
        if not tokenizer.chat_template:
            raise UserError("--chat: this model's tokenizer has no chat template; use --no-chat")
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    else:
        prompt = text
    # a chat template writes its own special tokens
    return prompt, tokenizer(prompt, add_special_tokens=not cfg.chat)["input_ids"]


def gold_answers(spec: registry.DatasetSpec, rows: list[dict], location: str) -> list[float]:
    if spec.answer_field is None:
        graded = ", ".join(n for n, s in registry.REGISTRY.items() if s.answer_field)
        raise UserError(f"--grade needs gold answers; '{spec.name}' has none (use {graded})")
    golds = []
    for i, row in enumerate(rows):
        try:
            golds.append(grading.gold_answer(str(row[spec.answer_field])))
        except ValueError:
            raise UserError(
                f"{location}, row {i}: no gold number after '####' in the "
                f"'{spec.answer_field}' field; fix the data or drop --grade"
            ) from None
    return golds


def run(cfg: CorrelateConfig) -> Path:
    sampling, kind, metric_names = validate(cfg)
    spec = registry.get_spec(cfg.dataset)
    if spec.text is None:
        raise UserError(
            f"dataset '{cfg.dataset}' has no prompt text; use one of "
            + ", ".join(n for n, s in registry.REGISTRY.items() if s.text)
        )
    if cfg.grade and cfg.prompting not in prompts.TECHNIQUES:
        raise UserError(
            f"unknown --prompting '{cfg.prompting}'; use one of {', '.join(prompts.TECHNIQUES)}"
        )
    data = registry.load(spec, cfg.data_file)
    rows = data.rows[: cfg.n_prompts]
    ids = data.ids[: cfg.n_prompts]
    if not rows:
        raise UserError(f"no prompts selected from {data.location}")
    golds = gold_answers(spec, rows, data.location) if cfg.grade else []
    setup = study.model_setup(cfg.model, cfg.device, cfg.dtype)
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(setup.resolved.path)
    layers = parse_layers(cfg.layers, config.num_hidden_layers) if metric_names else []
    tokenizer = AutoTokenizer.from_pretrained(setup.resolved.path)
    built = [build_prompt(cfg, spec.prompt_text(r), tokenizer) for r in rows]
    texts = [text for text, _ in built]
    token_lists = [ids_ for _, ids_ in built]
    context = getattr(config, "max_position_embeddings", None) or 10**9
    fits = [len(t) + cfg.max_tokens <= context for t in token_lists]
    if not any(fits):
        raise UserError(
            f"every prompt is longer than the model's context ({context} tokens) minus "
            f"--max-tokens {cfg.max_tokens}; lower --max-tokens or use another model"
        )

    identity = {
        "model": setup.resolved.id,
        "dataset": data.fingerprint,
        "n_prompts": cfg.n_prompts,
        "max_tokens": cfg.max_tokens,
        "top_p": cfg.top_p,
        "temperature": cfg.temperature,
        "chat": cfg.chat,
        "seed": cfg.seed,
        "dtype": str(setup.dtype),
        "hidden_metrics": metric_names,
        "layers": layers,
        "grade": [cfg.prompting, cfg.shots] if cfg.grade else None,
    }
    skipped = [k for k, ok in zip(ids, fits, strict=True) if not ok]
    counts = {"prompts": len(texts), "skipped_too_long": len(skipped)}
    with study.start_run(COMMAND, identity, cfg, setup, data, [spec.name], counts=counts) as rd:
        if skipped:
            log.warning(
                "skipping %d prompt(s) that do not fit the context of %d tokens "
                "with --max-tokens %d",
                len(skipped),
                context,
                cfg.max_tokens,
            )
        model = None
        done = rd.done_ids("generations", "prompt_id")
        todo = [i for i, ok in enumerate(fits) if ok and ids[i] not in done]
        if todo:  # a resumed run may have nothing left to generate: no engine start then
            if kind == "hf":  # the probe's model generates too
                model, tokenizer = study.load_model(rd, setup)

            def columns(part: list[int], gens: list[Generation]) -> dict:
                """A shard of generations: the prompt beside its sampled tokens."""
                return {
                    "prompt_id": [ids[i] for i in part],
                    "prompt": [texts[i] for i in part],
                    "prompt_token_ids": [token_lists[i] for i in part],
                    "token_ids": [g.token_ids for g in gens],
                    "engine_logprobs": [g.logprobs for g in gens],
                    "finish_reason": [g.finish_reason for g in gens],
                }

            with study.engine_for(rd, kind, setup, cfg.batch_size, model, tokenizer) as engine:
                study.generate_into(
                    rd,
                    cfg,
                    "generations",
                    engine,
                    sampling,
                    ids,
                    token_lists,
                    todo,
                    columns=columns,
                )
        if model is None:
            model, tokenizer = study.load_model(rd, setup)
        probe = TokenProbe(model, cfg.top_p, layers, metric_names)
        _probe(rd, cfg, probe, tokenizer, ids, setup.device)
        table, tokens = _finalize(rd, tokenizer, ids)
        if cfg.grade:
            by_id = dict(zip(ids, golds, strict=True))
            golds_in_order = [by_id[p] for p in table["prompt_id"]]
            table = grading_run.grade(table, tokens, golds_in_order, tokenizer)
            rd.write_table("prompts", table)
        gap = (tokens["engine_logprob"] - tokens["logprob"]).abs()
        rd.update(
            counts={
                **rd.manifest["counts"],
                "generated_prompts": len(table),
                "empty_generations": int((table["n_tokens"] == 0).sum()),
                "tokens": len(tokens),
            },
            max_abs_logprob_diff=float(gap.max()) if len(gap) else None,
        )
        with rd.stage("analysis"):
            analysis.analyze_run(rd.path, cfg.min_nucleus, cfg.bins, cfg.n_boot, cfg.seed)
    return rd.path


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
    gens = rd.read_in_order("generations", ["prompt_id"], ids)
    table = pd.DataFrame(
        {
            "prompt_id": gens["prompt_id"],
            "prompt": gens["prompt"],
            "prompt_token_ids": gens["prompt_token_ids"],
            "generated_text": [
                tokenizer.decode(list(t), skip_special_tokens=False) for t in gens["token_ids"]
            ],
            "n_tokens": [len(t) for t in gens["token_ids"]],
            "finish_reason": gens["finish_reason"],
            "token_ids": gens["token_ids"],
        }
    )
    tokens = rd.read_in_order("tokens", ["prompt_id", "step"], ids)
    if tokens is None:
        raise UserError("no tokens were generated (every generation was empty); see run.log")
    tokens["token"] = tokenizer.batch_decode([[t] for t in tokens["token_id"]])
    first = ["prompt_id", "step", "token_id", "token", *TOKEN_STATS, "engine_logprob"]
    tokens = tokens[first + [c for c in tokens.columns if c not in first]]
    rd.write_table("prompts", table)
    rd.write_table("tokens", tokens)
    return table, tokens
