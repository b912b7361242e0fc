"""`correlate --grade`: is the answer right, and did the model's confidence know?

Per prompt: the gold answer, the parsed prediction and the generated tokens that spell it
(located by character offsets of the parsed number in the decoded text, not by upstream's
backward per-character search), then the mean of each token quantity over those answer
tokens and over the whole answer. The statistics and the classifier read only the saved
prompts table, so `--analyze` can redo them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..science import answers, stats

# Quantities averaged per prompt; upstream's accuracy study used these over answer tokens.
PER_PROMPT = ["entropy", "topp_entropy_norm", "stops", "logtoku_au", "logtoku_eu"]
# A few-shot continuation often starts the next example; the answer ends before it.
NEXT_EXAMPLE = "\nQuestion:"


def grade(prompts: pd.DataFrame, tokens: pd.DataFrame, golds: list[float], tokenizer):
    """Add gold, prediction, correct, parse_failed and per-prompt means to ``prompts``."""
    records = []
    by_prompt = dict(tuple(tokens.groupby("id", sort=False)))
    for row, gold in zip(prompts.itertuples(), golds, strict=True):
        text, offsets = answers.token_offsets(tokenizer, list(row.token_ids))
        cut = text.find(NEXT_EXAMPLE)
        cut = len(text) if cut < 0 else cut
        answer = answers.extract_answer(text[:cut])
        steps = (
            answers.answer_tokens(offsets, answer.start, answer.end)
            if answer.value is not None
            else []
        )
        mine = by_prompt.get(row.id, tokens.iloc[:0]).set_index("step")
        kept = [s for s, (lo, _) in enumerate(offsets) if lo < cut]
        record = {
            "gold": gold,
            "prediction": answer.value,
            "answer_how": answer.how,
            "parse_failed": answer.value is None,
            "correct": answers.is_correct(answer.value, gold),
            "answer_steps": steps,
            "n_answer_tokens": len(steps),
        }
        for name in PER_PROMPT:
            record[f"answer_{name}"] = _mean(mine, steps, name)
            record[f"all_{name}"] = _mean(mine, kept, name)
        records.append(record)
    return pd.concat([prompts.reset_index(drop=True), pd.DataFrame.from_records(records)], axis=1)


def _mean(tokens: pd.DataFrame, steps: list[int], name: str) -> float:
    values = tokens[name].reindex(steps).to_numpy(dtype=np.float64) if steps else np.array([])
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def quadrants(parsed: pd.DataFrame) -> pd.DataFrame:
    """Accuracy in each LogTokU quadrant (AU x EU, split at the medians over the prompts with
    both finite): what the quadrant figure shows, with the medians it splits at."""
    au = parsed["answer_logtoku_au"].to_numpy(dtype=np.float64)
    eu = parsed["answer_logtoku_eu"].to_numpy(dtype=np.float64)
    finite = np.isfinite(au) & np.isfinite(eu)
    labels = stats.au_eu_quadrant(au[finite], eu[finite])
    correct = pd.Series(parsed["correct"].to_numpy()[finite], dtype=float)
    frame = correct.groupby(labels).agg(["size", "sum", "mean"]).reset_index()
    frame.columns = ["quadrant", "n", "n_correct", "accuracy"]
    frame["n_correct"] = frame["n_correct"].astype(int)
    frame["au_median"] = float(np.median(au[finite])) if finite.any() else float("nan")
    frame["eu_median"] = float(np.median(eu[finite])) if finite.any() else float("nan")
    return frame


def reliability(parsed: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per quantile bin of each answer-token metric (Wilson 95% CI): the
    reliability figure's points."""
    frames = []
    for metric in PER_PROMPT:
        col = f"answer_{metric}"
        ok = parsed[col].notna()
        if ok.sum() >= 2:
            bins = stats.accuracy_by_bins(parsed.loc[ok, col], parsed.loc[ok, "correct"])
            frames.append(bins.assign(metric=col))
    columns = ["metric", "lo", "hi", "n", "n_correct", "accuracy", "ci_lo", "ci_hi"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def analyze(run_dir: Path, seed: int) -> dict[Path, str]:
    """The texts of tables/summary.json (accuracy, counts, correct vs incorrect),
    classifier.json, correct_vs_incorrect.csv and the tables the figures draw (quadrants.csv,
    LogTokU AU x EU; reliability.csv), for the caller to write with the rest."""
    prompts = pd.read_parquet(run_dir / "tables" / "prompts.parquet")
    n = len(prompts)
    parsed = prompts[~prompts["parse_failed"]]
    features = [f"answer_{m}" for m in PER_PROMPT] + [f"all_{m}" for m in PER_PROMPT]
    groups = stats.compare_groups(parsed, features, correct="correct")
    summary = {
        "n_prompts": n,
        "n_parsed": len(parsed),
        "n_parse_failed": int(prompts["parse_failed"].sum()),
        "n_correct": int(prompts["correct"].sum()),
        "accuracy_all": float(prompts["correct"].mean()) if n else float("nan"),
        "accuracy_parsed": float(parsed["correct"].mean()) if len(parsed) else float("nan"),
        "answer_how": prompts["answer_how"].value_counts().to_dict(),
        "correct_vs_incorrect": groups.to_dict(orient="records"),
    }
    clf = stats.classify(parsed[features], parsed["correct"].to_numpy(), seed=seed)
    tables = run_dir / "tables"
    return {
        tables / "summary.json": json.dumps(summary, indent=2, default=float) + "\n",
        tables / "classifier.json": json.dumps(clf, indent=2, default=float) + "\n",
        tables / "correct_vs_incorrect.csv": groups.to_csv(index=False),
        tables / "quadrants.csv": quadrants(parsed).to_csv(index=False),
        tables / "reliability.csv": reliability(parsed).to_csv(index=False),
    }
