"""Every confidence signal of a graded run scored against correctness, from its saved tables.

One call at the end of a graded study's analysis (``correlate --grade``, ``qa accuracy``,
``cot``, ``probe --answer-field``) writes ``tables/signal_values.parquet`` (one row per
example: correct, every signal), ``tables/signals.csv`` (one row per signal: ROC-AUC,
PR-AUC, PRR, AURC, ECE, Brier with bootstrap CIs, best PRR first) and
``tables/risk_coverage.csv``, then the figures.

What each study has saved, and so what "answer" and "generation" mean there:

- ``correlate --grade``: the probe's per-token table (log-prob, entropy, nucleus, STOPS,
  LogTokU, optional hidden-state metrics at generated positions); answer tokens are those
  spelling the parsed number (``answer_steps``), the generation is every generated token.
- ``probe --answer-field``: the same per-token signals, answer tokens those spelling the
  graded answer (tables/answers), plus the hidden-state sparsity of the prompt.
- ``qa accuracy`` and ``cot``: the engine's log-prob of each generated token (no probe of the
  generation, so no entropy or nucleus); answer tokens are those spelling the content of the
  last ``\\boxed{}``; plus the hidden-state sparsity of the prompt's last token (``prompt_``).

With ``--generations K`` (``correlate --grade``, ``qa accuracy``, ``cot``), the multi-sample
estimators of ``tables/sample_estimators.parquet`` (``samples_*``, see
:mod:`entrainment_cli.multisample`) join every study's values.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .runs.rundir import RunDir, atomic_write_files, atomic_write_parquet, read_manifest
from .science import answers
from .science import signals as science
from .science.sparsity import SPARSER

log = logging.getLogger("entrain")


def analyze_run(run_dir: Path, seed: int, n_boot: int = 1000, tokenizer=None) -> list[Path]:
    """Score every signal of a finished graded run; returns the tables and figures written.
    ``tokenizer`` (the run's) locates the answer tokens of ``qa accuracy`` and ``cot`` runs;
    ``correlate`` saved them."""
    manifest = read_manifest(run_dir)
    command = manifest.get("command")
    tables = run_dir / "tables"
    if command == "correlate":
        prompts = pd.read_parquet(tables / "prompts.parquet")
        values = _token_signals(prompts, tables, prompts["prompt_token_ids"].map(len))
    elif command == "probe":  # --answer-field
        graded = pd.read_parquet(tables / "answers.parquet")
        values = _token_signals(graded, tables, graded["n_prompt_tokens"])
        samples = pd.read_parquet(tables / "samples.parquet")
        values = values.merge(_prompt_signals(samples), on="id", how="left")
    else:
        rd = RunDir(run_dir, manifest)
        if command == "qa accuracy":
            graded = pd.read_parquet(tables / "answers.parquet", columns=["id", "correct"])
            samples = pd.read_parquet(tables / "samples.parquet")
            prompt = _prompt_signals(samples)
            prompt_length = samples.drop_duplicates("id").set_index("id")["n_prompt_tokens"]
        elif command == "cot":
            graded = pd.read_parquet(
                tables / "generations.parquet", columns=["id", "correct", "n_prompt_tokens"]
            )
            prompt_length = graded.set_index("id")["n_prompt_tokens"]
            graded = graded[["id", "correct"]]
            ranking = pd.read_parquet(tables / "ranking.parquet")
            test = ranking[ranking["role"] == "test"]  # ranked at the final norm, last prompt token
            (metric,) = test["metric"].unique()
            ranked = {
                "id": test["id"],
                "layer": -1,
                "position": "last-prompt",
                metric: test["score"],
            }
            prompt = _prompt_signals(pd.DataFrame(ranked))
        else:
            raise ValueError(f"no signals are defined for '{command}' runs")
        gens = rd.read_in_order("generations", ["id"], graded["id"].tolist())
        values = graded.merge(_generation_signals(gens, tokenizer), on="id", how="left")
        values = values.merge(prompt, on="id", how="left")
        lengths = {
            "prompt_length": prompt_length,
            "response_length": gens.set_index("id")["token_ids"].map(len),
        }
        for name, length in lengths.items():
            values[name] = values["id"].map(length).astype(float)
    estimators = tables / "sample_estimators.parquet"  # --generations K
    if estimators.is_file():
        values = values.merge(pd.read_parquet(estimators), on="id", how="left")
    names = [c for c in values.columns if c not in {"id", "correct"}]
    table, curves = science.score_signals(values, names, n_boot=n_boot, seed=seed)
    atomic_write_parquet(tables / "signal_values.parquet", values)
    atomic_write_files(  # together: the figures read both
        {
            tables / "signals.csv": table.to_csv(index=False),
            tables / "risk_coverage.csv": curves.to_csv(index=False),
        }
    )
    from .plots.signals import plot_run

    return [
        tables / "signal_values.parquet",
        tables / "signals.csv",
        tables / "risk_coverage.csv",
        *plot_run(run_dir),
    ]


def _token_signals(graded: pd.DataFrame, tables: Path, prompt_length: pd.Series) -> pd.DataFrame:
    """The probe's per-token signals (tables/tokens) over each graded example's answer tokens
    (``answer_steps``) and its whole generation, beside ``correct`` and the lengths."""
    tokens = pd.read_parquet(tables / "tokens.parquet")
    steps = dict(zip(graded["id"], graded["answer_steps"], strict=True))
    per = science.per_example(tokens, "id", {"answer": steps, "generation": None})
    values = graded[["id", "correct"]].merge(per, on="id", how="left")
    values["prompt_length"] = prompt_length.astype(float).to_numpy()
    values["response_length"] = graded["n_tokens"].astype(float).to_numpy()
    return values


def _generation_signals(gens: pd.DataFrame, tokenizer) -> pd.DataFrame:
    """Log-prob baselines per generation over its answer (the last ``\\boxed{}``'s content)
    and over all of it, from the engine's log-prob of each generated token. A generation
    written before shards kept log-probs gets NaN baselines, counted as such."""
    if not {"token_ids", "logprobs"} <= set(gens.columns):
        log.warning("the generations kept no per-token log-probs: no log-prob baselines")
        return gens[["id"]]
    records, answer = [], {}
    for row in gens.itertuples():
        ids, lps = list(row.token_ids), row.logprobs
        if np.ndim(lps) != 1 or len(lps) != len(ids):  # a shard written before log-probs were
            continue
        records += [(row.id, step, float(lp)) for step, lp in enumerate(lps)]
        span = answers.boxed_span(tokenizer.decode(ids)) if ids else None
        answer[row.id] = [] if span is None else answers.span_tokens(tokenizer, ids, *span)
    tokens = pd.DataFrame.from_records(records, columns=["id", "step", "logprob"])
    per = science.per_example(tokens, "id", {"answer": answer, "generation": None})
    return pd.DataFrame({"id": gens["id"]}).merge(per, on="id", how="left")


def _prompt_signals(samples: pd.DataFrame) -> pd.DataFrame:
    """Hidden-state metrics of the prompt, one column per (layer, metric):
    ``prompt_h<layer>_<metric>`` (last-prompt position; ``prompt-mean_...`` for mean-prompt)."""
    metrics = [c for c in samples.columns if c in SPARSER]
    wide = samples.pivot_table(
        index="id", columns=["position", "layer"], values=metrics, dropna=False
    )
    scope = {"last-prompt": "prompt", "mean-prompt": "prompt-mean"}
    wide.columns = [f"{scope.get(p, p)}_h{layer}_{m}" for m, p, layer in wide.columns]
    return wide.reset_index().astype({"id": samples["id"].dtype})
