"""`entrain cot`: MATH-500 with cot, few-shot, auto-shot or the sparsity curriculum (spec 3).

One model load ranks the pool and the test problems together (one batched hook probe pass;
upstream loaded the model twice and ran one unbatched all-layer forward per problem), under
the same zero-shot prompt the model is later asked (upstream ranked under a different one,
spec 7.2 item 11). Levels are quantile bins of the pool's scores, sparser = harder, and test
problems are binned by the same edges (science/curriculum.py). The pool is embedded once for
retrieval. Generation is greedy, as upstream, on vLLM or transformers; answers are graded by
the last ``\\boxed{}`` and math-verify, never by substring.
"""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pandas as pd
import torch

from .. import multisample, pipeline, signals
from ..data import registry
from ..engines import embed
from ..engines.generate import Generation, Sampling, resolve_kind, row_seed
from ..engines.probe import HiddenProbe
from ..errors import UserError
from ..pipeline import Prepared
from ..runs.rundir import RunDir
from ..science import curriculum, sparsity
from ..science.answers import extract_boxed, math_equal
from ..science.stats import accuracy_record
from ..studies import CotConfig

log = logging.getLogger("entrain")

SYSTEM_PROMPT = (
    "You are a helpful math assistant. Solve the problem step by step, then give the final "
    "answer in \\boxed{}."
)
USER_SUFFIX = "\n\nPlease solve this problem step by step and put the final answer in \\boxed{}."


def test_problems(data: registry.LoadedData, sample: int | None, seed: int) -> pd.DataFrame:
    """The test problems: all, or ``sample`` drawn at random with ``seed`` (in file order)."""
    keep = range(len(data.rows))
    if sample is not None and sample < len(data.rows):
        keep = sorted(random.Random(seed).sample(range(len(data.rows)), sample))
    rows = [data.rows[i] for i in keep]
    return pd.DataFrame(
        {
            "id": [data.ids[i] for i in keep],
            "problem": [str(r["problem"]) for r in rows],
            "subject": [str(r.get("subject", "")) for r in rows],
            "level": [
                registry.parse_level(r["level"], f"{data.location} row {i}")
                for i, r in zip(keep, rows, strict=True)
            ],
            "answer": [str(r["answer"]) for r in rows],
        }
    )


def pool_problems(pool: registry.LoadedData, test: registry.LoadedData, size: int) -> pd.DataFrame:
    """The first ``size`` pool problems (file order, as upstream) after dropping any that is a
    test problem or repeats an earlier one, by normalised problem text."""
    rows, ids, dropped = registry.drop_overlap(
        pool.rows, pool.ids, [str(r["problem"]) for r in test.rows]
    )
    if dropped:
        log.info("pool: dropped %d problem(s) that repeat a test or pool problem", dropped)
    if not rows:
        raise UserError(
            f"the pool {pool.location} is empty after removing the test problems it contains; "
            "pass a --pool-file of training problems that are not in the test set"
        )
    rows, ids = rows[:size], ids[:size]
    return pd.DataFrame(
        {
            "id": ids,
            "problem": [str(r["problem"]) for r in rows],
            "solution": [str(r["solution"]) for r in rows],
            "subject": [str(r.get("type", r.get("subject", ""))) for r in rows],
            "level": pd.array([_level_or_none(r["level"]) for r in rows], dtype="Int64"),
        }
    )


def _level_or_none(value) -> int | None:
    """A pool problem's MATH level; MATH's own files hold a few 'Level ?' problems, which
    stay in the pool (the level is only reported for demonstrations)."""
    try:
        return registry.parse_level(value, "pool")
    except UserError:
        return None


def messages(problem: str, demos: list[tuple[str, str]]) -> list[dict[str, str]]:
    """System, then each demonstration as a (problem, full solution) pair of turns, then the
    problem; every user turn ends with the request for a step-by-step answer in \\boxed{}."""
    out = [{"role": "system", "content": SYSTEM_PROMPT}]
    for demo_problem, solution in demos:
        out += [
            {"role": "user", "content": demo_problem + USER_SUFFIX},
            {"role": "assistant", "content": solution},
        ]
    return out + [{"role": "user", "content": problem + USER_SUFFIX}]


