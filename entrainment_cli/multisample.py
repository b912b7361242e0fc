"""``--generations K``: K sampled answers per question of a graded run, and the multi-sample
estimators of answer uncertainty on them (``science.estimators``).

The graded answer stays the study's own (greedy in ``qa accuracy``; ``correlate`` grades its
generation at ``--temperature``). Beside it, three resumable stages, keyed by example id like
every generation, so ``--resume`` and ``entrain merge`` redo nothing:

1. ``sample``: K answers per question at ``--sample-temperature`` from one request (vLLM:
   ``SamplingParams(n=K)``, the prompt computed once; hf: K rows of ``generate``), answer k
   seeded by ``sample_seed(--seed, id) + k`` -> shards ``answer_samples`` (id, sample,
   token_ids, logprobs, finish_reason), all K answers of a question in one shard.
2. ``embed``: one teacher-forced transformers pass over prompt + answer, keeping the residual
   stream after the middle block (layer L // 2, as INSIDE's code takes
   ``hidden_states[L // 2]``) at the answer's last token (an empty answer: the prompt's last
   token) -> shards ``sample_hidden`` (id, sample, layer, vector in float32).
3. analysis: ``tables/answer_samples.parquet`` (per answer: text, parsed answer, its class,
   whether it is right, mean token log-prob) and ``tables/sample_estimators.parquet`` (per
   question, the signals that ``signals.analyze_run`` scores: ``samples_semantic_entropy``,
   ``samples_semantic_entropy_weighted``, ``samples_distinct_answers``,
   ``samples_lexical_similarity``, ``samples_eigenscore``).

Classes are exact, no NLI model: each answer joins the first class whose first answer it
equals under the study's own grader (GSM8K: numerically; MATH: math-verify, that first
answer in the gold's place), else opens a new one; an answer with nothing to parse is a class
of its own (it agrees with nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from . import pipeline
from .engines.generate import Sampling
from .engines.probe import HiddenProbe, batches, decoder_parts
from .errors import UserError
from .science import estimators
from .ui import progress

log = logging.getLogger("entrain")

TABLE = "answer_samples"
HIDDEN = "sample_hidden"
ESTIMATORS = "sample_estimators"
SIGNALS = [
    "samples_semantic_entropy",
    "samples_semantic_entropy_weighted",
    "samples_distinct_answers",
    "samples_lexical_similarity",
    "samples_eigenscore",
]


def check(generations: int, graded: bool = True) -> None:
    """``--generations``: 0 (none) or at least 2, and only where answers are graded."""
    if generations == 1:
        raise UserError(
            "--generations 1: the multi-sample estimators compare answers, so they need at "
            "least 2 per question; use 0 (none) or K >= 2 (e.g. 8)"
        )
    if generations and not graded:
        raise UserError(
            "--generations needs graded answers (their classes come from the grader); "
            "add --grade or drop --generations"
        )


def sampling(cfg: Any, top_p: float) -> Sampling:
    return Sampling(cfg.sample_temperature, top_p, cfg.max_tokens, cfg.seed)


def middle_layer(model) -> int:
    """The layer EigenScore embeds answers at: the residual stream after block L // 2."""
    return len(decoder_parts(model)[1]) // 2


def sample_stage(
    rd,
    cfg: Any,
    setup: pipeline.Setup,
    engine: tuple[str, Any, Any],
    sampling: Sampling,
    keys: Sequence[str],
    token_lists: Sequence[Sequence[int]],
    rows: Sequence[int],
) -> tuple[Any, Any]:
    """Sample ``cfg.generations`` answers for each of ``rows`` (positions in ``keys``) not yet
    in ``answer_samples``. ``engine`` = (kind, model or None, tokenizer); returns (model,
    tokenizer), the model loaded here when hf needed it."""
    n = cfg.generations
    kind, model, tokenizer = engine
    done = rd.done_ids(TABLE, "id")
    todo = [i for i in rows if keys[i] not in done]
    if not todo:
        return model, tokenizer
    if kind == "hf" and model is None:
        model, tokenizer = pipeline.load_model(rd, setup)
    step = max(cfg.batch_size, 32)  # questions per shard
    with (
        pipeline.engine_for(rd, kind, setup, cfg.batch_size, model, tokenizer) as eng,
        rd.stage("sample") as timing,
        progress(cfg.quiet) as bar,
    ):
        task = bar.add_task(f"sample x{n} ({eng.name})", total=len(todo) * n, unit="answers")
        n_tokens = 0
        for lo in range(0, len(todo), step):
            part = todo[lo : lo + step]
            gens = eng.sample(
                [list(token_lists[i]) for i in part],
                [keys[i] for i in part],
                sampling,
                n,
                on_done=lambda m: bar.advance(task, m),
            )
            flat = [g for answers in gens for g in answers]
            shard = pd.DataFrame(
                {
                    "id": [keys[i] for i in part for _ in range(n)],
                    "sample": [k for _ in part for k in range(n)],
                    "token_ids": [g.token_ids for g in flat],
                    "logprobs": [g.logprobs for g in flat],
                    "finish_reason": [g.finish_reason for g in flat],
                }
            )
            rd.append_shard(TABLE, shard)
            n_tokens += sum(len(g.token_ids) for g in flat)
        timing["answers"] = len(todo) * n
        timing["tokens"] = n_tokens
    return model, tokenizer


