"""Steps every study shares: checking requested metrics and layers, and the batched probe loop
that measures last-prompt (or mean-prompt) hidden states and appends them to a run's shards."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .engines import models
from .engines.probe import POSITIONS, HiddenProbe, batches, parse_layers
from .errors import UserError
from .runs.rundir import RunDir
from .science import sparsity, stats
from .ui import progress

log = logging.getLogger("entrain")


def model_slug(resolved: models.ResolvedModel) -> str:
    """The model's part of a run directory's name."""
    return resolved.id if resolved.source != "embedded" else "smollm2-135m"


def chat_prompt(tokenizer, system: str, user: str, label: str = "Question: ") -> tuple[str, str]:
    """(exact text given to the tokenizer, 'chat' or 'plain'): the chat template with a
    generation prompt, or for a model without one the plain text
    ``{system}\\n\\n{label}{user}\\nAnswer:``."""
    if tokenizer.chat_template:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, "chat"
    return f"{system}\n\n{label}{user}\nAnswer:", "plain"


def count_nonfinite(samples: pd.DataFrame, metrics: Sequence[str]) -> int:
    """NaN/inf metric values: kept in the table, left out of statistics, reported once."""
    n = int((~np.isfinite(samples[list(metrics)].to_numpy(dtype=np.float64))).sum())
    if n:
        log.warning(
            "%d metric value(s) are NaN/inf; they are kept in the samples table "
            "and left out of every statistic",
            n,
        )
    return n


def metric_names(requested: Sequence[str] | None) -> list[str]:
    """Canonical metric names (None: all of them); unknown names are a UserError."""
    try:
        return sparsity.resolve_metric_names(requested)
    except KeyError as e:
        raise UserError(
            f"unknown metric {e}; known metrics: {', '.join(sparsity.METRICS)} "
            f"(alias: {', '.join(sparsity.ALIASES)})"
        ) from None


def model_layers(resolved: models.ResolvedModel, spec: str) -> list[int]:
    """``--layers`` checked against the model's depth, read from its config alone."""
    from transformers import AutoConfig

    return parse_layers(spec, AutoConfig.from_pretrained(resolved.path).num_hidden_layers)


def check_positions(positions: Sequence[str]) -> list[str]:
    out = list(dict.fromkeys(positions))
    for position in out:
        if position not in POSITIONS:
            raise UserError(f"unknown position '{position}'; use one of {', '.join(POSITIONS)}")
    return out


def too_long(model, n_tokens: Sequence[int], reserve: int = 0) -> set[int]:
    """Indices of prompts that do not fit the context of ``model`` (a model or its config) with
    ``reserve`` tokens to spare, reported once: they are skipped and counted, never truncated."""
    config = getattr(model, "config", model)
    limit = getattr(config, "max_position_embeddings", None) or 10**12
    out = {i for i, n in enumerate(n_tokens) if n + reserve > limit}
    if out:
        log.warning(
            "skipping %d prompt(s) longer than the model's context (%s tokens)", len(out), limit
        )
    return out


def measured_frame(
    part: pd.DataFrame, measured: dict[tuple[int, str], dict[str, torch.Tensor]]
) -> pd.DataFrame:
    """One row per (example, layer, position): ``part``'s columns plus every metric (float64)."""
    frames = []
    for (layer, position), values in measured.items():
        frame = part.copy()
        frame["layer"] = layer
        frame["position"] = position
        for name, tensor in values.items():
            frame[name] = tensor.detach().to("cpu", torch.float64).numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def probe_into(
    rd: RunDir,
    table: str,
    examples: pd.DataFrame,
    token_lists: Sequence[Sequence[int]],
    probe: HiddenProbe,
    metrics: Sequence[str],
    batch_size: int,
    pad_id: int,
    quiet: bool,
    stage: str = "probe",
) -> int:
    """Measure every row of ``examples`` (whose ``id`` is not yet in ``table``'s shards) and append
    the rows to that table; ``token_lists[i]`` are the prompt ids of ``examples.iloc[i]``.
    A probe with ``logit_ids`` adds a ``logits`` column (the next-token logits over those ids).
    Returns how many examples an earlier (resumed) attempt had already done."""
    done = rd.done_ids(table, "id")
    todo = [i for i, id_ in enumerate(examples["id"]) if id_ not in done]
    if done:
        log.info("%s: %d example(s) already done, %d to go", table, len(done), len(todo))
    device = probe.model.get_input_embeddings().weight.device
    with rd.stage(stage) as timing, progress(quiet) as bar:
        task = bar.add_task(stage, total=len(todo), unit="prompts")
        for batch in batches([token_lists[i] for i in todo], batch_size, pad_id, device):
            measured = probe.measure(batch.input_ids, batch.attention_mask, metrics)
            rows = [todo[j] for j in batch.indices]
            part = examples.iloc[rows]
            if probe.logit_ids is not None:  # per example, beside its metrics
                part = part.assign(logits=list(probe.logits.cpu().numpy()))
            rd.append_shard(table, measured_frame(part, measured))
            bar.advance(task, len(rows))
        timing["prompts"] = len(todo)
        timing["tokens"] = int(sum(len(token_lists[i]) for i in todo))
    return len(done)


def correlation_table(
    samples: pd.DataFrame, x: str, metrics: Sequence[str], seed: int, n_boot: int
) -> pd.DataFrame:
    """Per (layer, position, metric): Pearson and Spearman of ``x`` against the metric over all
    examples, with p, N and bootstrap CIs, and the direction in which the metric is sparser."""
    records = []
    for (layer, position), part in samples.groupby(["layer", "position"], sort=True):
        for metric in metrics:
            corr = stats.correlate(part[x], part[metric], n_boot=n_boot, seed=seed)
            records.append(
                {
                    "layer": layer,
                    "position": position,
                    "metric": metric,
                    "sparser_when": "higher" if sparsity.SPARSER[metric] > 0 else "lower",
                    **corr,
                }
            )
    return pd.DataFrame.from_records(records)
