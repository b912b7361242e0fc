"""`entrain correlate`: per generated token, entropy against STOPS.

Two resumable stages. Generation (vLLM or transformers, with the KV cache, batched) writes
the sampled tokens; then one teacher-forced probe pass per batch computes every per-token
quantity from the full distribution in float32. Upstream re-ran the whole sequence for every
token at batch 1 and, by a bug, always used writingprompts; here ``--dataset`` is honoured.
"""

from __future__ import annotations

from .. import multisample, pipeline
from ..data import prompts, registry
from ..engines.generate import Sampling, resolve_kind
from ..engines.probe import parse_layers
from ..engines.token_probe import TokenProbe
from ..errors import UserError
from ..pipeline import Prepared
from ..runs.rundir import RunDir
from ..science import answers
from ..science.answers import gold_answer
from ..studies import CorrelateConfig
from . import analysis
from . import grading as grading_run


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
            golds.append(gold_answer(str(row[spec.answer_field])))
        except ValueError:
            raise UserError(
                f"{location}, row {i}: no gold number after '####' in the "
                f"'{spec.answer_field}' field; fix the data or drop --grade"
            ) from None
    return golds


def prepare(cfg: CorrelateConfig, setup: pipeline.Setup) -> Prepared:
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.seed)
    kind = resolve_kind(cfg.engine)
    multisample.check(cfg.generations, cfg.grade)
    metric_names = []
    if cfg.metrics is not None:
        hidden = None if cfg.metrics == ["all"] else cfg.metrics
        metric_names = pipeline.metric_names(hidden)
    spec = registry.get_spec(cfg.dataset)
    data = registry.load(spec, cfg.data_file)
    rows = data.rows[: cfg.limit]
    ids = data.ids[: cfg.limit]
    if not rows:
        raise UserError(f"no prompts selected from {data.location}")
    keep, selection = pipeline.take_shard(cfg, ids)
    rows, ids = [rows[i] for i in keep], [ids[i] for i in keep]
    golds = gold_answers(spec, rows, data.location) if cfg.grade else []
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(setup.resolved.path)
    layers = parse_layers(cfg.layers, config.num_hidden_layers) if metric_names else []
    tokenizer = AutoTokenizer.from_pretrained(setup.resolved.path)
    built = [build_prompt(cfg, spec.prompt_text(r), tokenizer) for r in rows]
    skipped = pipeline.too_long(config, [len(t) for _, t in built], cfg.max_tokens)
    fits = [i not in skipped for i in range(len(built))]
    resolved = {
        "engine": kind,
        "metrics": metric_names,
        "layers": layers,
        # the grading options mean nothing without --grade
        "prompting": cfg.prompting if cfg.grade else None,
        "shots": cfg.shots if cfg.grade else None,
        "sample_temperature": cfg.sample_temperature if cfg.generations else None,
    }
    return Prepared(
        data,
        [spec.name],
        resolved,
        (sampling, ids, golds, tokenizer, built, fits),
        extra={"counts": {"prompts": len(built), "skipped_too_long": fits.count(False)}},
        selection=selection,
    )


def execute(rd: RunDir, cfg: CorrelateConfig, setup: pipeline.Setup, prep: Prepared) -> None:
    sampling, ids, golds, tokenizer, built, fits = prep.state
    kind = prep.resolved["engine"]
    texts = [text for text, _ in built]
    token_lists = [ids_ for _, ids_ in built]
    model, tokenizer = pipeline.token_generation_stage(
        rd, cfg, setup, kind, sampling, ids, texts, token_lists,
        [i for i, ok in enumerate(fits) if ok], tokenizer,
    )  # fmt: skip
    if cfg.generations:  # K more answers per question, for the multi-sample estimators
        sampling_k = multisample.sampling(cfg, cfg.top_p)
        rows = [i for i, ok in enumerate(fits) if ok]
        engine = (kind, model, tokenizer)
        model, tokenizer = multisample.sample_stage(
            rd, cfg, setup, engine, sampling_k, ids, token_lists, rows
        )
    if model is None:
        model, tokenizer = pipeline.load_model(rd, setup)
    probe = TokenProbe(model, cfg.top_p, prep.resolved["layers"], prep.resolved["metrics"])
    pipeline.token_probe_stage(rd, cfg, probe, tokenizer, ids, setup.device)
    if cfg.generations:
        multisample.embed_stage(rd, cfg, model, ids, token_lists, tokenizer.pad_token_id)
    table, tokens = pipeline.token_tables(rd, tokenizer, ids)
    if cfg.grade:
        by_id = dict(zip(ids, golds, strict=True))
        golds_in_order = [by_id[p] for p in table["id"]]
        table = grading_run.grade(table, tokens, golds_in_order, tokenizer)
        rd.write_table("prompts", table)
        if cfg.generations:
            multisample.write_tables(rd, ids, tokenizer, parse_gsm8k, answers.is_correct, by_id)
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


def parse_gsm8k(text: str) -> float | None:
    """A sampled answer's number, parsed as the graded one (cut before a next example)."""
    cut = text.find(grading_run.NEXT_EXAMPLE)
    return answers.extract_answer(text if cut < 0 else text[:cut]).value
