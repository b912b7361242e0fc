"""One runner for every study: checks -> model -> run directory (lock, manifest, resume,
``config.yaml``) -> the study's stages -> figures.

A study's module (named by its :class:`~entrainment_cli.studies.Study`) provides two
functions: ``prepare(cfg, setup) -> Prepared`` does every check and selection that needs the
data or the model's config, before the run directory exists; ``execute(rd, cfg, setup,
prepared)`` runs the stages (prompts, generation, probe, analysis) inside it. The runner
builds the run's identity from the config's identity fields (with the resolved forms that
``prepare`` gives) and draws the figures from the saved tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import options, study
from .errors import UserError
from .runs.rundir import RunDir
from .studies import Study


@dataclass
class Prepared:
    """What ``prepare`` found: the data recorded in the manifest, the run directory's name
    parts, the resolved identity values (e.g. ``layers`` as indices, the engine ``auto``
    picked), the study's own state for ``execute``, and extra manifest fields."""

    data: Any
    name_parts: list[str]
    resolved: dict[str, Any] = field(default_factory=dict)
    state: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_config(rd, cfg: Any) -> None:
    """``config.yaml``: the resolved options; ``--config`` on it runs the study again."""
    import yaml

    text = yaml.safe_dump(options.saved_values(cfg), sort_keys=False, allow_unicode=True)
    rd.write_text("config.yaml", text)


def run_study(entry: Study, cfg: Any) -> Path:
    """Run one study end to end; returns its run directory."""
    impl = entry.implementation()
    setup = study.model_setup(cfg.model, cfg.device, cfg.dtype) if hasattr(cfg, "model") else None
    prepared: Prepared = impl.prepare(cfg, setup)
    data, resolved, name_parts = prepared.data, {}, list(prepared.name_parts)
    if data is not None:
        many = isinstance(data, list)
        resolved["data"] = [d.fingerprint for d in data] if many else data.fingerprint
        data = data[0] if many else data
    if setup is not None:
        resolved |= {"model": setup.resolved.id, "dtype": str(setup.dtype)}
        name_parts.insert(0, study.model_slug(setup.resolved))
    rd = RunDir.open(
        command=entry.name,
        identity=options.identity(cfg, resolved | prepared.resolved),
        run_dir=cfg.run_dir,
        runs_dir=cfg.runs_dir,
        name_parts=name_parts,
        resume=cfg.resume,
    )
    with rd:
        if setup is not None:
            rd.record_setup(cfg, setup.resolved, data, setup.device, **prepared.extra)
        save_config(rd, cfg)
        impl.execute(rd, cfg, setup, prepared)
        entry.plot_run(rd.path)
    return rd.path


def probe_stage(
    rd,
    cfg: Any,
    setup: study.Setup,
    frame: pd.DataFrame,
    build: Callable[[Any, Any], tuple[str, str]],
    columns: Sequence[str],
    probe_args: dict[str, Any],
    counts: dict[str, int],
) -> tuple[Any, Any]:
    """The probe-only studies' stage: load the model, build each row's prompt with
    ``build(tokenizer, row)``, tokenize (rows too long are skipped and counted), probe the
    ``samples`` table (``columns`` of ``frame`` beside each metric; ``probe_args`` are the
    :class:`HiddenProbe`'s layers, positions and logit ids) and record the counts.
    Returns (model, tokenizer)."""
    from .engines.probe import HiddenProbe

    model, tokenizer = study.load_model(rd, setup)
    built = [build(tokenizer, row) for row in frame.itertuples(index=False)]
    frame["prompt"] = [text for text, _ in built]
    tokens = study.tokenize_prompts(frame, tokenizer, model)
    metrics = probe_args.pop("metrics")
    already_done = study.probe_samples(
        rd,
        cfg,
        frame[list(columns)],
        tokens,
        HiddenProbe(model, **probe_args),
        metrics,
        tokenizer.pad_token_id,
    )
    rd.update(
        prompt_format=built[0][1],
        counts={
            **counts,
            "skipped_too_long": len(tokens.skipped),
            "already_done": already_done,
        },
    )
    return model, tokenizer


def read_samples(
    rd, keys: Sequence[str], ids: Sequence[str], columns: Sequence[str], what: str = "prompt"
) -> pd.DataFrame:
    """The probed ``samples`` in dataset order with ``columns`` (one line if none was probed)."""
    samples = rd.read_in_order("samples", list(keys), list(ids))
    if samples is None:
        raise UserError(f"no {what} could be probed (all were skipped); see run.log")
    return samples[list(columns)]


def finish_counts(rd, **counts: Any) -> None:
    """Add ``counts`` to the manifest's counts."""
    rd.update(counts={**rd.manifest.get("counts", {}), **counts})