def embed_stage(
    rd, cfg: Any, model, keys: Sequence[str], token_lists: Sequence[Sequence[int]], pad_id: int
) -> None:
    """The EigenScore embeddings of every sampled answer whose question is not yet in
    ``sample_hidden``: one teacher-forced pass over prompt + answer (``token_lists[i]`` is the
    prompt of ``keys[i]``), the middle layer at the last token; one shard per group of
    questions (``--batch-size`` answers a forward)."""
    samples = rd.read_shards(TABLE)
    if samples is None:
        return
    samples = samples.drop_duplicates(["id", "sample"], keep="last")
    done = rd.done_ids(HIDDEN, "id")
    prompt_of = dict(zip(keys, token_lists, strict=True))
    todo = [k for k in dict.fromkeys(samples["id"]) if k not in done and k in prompt_of]
    if not todo:
        return
    layer = middle_layer(model)
    probe = HiddenProbe(model, [layer], ["last-prompt"])
    device = model.get_input_embeddings().weight.device
    per_shard = max(1, max(cfg.batch_size, 32) // max(1, cfg.generations))
    by_id = dict(tuple(samples.groupby("id", sort=False)))
    with rd.stage("embed") as timing, progress(cfg.quiet) as bar:
        task = bar.add_task("embed answers", total=len(todo), unit="questions")
        n_answers = 0
        for lo in range(0, len(todo), per_shard):
            part = pd.concat([by_id[k] for k in todo[lo : lo + per_shard]], ignore_index=True)
            seqs = [[*prompt_of[i], *t] for i, t in zip(part["id"], part["token_ids"], strict=True)]
            vectors = np.zeros((len(seqs), 0), dtype=np.float32)
            for batch in batches(seqs, cfg.batch_size, pad_id, device):
                got = probe.capture(batch.input_ids, batch.attention_mask)[(layer, "last-prompt")]
                got = got.cpu().numpy().astype(np.float32)
                if vectors.shape[1] == 0:
                    vectors = np.zeros((len(seqs), got.shape[1]), dtype=np.float32)
                vectors[batch.indices] = got
            frame = part[["id", "sample"]].assign(layer=layer, vector=list(vectors))
            rd.append_shard(HIDDEN, frame)
            n_answers += len(seqs)
            bar.advance(task, part["id"].nunique())
        timing["questions"] = len(todo)
        timing["answers"] = n_answers


def classes(predictions: Sequence[Any], same: Callable[[Any, Any], bool]) -> list[int]:
    """Answer-equivalence classes of one question's answers, in order: each answer joins the
    first class whose first answer it equals (``same(answer, first)``), else opens a new one;
    None (nothing parsed) is always a class of its own."""
    firsts: list[Any] = []
    out = []
    for p in predictions:
        label = None
        if p is not None:
            label = next((c for c, f in enumerate(firsts) if f is not None and same(p, f)), None)
        if label is None:
            firsts.append(p)
            label = len(firsts) - 1
        out.append(label)
    return out


def write_tables(
    rd,
    keys: Sequence[str],
    tokenizer,
    parse: Callable[[str], Any],
    same: Callable[[Any, Any], bool],
    golds: dict[str, Any],
) -> pd.DataFrame | None:
    """tables/answer_samples.parquet and tables/sample_estimators.parquet from the saved
    shards (None when the run sampled nothing). ``parse(text)`` is the study's answer parser,
    ``same(answer, other)`` its grader (an answer against a gold), ``golds`` each id's gold."""
    samples = rd.read_in_order(TABLE, ["id", "sample"], list(keys))
    if samples is None:
        return None
    texts = [tokenizer.decode(list(t), skip_special_tokens=True) for t in samples["token_ids"]]
    preds = [parse(t) for t in texts]
    table = pd.DataFrame(
        {
            "id": samples["id"],
            "sample": samples["sample"].astype(int),
            "text": texts,
            "prediction": pd.Series(preds, dtype=object),
            "n_tokens": [len(t) for t in samples["token_ids"]],
            "finish_reason": samples["finish_reason"],
            "mean_logprob": [
                float(np.mean(lp)) if len(lp) else float("nan") for lp in samples["logprobs"]
            ],
        }
    )
    table["class"] = 0
    for _, part in table.groupby("id", sort=False):
        table.loc[part.index, "class"] = classes(list(part["prediction"]), same)
    table["correct"] = [
        p is not None and bool(same(p, golds[i]))
        for i, p in zip(table["id"], table["prediction"], strict=True)
    ]
    hidden = rd.read_in_order(HIDDEN, ["id", "sample"], list(keys))
    vectors = {}
    if hidden is not None:
        rows = hidden[["id", "sample", "vector"]].itertuples(index=False)
        vectors = {(i, int(s)): v for i, s, v in rows}
    records = []
    for id_, part in table.groupby("id", sort=False):
        embedded = [vectors.get((id_, s)) for s in part["sample"]]
        have = all(v is not None for v in embedded)
        records.append(
            {
                "id": id_,
                "samples_semantic_entropy": estimators.semantic_entropy(part["class"]),
                "samples_semantic_entropy_weighted": estimators.semantic_entropy(
                    part["class"], part["mean_logprob"]
                )
                if part["mean_logprob"].notna().all()
                else float("nan"),
                "samples_distinct_answers": float(estimators.distinct_answers(part["class"])),
                "samples_lexical_similarity": estimators.lexical_similarity(list(part["text"])),
                "samples_eigenscore": estimators.eigenscore(np.stack(embedded))
                if have
                else float("nan"),
            }
        )
    table["prediction"] = table["prediction"].map(lambda p: None if p is None else str(p))
    rd.write_table(TABLE, table)
    per_question = pd.DataFrame.from_records(records, columns=["id", *SIGNALS])
    rd.write_table(ESTIMATORS, per_question)
    return per_question
