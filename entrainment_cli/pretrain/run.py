"""`entrain pretrain`: knowledge graph -> Llama trained from scratch -> ID/OOD accuracy and
sparsity, with the learning dynamics (spec section 2).

Run directory: ``kg/`` (rules, every fact, the training set, the test queries with their
options, ``stats.json``), ``checkpoint/`` (an HF model + tokenizer directory that every
other command accepts as ``--model``), ``tables/train.parquet`` (loss, learning rate,
tokens/s), ``tables/eval.parquet`` (one row per query, split, step and layer),
``tables/dynamics.parquet`` (per step, split and layer: accuracy, the baselines, gold loss,
every metric's mean and SEM), ``tables/final.csv`` (the last step of dynamics),
``tables/relations.csv`` (the last step per split and relation), ``tables/rank.csv``
(``--rank-eval``) and ``figures/``; ``resume/state.pt`` while a ``--save-every`` run is
unfinished. A ``--seeds`` run holds one such run per seed and ``tables/seeds.csv``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats

from .. import options, pipeline, studies, vectors
from ..engines import models
from ..engines.probe import parse_layers
from ..errors import UserError
from ..pipeline import Prepared
from ..runs.hidden import write_hidden
from ..runs.rundir import MANIFEST, RunDir, atomic_write_parquet, file_mode, temp_beside
from ..science import controls, kg
from ..studies import PretrainConfig
from ..ui import progress
from . import evaluate, train
from .tokenizer import build_tokenizer

log = logging.getLogger("entrain")

# KGParams field -> the PretrainConfig field (and so the option) that sets it, in the order
# the options are checked.
KG_FIELDS = {
    "num_test": "num_test",
    "n_entities": "entities",
    "n_relations": "relations",
    "n_rules": "rules",
    "n_deductible": "deductible_rules",
    "attach": "attach",
    "n_atomic": "n_atomic",
    "n_derived": "n_derived",
    "negatives": "negatives",
    "max_per_relation": "max_per_relation",
}


def kg_params(cfg: PretrainConfig) -> kg.KGParams:
    return kg.KGParams(**{p: getattr(cfg, f) for p, f in KG_FIELDS.items()})


def _flag(name: str) -> str:
    return options.flag(options.field_of(PretrainConfig, name))


@dataclass(frozen=True)
class _Identity:
    """What the manifest records of something that is not a hub model or dataset."""

    info: dict

    def identity(self) -> dict:
        return self.info


def _validate(cfg: PretrainConfig) -> None:
    """The checks that relate options (each option's own range is declared on its field)."""
    if not cfg.lr > 0:
        raise UserError(f"--lr must be positive (got {cfg.lr})")
    if not 0 <= cfg.warmup_ratio < 1:
        raise UserError(f"--warmup-ratio must be in [0, 1) (got {cfg.warmup_ratio})")
    if cfg.eval_every < 0:
        raise UserError(
            f"--eval-every must be 0 (only at the end) or positive (got {cfg.eval_every})"
        )


def _seeds(cfg: PretrainConfig) -> list[int]:
    """``--seeds`` as distinct integers, in the order given."""
    from ..studies import SEED_MAX

    try:
        seeds = list(dict.fromkeys(int(s) for s in cfg.seeds or ()))
    except ValueError:
        raise UserError(
            f"--seeds must be a comma list of integers, e.g. 0,1,2 (got {','.join(cfg.seeds)})"
        ) from None
    wrong = [s for s in seeds if not 0 <= s <= SEED_MAX]
    if wrong:  # as --seed: 0 or more, and what every random generator accepts
        raise UserError(
            f"--seeds: every seed must be 0 to {SEED_MAX}, got {wrong[0]}; e.g. --seeds 0,1,2"
        )
    return seeds


def generate_graph(cfg: PretrainConfig) -> kg.KnowledgeGraph:
    """The graph, or one line naming the count that fell short and the option to change."""
    try:
        return kg.generate(kg_params(cfg), seed=cfg.seed)
    except kg.GraphTooSmall as e:
        fix = f"raise {_flag(KG_FIELDS[e.raise_param])}"
        if e.lower_param:
            fix += f" or lower {_flag(KG_FIELDS[e.lower_param])}"
        raise UserError(
            f"the knowledge graph is too small for the requested splits: {e.what}: {e.have}, "
            f"need {e.need}; {fix}"
        ) from None


def write_graph(rd: RunDir, graph: kg.KnowledgeGraph) -> str:
    """``kg/``: rules, facts, training set, queries, stats; returns the graph's fingerprint."""
    rules = [
        {
            "index": i,
            "head": kg.relation(r.head),
            "body": [kg.relation(b) for b in r.body],
            "length": len(r.body),
            "deductible": r.deductible,
        }
        for i, r in enumerate(graph.rules)
    ]
    in_train = set(graph.train)
    facts = pd.DataFrame(
        [
            (h, r, t, kind, (h, r, t) in in_train, list(graph.derivations.get((h, r, t), ())))
            for (h, r, t), kind in graph.facts.items()
        ],
        columns=["h", "r", "t", "kind", "in_train", "rules"],
    )
    train_set = pd.DataFrame(graph.train, columns=["h", "r", "t"])
    train_set["kind"] = [graph.facts[f] for f in graph.train]
    train_set["text"] = [kg.fact_text(*f) for f in graph.train]
    queries = pd.DataFrame([asdict(q) for q in graph.queries])
    queries["alt_tails"] = queries["alt_tails"].map(list)
    queries["options"] = queries["options"].map(list)
    queries.insert(0, "id", evaluate.query_ids(graph.queries))
    queries["prompt"] = [kg.prompt_text(q.h, q.r) for q in graph.queries]
    queries["answer"] = [kg.entity(q.t) for q in graph.queries]
    rd.write_text("kg/rules.json", json.dumps(rules, indent=1) + "\n")
    atomic_write_parquet(rd.path / "kg" / "facts.parquet", facts)
    atomic_write_parquet(rd.path / "kg" / "train.parquet", train_set)
    atomic_write_parquet(rd.path / "kg" / "queries.parquet", queries)
    rd.write_text("kg/stats.json", json.dumps(graph.stats, indent=1) + "\n")
    digest = hashlib.sha256()
    digest.update(json.dumps([rules, sorted(graph.facts.items()), graph.train]).encode())
    digest.update(queries.drop(columns=["alt_tails", "options"]).to_csv().encode())
    return digest.hexdigest()


def prepare(cfg: PretrainConfig, setup: None) -> Prepared:
    # Every input check, and the graph itself, come before the run directory exists.
    _validate(cfg)
    seeds = _seeds(cfg)
    size = train.parse_size(cfg.llm_size)
    layers = parse_layers(cfg.layers, size.layers)
    metric_names = pipeline.metric_names(cfg.metrics, "--metrics")
    device = models.pick_device(cfg.device)
    amp = train.autocast_dtype(cfg.dtype, device)
    compile_model = cfg.compile == "on" or (cfg.compile == "auto" and device.startswith("cuda"))
    resolved = {"layers": layers, "metrics": metric_names}
    if seeds:  # each seed's run checks its own graph
        resolved["seeds"] = seeds
        name_parts = [cfg.llm_size, "seeds-" + "-".join(map(str, seeds))]
        return Prepared(None, name_parts, resolved, seeds)
    graph = generate_graph(cfg)
    pipeline.announce_hidden(cfg, len(graph.queries), size.hidden, resolved)
    name_parts = [cfg.llm_size, f"kg{graph.stats['entities']}", f"seed{cfg.seed}"]
    return Prepared(None, name_parts, resolved, (size, graph, device, amp, compile_model))


def lost_evaluations(rd: RunDir, eval_steps: set[int], saved_step: int) -> list[int]:
    """The evaluation steps a resumed run would not redo (at or before the saved state's
    step) that no readable ``eval`` shard holds."""
    evals = rd.read_shards("eval")
    have = set() if evals is None else set(evals["step"].tolist())
    return sorted(s for s in eval_steps if s <= saved_step and s not in have)


def execute(rd: RunDir, cfg: PretrainConfig, setup: None, prep: Prepared) -> None:
    if isinstance(prep.state, list):
        return run_seeds(rd, cfg, prep.state)
    if (rd.path / "tables" / "final.csv").is_file():
        log.info("%s is finished; nothing to resume", rd.path)
        return None
    size, graph, device, amp, compile_model = prep.state
    layers, metric_names = prep.resolved["layers"], prep.resolved["metrics"]
    models.quiet_transformers()  # our bar says what happens
    tokenizer = build_tokenizer()
    seqs = [
        evaluate.encode(tokenizer, kg.fact_text(*f)) + [tokenizer.eos_token_id] for f in graph.train
    ]
    max_len = max(len(s) for s in seqs)
    fingerprint = write_graph(rd, graph)
    model = train.build_model(size, tokenizer, cfg.seed)
    state_path = rd.path / "resume" / "state.pt"
    state = torch.load(state_path, weights_only=True) if state_path.is_file() else None
    n_params = sum(p.numel() for p in model.parameters())
    rd.record_setup(
        cfg,
        _Identity({"id": cfg.llm_size, "source": "trained from scratch", "params": n_params}),
        _Identity(
            {
                "id": "synthetic-kg",
                "data_source": "generated",
                "fingerprint": fingerprint,
                "location": str(rd.path / "kg"),
                **{k: graph.stats[k] for k in ("entities", "facts", "train", "pool_sizes")},
            }
        ),
        device,
        counts={
            "train_facts": len(seqs),
            "queries": len(graph.queries),
            "max_fact_tokens": max_len,
        },
        compile=compile_model,
        autocast=str(amp) if amp else "off (float32)",
    )
    log.info(
        "%s: %.2fM parameters; graph: %d entities, %d facts, %d training facts, "
        "queries ID %d / OOD-medium %d / OOD-hard %d",
        cfg.llm_size,
        n_params / 1e6,
        graph.stats["entities"],
        graph.stats["facts"],
        len(seqs),
        *graph.stats["pool_sizes"].values(),
    )
    fallen = [s for s, n in graph.stats["split_negatives"].items() if n != cfg.negatives]
    if fallen:
        warning = (
            f"{', '.join(fallen)}: no relation has 10 answers to balance negatives over, so "
            "those queries have frequency negatives (the relation prior beside the accuracy "
            "shows what they leave); another --seed may balance it"
        )
        log.warning(warning)
        rd.update(warnings=[*rd.manifest.get("warnings", []), warning])
    evaluator = evaluate.Evaluator(
        model, tokenizer, graph.queries, layers, metric_names, device, amp, cfg.eval_batch_size
    )
    eval_steps = {cfg.steps} | (
        set(range(0, cfg.steps + 1, cfg.eval_every)) if cfg.eval_every else set()
    )
    if state is not None and (lost := lost_evaluations(rd, eval_steps, state["step"])):
        log.warning(
            "the evaluation at step(s) %s is lost (its shard is missing or damaged) and the "
            "saved training state is past it: training again from step 0 to redo it",
            ", ".join(map(str, lost)),
        )
        state = None
    train_log: list[dict] = state["train_log"] if state else []
    clock = {"eval": state["eval_seconds"] if state else 0.0, "last": time.perf_counter()}
    if state:
        log.info("resuming %s after step %d", rd.path, state["step"])

    def save(snapshot: dict) -> None:
        with temp_beside(state_path) as tmp:
            torch.save({**snapshot, "train_log": train_log, "eval_seconds": clock["eval"]}, tmp)
            os.replace(tmp, state_path)

    with rd.stage("train") as timing, progress(cfg.quiet) as bar:
        task = bar.add_task("train", total=cfg.steps, unit="steps")

        def on_step(step: int, loss: float, lr: float, tokens: int) -> None:
            now = time.perf_counter()
            seconds = now - clock["last"]
            clock["last"] = now
            tps = tokens / seconds if seconds > 0 else float("nan")
            train_log.append(
                {"step": step, "loss": loss, "lr": lr, "tokens": tokens, "tokens_per_s": tps}
            )
            bar.update(
                task,
                completed=step,
                description=f"train loss {loss:.3f} {tps:,.0f} tok/s",
            )

        def evaluate_at(step: int) -> None:
            if step not in eval_steps:
                return
            t0 = time.perf_counter()
            final_vectors = cfg.save_hidden and step == cfg.steps
            frame = evaluator(step, keep_vectors=final_vectors)
            if final_vectors:  # first, as the probes do: an evaluation done has its vectors
                write_hidden(rd.path, "samples", evaluator.frame["id"].tolist(), evaluator.vectors)
            rd.append_shard("eval", frame)
            acc = frame[frame.layer == layers[0]].groupby("split")["correct"].mean()
            log.info(
                "step %d: accuracy %s",
                step,
                ", ".join(f"{s} {acc.get(s, float('nan')):.3f}" for s in kg.SPLITS),
            )
            spent = time.perf_counter() - t0
            clock["eval"] += spent
            clock["last"] += spent  # evaluation time is not training time

        t_start = time.perf_counter()
        train.train(
            model,
            train.fact_batches(seqs, cfg.batch_size, cfg.seed),
            steps=cfg.steps,
            lr=cfg.lr,
            warmup_ratio=cfg.warmup_ratio,
            max_len=max_len,
            pad_id=tokenizer.pad_token_id,
            device=device,
            amp=amp,
            compile_model=compile_model,
            on_step=on_step,
            evaluate_at=evaluate_at,
            save_every=cfg.save_every,
            save=save,
            state=state,
        )
        train_seconds = time.perf_counter() - t_start - clock["eval"]
        tokens = sum(r["tokens"] for r in train_log)
        timing.update(steps=cfg.steps, tokens=tokens)
    rd.update(
        training={
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(clock["eval"], 3),
            "tokens_per_s": round(tokens / train_seconds, 1),
        }
    )

    with rd.stage("save"):
        checkpoint = rd.path / "checkpoint"
        model.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
        for path in checkpoint.iterdir():  # safetensors writes 0600; the rest of the run:
            if path.is_file():  # the umask's mode
                path.chmod(file_mode())
        rd.write_table("train", pd.DataFrame.from_records(train_log))
        evals = rd.read_in_order("eval", ["id", "step", "layer"], evaluator.frame["id"].tolist())
        evals = evals.sort_values(["step", "layer"], kind="stable").reset_index(drop=True)
        rd.write_table("eval", evals)
        dyn = evaluate.dynamics(evals, metric_names)
        rd.write_table("dynamics", dyn)
        rd.write_text("tables/relations.csv", evaluate.by_relation(evals).to_csv(index=False))
    if cfg.save_hidden:
        with rd.stage("shift"):
            final = evals[evals.step == cfg.steps].assign(position="last-prompt")
            final[controls.LENGTH] = final["id"].map(evaluator.prompt_lengths())
            vectors.write_tables(
                rd, final, metric_names, condition="split", reference=kg.SPLITS[0], groups="h",
                seed=cfg.seed,
            )  # fmt: skip
    if cfg.rank_eval:
        with rd.stage("rank_eval"):
            _rank_eval(rd, evaluator, graph, cfg.rank_eval)
    shutil.rmtree(state_path.parent, ignore_errors=True)
    resolved = models.ResolvedModel(str(checkpoint), checkpoint, "local")
    rd.update(model={**resolved.identity(), "params": n_params, "llm_size": cfg.llm_size})
    # last: final.csv marks the run finished, so a run killed in its rank evaluation or
    # checkpoint resumes them (from the saved state, its training already done)
    rd.write_text("tables/final.csv", dyn[dyn.step == cfg.steps].to_csv(index=False))
    final = dyn[(dyn.step == cfg.steps) & (dyn.layer == layers[0])]
    for row in final.itertuples():
        log.info(
            "final %s: accuracy %.3f (relation prior %.3f, popularity %.3f; %.3f where the "
            "prior is wrong), gold loss %.3f (n=%d)",
            row.split,
            row.accuracy,
            row.prior_accuracy,
            row.popularity_accuracy,
            row.accuracy_prior_wrong,
            row.loss,
            row.n,
        )
    rd.update(final_accuracy={r.split: round(float(r.accuracy), 4) for r in final.itertuples()})


def _rank_eval(rd: RunDir, evaluator: evaluate.Evaluator, graph: kg.KnowledgeGraph, n: int):
    """``tables/rank.parquet`` (per query) and ``tables/rank.csv`` (per split): the gold's
    filtered rank among all entities, the model's and the relation prior's."""
    known: dict[tuple[int, int], set[int]] = {}
    for h, r, t in graph.facts:
        known.setdefault((h, r), set()).add(t)
    by_relation, _ = kg.tail_counts(graph.train)
    trues, priors = [], []
    for q in graph.queries:
        trues.append(known.get((q.h, q.r), set()) | set(q.alt_tails))
        counts = dict(by_relation.get(q.r, {}))
        if q.split == "id":  # its own fact left out, as for the multiple-choice baselines
            counts[q.t] -= 1
        priors.append(counts)
    ranks = evaluator.rank(n, graph.stats["entities"], trues, priors)
    rd.write_table("rank", ranks)
    summary = evaluate.rank_summary(ranks)
    rd.write_text("tables/rank.csv", summary.to_csv(index=False))
    for row in summary.itertuples():
        log.info(
            "rank %s (n=%d): filtered MRR %.3f, Hits@10 %.3f (relation prior %.3f, %.3f)",
            row.split,
            row.n,
            row.mrr,
            row.hits10,
            row.prior_mrr,
            row.prior_hits10,
        )


SEED_COLUMNS = ["accuracy", "prior_accuracy", "popularity_accuracy", "accuracy_prior_wrong", "loss"]


def seed_summary(finals: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per split and layer, across seeds (one final row per seed): the mean and the half-width
    of the t confidence interval of accuracy, the baselines, gold loss and every metric."""
    columns = SEED_COLUMNS + [c for c in finals.columns if c.endswith("_mean")]
    rows = []
    for (split, layer), part in finals.groupby(["split", "layer"], sort=False):
        row = {"split": split, "layer": layer, "seeds": len(part), "n": int(part["n"].sum())}
        for c in columns:
            values = part[c].dropna().to_numpy(float)
            row[c] = values.mean() if len(values) else np.nan
            row[f"{c}_ci"] = (
                scipy_stats.t.ppf((1 + level) / 2, len(values) - 1)
                * values.std(ddof=1)
                / np.sqrt(len(values))
                if len(values) > 1
                else np.nan
            )
        rows.append(row)
    return pd.DataFrame(rows)


def run_seeds(rd: RunDir, cfg: PretrainConfig, seeds: list[int]) -> None:
    """One run per seed (its own graph, data order and initialisation) under ``seed<S>/``,
    and ``tables/seeds.csv``: each split's across-seed mean and 95% CI."""
    entry = next(s for s in studies.STUDIES if s.name == "pretrain")
    runs = []
    for seed in seeds:
        sub = rd.path / f"seed{seed}"
        child = replace(
            cfg,
            seed=seed,
            seeds=None,
            run_dir=sub,
            resume=cfg.resume and (sub / MANIFEST).is_file(),
        )
        runs.append(pipeline.run_study(entry, child))
    finals = pd.concat(
        [
            pd.read_csv(r / "tables" / "final.csv").assign(seed=s)
            for s, r in zip(seeds, runs, strict=True)
        ],
        ignore_index=True,
    )
    rd.write_table("seed_finals", finals)
    summary = seed_summary(finals)
    rd.write_text("tables/seeds.csv", summary.to_csv(index=False))
    rd.update(seed_runs=[r.name for r in runs])
    for row in summary[summary.layer == summary.layer.iloc[0]].itertuples():
        log.info(
            "across %d seeds, %s: accuracy %.3f ± %.3f (relation prior %.3f, popularity %.3f)",
            row.seeds,
            row.split,
            row.accuracy,
            row.accuracy_ci,
            row.prior_accuracy,
            row.popularity_accuracy,
        )