def render(tokenizer, chat: list[dict[str, str]]) -> str:
    """The chat template with the generation prompt, or a plain transcript without one."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    names = {"system": "", "user": "Problem: ", "assistant": "Solution: "}
    return "\n\n".join(names[m["role"]] + m["content"] for m in chat) + "\n\nSolution:"


def choose_demos(
    cfg: CotConfig, strategy: str, test: pd.DataFrame, pool: pd.DataFrame, device: str
) -> pd.DataFrame:
    """One row per (test problem, demonstration): which pool problem, in prompt order."""
    records = []
    retrieval = strategy in ("auto-shot", "curriculum")
    if retrieval:  # the pool is embedded once per run
        pool_vectors = embed.embed(pool["problem"].tolist(), device)
        order, sims = embed.similarity_order(
            embed.embed(test["problem"].tolist(), device), pool_vectors
        )
    for t, row in enumerate(test.itertuples(index=False)):
        if strategy == "cot":
            continue  # no demonstrations
        level, band = int(row.sparsity_level), None
        if strategy == "few-shot":  # fresh random examples per problem, seeded by its id
            rng = random.Random(row_seed(cfg.seed, row.id))
            picks = [(i, None) for i in rng.sample(range(len(pool)), min(cfg.shots, len(pool)))]
        elif strategy == "auto-shot":
            picks = [(int(i), None) for i in order[t, : cfg.shots]]
        else:
            band = curriculum.band(level, cfg.n_levels)
            picks = curriculum.select_demos(
                level, cfg.n_levels, order[t].tolist(), pool["sparsity_level"].to_numpy()
            )
        for k, (i, target) in enumerate(picks):
            records.append(
                {
                    "id": row.id,
                    "sparsity_level": level,
                    "band": band,
                    "position": k,
                    "demo_id": pool["id"].iloc[i],
                    "demo_sparsity_level": int(pool["sparsity_level"].iloc[i]),
                    "target_sparsity_level": target,
                    "demo_level": pool["level"].iloc[i],
                    "similarity": float(sims[t, i]) if retrieval else float("nan"),
                }
            )
    columns = [
        "id", "sparsity_level", "band", "position", "demo_id", "demo_sparsity_level",
        "target_sparsity_level", "demo_level", "similarity",
    ]  # fmt: skip
    frame = pd.DataFrame.from_records(records, columns=columns)
    return frame.astype({"target_sparsity_level": "Int64", "band": "string", "demo_level": "Int64"})


def prepare(cfg: CotConfig, setup: pipeline.Setup) -> Prepared:
    if cfg.curriculum and cfg.strategy not in (None, "curriculum"):
        raise UserError(f"--curriculum contradicts --strategy {cfg.strategy}; drop one of them")
    strategy = "curriculum" if cfg.curriculum else cfg.strategy or "cot"
    (metric,) = pipeline.metric_names([cfg.rank_metric])
    kind = resolve_kind(cfg.engine)
    multisample.check(cfg.generations)
    test_data = registry.load(registry.get_spec("math500"), cfg.data_file)
    pool_data = registry.load(registry.get_spec("math_train"), cfg.pool_file, option="--pool-file")
    test = test_problems(test_data, cfg.sample, cfg.seed)
    keep, selection = pipeline.take_shard(cfg, test["id"])
    test = test.iloc[keep].reset_index(drop=True)
    pool = pool_problems(pool_data, test_data, cfg.pool_size)
    if cfg.n_levels > len(pool):
        raise UserError(
            f"--n-levels {cfg.n_levels} is larger than the pool ({len(pool)} problems); "
            "lower --n-levels or raise --pool-size"
        )
    resolved = {
        "strategy": strategy,
        "rank_metric": metric,
        "engine": kind,
        "pool": pool_data.fingerprint,
        "sample_temperature": cfg.sample_temperature if cfg.generations else None,
    }
    return Prepared(
        test_data,
        ["math500", strategy],
        resolved,
        (test, pool),
        extra={"pool": pool_data.identity()},
        selection=selection,
    )


def execute(rd: RunDir, cfg: CotConfig, setup: pipeline.Setup, prep: Prepared) -> None:
    test, pool = prep.state
    strategy, metric, kind = (prep.resolved[k] for k in ("strategy", "rank_metric", "engine"))
    sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=cfg.max_tokens, seed=cfg.seed)
    model, tokenizer = pipeline.load_model(rd, setup)
    ranking, edges = rank(rd, cfg, metric, model, tokenizer, pool, test)
    pool["sparsity_level"] = ranking.loc[ranking["role"] == "pool", "sparsity_level"].to_numpy()
    test = test.merge(
        ranking.loc[ranking["role"] == "test", ["id", "score", "sparsity_level"]], on="id"
    )

    with rd.stage("retrieval") as timing:
        demos = choose_demos(cfg, strategy, test, pool, setup.device)
        timing["problems"] = len(test)
    rd.write_table("demos", demos)
    by_id = pool.set_index("id")
    demo_ids = demos.groupby("id", sort=False)["demo_id"].agg(list).to_dict()
    test["demo_ids"] = [demo_ids.get(i, []) for i in test["id"]]
    test["prompt"] = [
        render(
            tokenizer,
            messages(p, [(by_id.at[d, "problem"], by_id.at[d, "solution"]) for d in ds]),
        )
        for p, ds in zip(test["problem"], test["demo_ids"], strict=True)
    ]
    tokens = pipeline.tokenize_prompts(test, tokenizer, model, reserve=cfg.max_tokens)
    rd.update(
        level_edges=[float(e) for e in edges],
        counts={
            "test_problems": len(test),
            "pool_problems": len(pool),
            "skipped_too_long": len(tokens.skipped),
        },
    )
    ids = test["id"].tolist()
    done = rd.done_ids("generations", "id")
    todo = [i for i in tokens.keep if ids[i] not in done]
    if todo:  # a resumed run may have nothing left to generate: no engine start then
        if kind == "vllm" and setup.device.startswith("cuda"):
            model = None  # vLLM takes the GPU memory
            torch.cuda.empty_cache()

        def columns(part: list[int], gens: list[Generation]) -> dict:
            """A shard of generations: the answer text beside its tokens."""
            return {
                "id": [ids[i] for i in part],
                "output": [tokenizer.decode(g.token_ids, skip_special_tokens=True) for g in gens],
                "tokens": [len(g.token_ids) for g in gens],
                "token_ids": [g.token_ids for g in gens],  # with their log-probs: signals
                "logprobs": [g.logprobs for g in gens],
                "finish_reason": [g.finish_reason for g in gens],
            }

        pipeline.generate_into(
            rd,
            cfg,
            setup,
            (kind, model, tokenizer),
            "generations",
            sampling,
            ids,
            tokens.token_lists,
            todo,
            columns=columns,
            unit="problems",
        )
    if cfg.generations:  # K sampled answers per problem, their prompt the graded answer's
        fits = [ids[i] for i in tokens.keep]
        model, tokenizer = multisample.sample_stage(
            rd, cfg, setup, (kind, model, tokenizer), multisample.sampling(cfg, 1.0), ids,
            tokens.token_lists, tokens.keep,
        )  # fmt: skip
        if model is None:  # vLLM on a GPU had its memory
            model, tokenizer = pipeline.load_model(rd, setup)
        multisample.embed_stage(
            rd, cfg, model, fits, [tokens.token_lists[i] for i in tokens.keep],
            tokenizer.pad_token_id,
        )  # fmt: skip
    with rd.stage("grading"):
        table = grade(rd, strategy, test)
        rd.write_table("generations", table)
        summary = summarize(table, strategy, cfg.n_levels, metric, edges, len(tokens.skipped))
        rd.write_text("tables/summary.json", json.dumps(summary, indent=2) + "\n")
        if cfg.generations:
            golds = dict(zip(test["id"], test["answer"], strict=True))
            multisample.write_tables(rd, ids, tokenizer, extract_boxed, math_equal, golds)
        signals.analyze_run(rd.path, cfg.seed, tokenizer=tokenizer)
    rd.update(
        counts={
            **rd.manifest["counts"],
            "generated": len(table),
            "correct": int(table["correct"].sum()),
        },
        accuracy=summary["overall"]["accuracy"],
    )


def rank(rd, cfg, metric, model, tokenizer, pool, test) -> tuple[pd.DataFrame, np.ndarray]:
    """Score pool and test problems in one batched probe pass and bin them into levels;
    writes tables/ranking.parquet. The prompt is the zero-shot one the model answers."""
    frame = pd.concat([pool.assign(role="pool"), test.assign(role="test")], ignore_index=True)[
        ["role", "id", "problem", "subject", "level"]
    ]
    frame = frame.rename(columns={"id": "problem_id"})
    frame.insert(0, "id", frame["role"] + ":" + frame["problem_id"])  # pool and test ids may meet
    frame["prompt"] = [render(tokenizer, messages(p, [])) for p in frame["problem"]]
    tokens = pipeline.tokenize_prompts(frame, tokenizer, model)  # adds n_prompt_tokens
    if tokens.skipped:
        raise UserError(
            f"{len(tokens.skipped)} problem(s) (e.g. {frame['id'].iloc[min(tokens.skipped)]}) do "
            "not fit the model's context, so they cannot be ranked; use a model with a longer "
            "context"
        )
    pipeline.probe_into(
        rd,
        "ranking",
        frame.drop(columns="prompt"),  # the ranking table keeps the problem, not its prompt
        tokens.token_lists,
        HiddenProbe(model, [-1], ["last-prompt"]),
        [metric],
        cfg.batch_size,
        tokenizer.pad_token_id,
        cfg.quiet,
        stage="rank",
    )
    ranking = rd.read_in_order("ranking", ["id"], frame["id"].tolist())
    bad = ranking.loc[~np.isfinite(ranking[metric]), "id"].tolist()
    if bad:
        raise UserError(
            f"--rank-metric {metric} is NaN/inf for {len(bad)} problem(s) ({', '.join(bad[:3])}); "
            "choose another --rank-metric"
        )
    sparser = sparsity.SPARSER[metric]
    is_pool = ranking["role"] == "pool"
    edges = curriculum.level_edges(ranking.loc[is_pool, metric], cfg.n_levels, sparser)
    ranking["sparsity_level"] = curriculum.assign_levels(ranking[metric], edges, sparser)
    ranking = ranking.drop(columns=["id", "layer", "position"])
    ranking = ranking.rename(columns={"problem_id": "id", metric: "score"})
    ranking.insert(ranking.columns.get_loc("score"), "metric", metric)
    ranking.insert(
        ranking.columns.get_loc("score") + 1, "sparser_when", sparsity.sparser_when(metric)
    )
    rd.write_table("ranking", ranking)
    return ranking, sparser * edges  # edges in score units, for the record


def grade(rd, strategy: str, test: pd.DataFrame) -> pd.DataFrame:
    """generations.parquet: every answered problem with its extracted answer and verdict."""
    gens = rd.read_in_order("generations", ["id"], test["id"].tolist())
    if gens is None:
        raise UserError("no problem was answered (all were skipped); see run.log")
    table = test.merge(gens, on="id")
    table["strategy"] = strategy
    table["extracted"] = [extract_boxed(o) for o in table["output"]]
    table["correct"] = [
        math_equal(p, g) for p, g in zip(table["extracted"], table["answer"], strict=True)
    ]
    columns = [
        "id", "sparsity_level", "score", "subject", "level", "strategy", "demo_ids", "prompt",
        "output", "extracted", "answer", "correct", "tokens", "n_prompt_tokens", "finish_reason",
    ]  # fmt: skip
    return table[columns]


def accuracy(frame: pd.DataFrame, by: str | None = None) -> list[dict] | dict:
    """n, correct, accuracy and its Wilson 95% interval, overall or per value of ``by``."""

    if by is None:
        return accuracy_record(frame["correct"])
    return [
        {by: value.item() if hasattr(value, "item") else value, **accuracy_record(part["correct"])}
        for value, part in frame.groupby(by, sort=True)
    ]


def summarize(table, strategy: str, n_levels: int, metric, edges, n_skipped) -> dict:
    return {
        "strategy": strategy,
        "rank_metric": metric,
        "sparser_when": sparsity.sparser_when(metric),
        "n_levels": n_levels,
        "level_edges": [float(e) for e in edges],  # score at which each next level starts
        "skipped_too_long": n_skipped,
        "overall": accuracy(table),
        "by_level": accuracy(table, "level"),
        "by_subject": accuracy(table, "subject"),
        "by_sparsity_level": accuracy(table, "sparsity_level"),
    }
