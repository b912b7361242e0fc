"""One runner for every study, and the stages studies share.

The runner: checks -> model -> run directory (lock, manifest, resume, ``config.yaml``) ->
the study's stages -> figures.

A study's module (named by its :class:`~entrainment_cli.studies.Study`) provides two
functions: ``prepare(cfg, setup) -> Prepared`` does every check and selection that needs the
data or the model's config, before the run directory exists; ``execute(rd, cfg, setup,
prepared)`` runs the stages (prompts, generation, probe, analysis) inside it. The runner
builds the run's identity from the config's identity fields (with the resolved forms that
``prepare`` gives) and draws the figures from the saved tables. A study that only probes its
prompts declares a :class:`ProbeStudy`, whose two methods are those functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from . import options
from .data import registry
from .engines import models
from .engines.generate import (
    ONE_DEVICE,
    Engine,
    Generation,
    Parallel,
    Sampling,
    close_engines,
    make_engine,
)
from .engines.probe import POSITIONS, HiddenProbe, batches, parse_layers
from .errors import UserError
from .runs import merge
from .runs.hidden import estimate as estimate_hidden
from .runs.hidden import write_hidden
from .runs.rundir import RUN_CONFIG, RunDir
from .runs.sharding import parse_shard
from .science import controls, sparsity
from .studies import Study
from .ui import progress

log = logging.getLogger("entrain")


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
    selection: list[str] | None = None  # with --shard: every selected id, before the shard


def take_shard(cfg: Any, ids: Sequence[Any]) -> tuple[list[int], list[str]]:
    """``--shard I/N`` on a study's selected examples ``ids``: (the positions of this shard's
    examples, every selected id in order, for :class:`Prepared`'s ``selection``). Without
    ``--shard``: every position."""
    selection = [str(i) for i in ids]
    shard = parse_shard(getattr(cfg, "shard", None))
    if shard is None:
        return list(range(len(selection))), selection
    keep = shard.select(selection)
    if not keep:
        raise UserError(
            f"--shard {shard}: none of the {len(selection)} selected examples falls in this "
            "shard; use fewer shards"
        )
    return keep, selection


def distributed_setup(cfg: Any) -> Setup:
    """``model_setup`` with the placement and vLLM options the study's config declares."""
    names = [f.name for f in dataclasses.fields(Parallel)]
    parallel = (
        Parallel(**{n: getattr(cfg, n) for n in names})
        if hasattr(cfg, "tensor_parallel_size")
        else ONE_DEVICE
    )
    return model_setup(
        cfg.model,
        cfg.device,
        cfg.dtype,
        device_map=getattr(cfg, "device_map", None),
        max_memory=getattr(cfg, "max_memory", None),
        parallel=parallel,
        max_model_len=getattr(cfg, "max_model_len", None),
    )


def save_config(rd, cfg: Any) -> None:
    """``config.yaml``: the resolved options; ``--config`` on it runs the study again."""
    import yaml

    text = yaml.safe_dump(options.saved_values(cfg), sort_keys=False, allow_unicode=True)
    rd.write_text(RUN_CONFIG, text)


def run_study(entry: Study, cfg: Any) -> Path:
    """Run one study end to end; returns its run directory."""
    impl = entry.implementation()
    shard = parse_shard(getattr(cfg, "shard", None))
    setup = distributed_setup(cfg) if hasattr(cfg, "model") else None
    prepared: Prepared = impl.prepare(cfg, setup)
    if setup is not None:  # the data are checked: now the weights (a hub download)
        setup = dataclasses.replace(setup, resolved=models.fetch_weights(setup.resolved))
    data, resolved, name_parts = prepared.data, {}, list(prepared.name_parts)
    if shard is not None:
        name_parts.append(f"shard{shard.index}of{shard.count}")
    if data is not None:
        many = isinstance(data, list)
        resolved["data"] = [d.fingerprint for d in data] if many else data.fingerprint
        data = data[0] if many else data
    if setup is not None:
        resolved |= {"model": setup.resolved.id, "dtype": str(setup.dtype)}
        name_parts.insert(0, model_slug(setup.resolved))
    rd = RunDir.open(
        command=entry.name,
        identity=options.identity(cfg, resolved | prepared.resolved),
        run_dir=cfg.run_dir,
        runs_dir=cfg.runs_dir,
        name_parts=name_parts,
        resume=cfg.resume,
        model_hashes=models.model_hashes(setup.resolved.path) if setup is not None else None,
    )
    with rd:
        if setup is not None:
            rd.record_setup(cfg, setup.resolved, data, setup.device, **prepared.extra)
        save_config(rd, cfg)
        if shard is not None:
            merge.record_selection(rd, shard, prepared.selection)
        impl.execute(rd, cfg, setup, prepared)
        with rd.stage("figures"):  # timed: a study's figures can take a while
            entry.plot_run(rd.path)
    return rd.path


def merge_study(run_dirs: Sequence[Path], out: Path, quiet: bool = False) -> Path:
    """`entrain merge`: the shard runs checked to belong together, their finished work put in
    a new run at ``out``, and the study resumed there without ``--shard``: every example is
    found done, so only the analysis and figures run, over all examples, by the same code as
    an unsharded run (whose tables the merged ones therefore equal)."""
    from .studies import STUDIES

    shards = merge.check_shards(run_dirs)
    command = shards.manifests[0]["command"]
    entry = next((s for s in STUDIES if s.name == command), None)
    if entry is None:
        raise UserError(f"'{command}' runs have no shards to merge")
    given = {"shard": None, "run_dir": out, "resume": True, "quiet": quiet}
    # nothing is generated again: no vLLM engine, so no GPUs for its parallelism either
    names = {f.name for f in dataclasses.fields(entry.config)}
    given |= {n: 1 for n in ("tensor_parallel_size", "pipeline_parallel_size") if n in names}
    cfg = options.build(entry.config, given, set(given), shards.runs[0] / "config.yaml")
    previous = merge.previous_merge(shards, out)
    if previous is None or previous.get("merge") != "copied":
        # a merge stopped while copying starts its copy again; one stopped after it (or
        # finished) only redoes the analysis: either way, the same merged run
        rd = merge.open_merged(shards, out) if previous is None else None
        rd = rd or merge.restart_merged(shards, out, previous)
        with rd:
            merge.copy_work(shards, rd)
            save_config(rd, cfg)
            rd.manifest["merge"] = "copied"
            rd.unfinished = (
                f"the merge stopped before its analysis; run the same entrain merge again "
                f"(--out {out}) or entrain {command} --resume --run-dir {out} to finish it"
            )
    return run_study(entry, cfg)


@dataclass(frozen=True)
class ProbeStudy:
    """A study that only probes its prompts (no generation), as a declaration: its
    ``prepare`` and ``execute`` are the same for all, from what it declares.

    ``dataset(cfg)`` is the registry name; ``select(data, cfg)`` the examples (a frame with
    ``columns`` but ``prompt``/``n_prompt_tokens`` and what ``prompt`` reads); ``shard_by`` the
    column ``--shard`` splits on (the paired studies keep an item's rows together);
    ``prompt(tokenizer, row)`` its (text, format); ``positions(cfg)`` the probed positions
    when the study has ``--positions`` (None: the last prompt token only); ``analysis(rd,
    samples, metrics, cfg)`` writes its tables from the ``samples`` table; ``counts(frame)``
    what the manifest counts; ``what`` the example, in the message when none was probed."""

    dataset: Callable[[Any], str]
    select: Callable[[Any, Any], pd.DataFrame]
    prompt: Callable[[Any, Any], tuple[str, str]]
    columns: tuple[str, ...]
    analysis: Callable[[RunDir, pd.DataFrame, list[str], Any], None]
    counts: Callable[[pd.DataFrame], dict[str, int]]
    positions: Callable[[Any], list[str]] | None = None
    shard_by: str = "id"
    what: str = "prompt"

    def prepare(self, cfg: Any, setup: Setup) -> Prepared:
        names = metric_names(cfg.metrics)
        spec = registry.get_spec(self.dataset(cfg))
        data = registry.load(spec, cfg.data_file)
        frame = self.select(data, cfg)
        keep, selection = take_shard(cfg, frame[self.shard_by])
        frame = frame.iloc[keep].reset_index(drop=True)
        resolved = {"layers": model_layers(setup.resolved, cfg.layers)}
        if self.positions is not None:
            resolved["positions"] = check_positions(self.positions(cfg))
        resolved["metrics"] = names
        tokenizer, config = prompt_tokenizer(setup)
        built = [self.prompt(tokenizer, row) for row in frame.itertuples(index=False)]
        frame["prompt"] = [text for text, _ in built]
        tokens = tokenize_prompts(frame, tokenizer, config)
        announce_hidden(cfg, len(tokens.keep), config.hidden_size, resolved)
        state = (frame, tokens, built[0][1])
        return Prepared(data, [spec.name], resolved, state, selection=selection)

    def execute(self, rd: RunDir, cfg: Any, setup: Setup, prep: Prepared) -> None:
        """Load the model, probe the ``samples`` table with the prompts ``prepare`` built and
        tokenized (rows too long are skipped and counted), then the study's analysis."""
        (frame, tokens, prompt_format), r = prep.state, prep.resolved
        positions = r.get("positions", ["last-prompt"])
        model, tokenizer = load_model(rd, setup)
        probe = HiddenProbe(model, layers=r["layers"], positions=positions)
        columns = list(self.columns)
        already_done = probe_samples(
            rd, cfg, frame[columns], tokens, probe, r["metrics"], tokenizer.pad_token_id
        )
        rd.update(
            prompt_format=prompt_format,
            counts={
                **self.counts(frame),
                "skipped_too_long": len(tokens.skipped),
                "already_done": already_done,
            },
        )
        keys = ["id", "layer", "position"] if self.positions is not None else ["id", "layer"]
        with rd.stage("analysis"):
            samples = read_samples(
                rd, keys, frame["id"], [*columns, "layer", "position", *r["metrics"]], self.what
            )
            rd.write_table("samples", samples)
            self.analysis(rd, samples, r["metrics"], cfg)
        finish_counts(
            rd,
            probed=int(samples["id"].nunique()),
            nonfinite_values=count_nonfinite(samples, r["metrics"]),
        )


def read_samples(
    rd, keys: Sequence[str], ids: Sequence[str], columns: Sequence[str], what: str = "prompt"
) -> pd.DataFrame:
    """The probed ``samples`` in dataset order with ``columns`` (one line if none was probed)."""
    samples = rd.read_in_order("samples", list(keys), list(ids))
    if samples is None:
        raise UserError(f"no {what} could be probed (all were skipped); see run.log")
    return samples[list(columns)]


def write_controls(rd, frame: pd.DataFrame, label: str, kind: str, metrics, **kw: Any) -> None:
    """tables/controls.csv (each metric raw and given prompt length) and tables/baselines.csv
    (length and TF-IDF alone): see :func:`controls.study_controls`."""
    for name, table in controls.study_controls(frame, label, kind, metrics, **kw).items():
        rd.write_text(f"tables/{name}.csv", table.to_csv(index=False))


def finish_counts(rd, **counts: Any) -> None:
    """Add ``counts`` to the manifest's counts."""
    rd.update(counts={**rd.manifest.get("counts", {}), **counts})


# -- the shared stages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """The model a run uses, the device and the dtype, and how it is spread over devices:
    resolved and checked before the run exists."""

    resolved: models.ResolvedModel
    device: str
    dtype: torch.dtype
    device_map: str | None = None  # the transformers model (probe, hf): --device-map
    max_memory: str | None = None  # --max-memory, with device_map
    parallel: Parallel = ONE_DEVICE  # vLLM's tensor / pipeline parallelism
    max_model_len: int | None = None  # vLLM and hf: prompt + generation at most


def model_setup(
    model: str | None,
    device: str,
    dtype: str,
    *,
    device_map: str | None = None,
    max_memory: str | None = None,
    parallel: Parallel = ONE_DEVICE,
    max_model_len: int | None = None,
) -> Setup:
    """``--device``, ``--dtype``, the placement options and ``--model`` checked and resolved
    (in that order; a hub model without its weights, fetched once the study's data are
    checked); a parallel size larger than the visible devices is refused here."""
    picked = models.pick_device(device)
    models.placement(picked, device_map, max_memory)
    parallel.check_devices(picked)
    return Setup(
        models.resolve_model(model, weights=False),
        picked,
        models.pick_dtype(dtype, picked),
        device_map,
        max_memory,
        parallel,
        max_model_len,
    )


def model_slug(resolved: models.ResolvedModel) -> str:
    """The model's part of a run directory's name."""
    return resolved.id if resolved.source != "embedded" else "smollm2-135m"


def load_model(rd: RunDir, setup: Setup):
    """(model, tokenizer), the load timed as the run's ``load_model`` stage."""
    with rd.stage("load_model"):
        return models.load_model(
            setup.resolved, setup.device, setup.dtype, setup.device_map, setup.max_memory
        )


def check_positive(*options: tuple[str, int | None]) -> None:
    """Each (option name, value) must be at least 1; None (not given) passes."""
    for name, value in options:
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")


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


def metric_names(requested: Sequence[str] | None, option: str | None = None) -> list[str]:
    """Canonical metric names (None: all of them); unknown names are a UserError, which names
    ``option`` when given."""
    try:
        return sparsity.resolve_metric_names(requested)
    except KeyError as e:
        where = f"{option}: " if option else ""
        raise UserError(
            f"{where}unknown metric {e}; known metrics: {', '.join(sparsity.METRICS)} "
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


def announce_hidden(cfg: Any, n_examples: int, hidden_size: int, resolved: dict) -> None:
    """With ``--save-hidden``, say (before the run exists) how much disk the vectors take."""
    if getattr(cfg, "save_hidden", False):
        positions = resolved.get("positions", ["last-prompt"])
        estimate_hidden(n_examples, hidden_size, resolved["layers"], positions)


def prompt_tokenizer(setup: Setup):
    """(tokenizer, model config) from the model's directory, without its weights: ``prepare``
    builds and measures the prompts with them before the run directory exists."""
    from transformers import AutoConfig, AutoTokenizer

    models.quiet_transformers()
    path = setup.resolved.path
    return AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path)


def too_long(model, n_tokens: Sequence[int], reserve: int = 0) -> set[int]:
    """Indices of the prompts (of ``n_tokens`` tokens each) that do not fit the context of
    ``model`` (a model or its config) with ``reserve`` (``--max-tokens``) tokens to spare:
    skipped and counted, never truncated, and told once. When none fits, a UserError says so."""
    config = getattr(model, "config", model)
    limit = getattr(config, "max_position_embeddings", None) or 10**12
    skipped = {i for i, n in enumerate(n_tokens) if n + reserve > limit}
    if skipped and len(skipped) == len(n_tokens):
        spare = f" with --max-tokens {reserve} to spare" if reserve else ""
        raise UserError(
            f"none of the {len(n_tokens)} prompt(s) fits the model's context of {limit} tokens"
            f"{spare} (the shortest has {min(n_tokens)} tokens); use shorter texts"
            f"{', a lower --max-tokens' if reserve else ''} or a model with a longer context"
        )
    if skipped:
        log.warning(
            "skipping %d prompt(s) longer than the model's context (%s tokens)", len(skipped), limit
        )
    return skipped


class Tokenized(NamedTuple):
    token_lists: list[list[int]]  # the ids of every prompt
    skipped: set[int]  # rows too long for the context
    keep: list[int]  # the other rows, in order


def tokenize_prompts(frame: pd.DataFrame, tokenizer, model, reserve: int = 0) -> Tokenized:
    """Tokenize ``frame["prompt"]`` (no special tokens: the prompt text holds its own), set
    ``frame["n_prompt_tokens"]``, and find the rows that do not fit ``model``'s context with
    ``reserve`` tokens to spare (:func:`too_long`)."""
    token_lists = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in frame["prompt"]]
    frame["n_prompt_tokens"] = [len(t) for t in token_lists]
    skipped = too_long(model, frame["n_prompt_tokens"].tolist(), reserve)
    return Tokenized(token_lists, skipped, [i for i in range(len(frame)) if i not in skipped])


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
    save_hidden: bool = False,
) -> int:
    """Measure every row of ``examples`` (whose ``id`` is not yet in ``table``'s shards) and append
    the rows to that table; ``token_lists[i]`` are the prompt ids of ``examples.iloc[i]``.
    A probe with ``logit_ids`` adds a ``logits`` column (the next-token logits over those ids);
    ``save_hidden`` saves each batch's vectors too (:mod:`runs.hidden`), before its rows.
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
            if save_hidden:  # first: an example the table counts as done has its vectors
                vectors = {key: v.cpu().numpy() for key, v in probe.vectors.items()}
                write_hidden(rd.path, table, part["id"].tolist(), vectors)
            rd.append_shard(table, measured_frame(part, measured))
            bar.advance(task, len(rows))
        timing["prompts"] = len(todo)
        timing["tokens"] = int(sum(len(token_lists[i]) for i in todo))
    return len(done)


def probe_samples(
    rd: RunDir,
    cfg: Any,
    examples: pd.DataFrame,
    tokens: Tokenized,
    probe: HiddenProbe,
    metrics: Sequence[str],
    pad_id: int,
) -> int:
    """:func:`probe_into` the run's ``samples`` table for the rows of ``examples`` that fit the
    context; returns how many an earlier (resumed) attempt had already done."""
    return probe_into(
        rd,
        "samples",
        examples.iloc[tokens.keep],
        [tokens.token_lists[i] for i in tokens.keep],
        probe,
        metrics,
        cfg.batch_size,
        pad_id,
        cfg.quiet,
        save_hidden=cfg.save_hidden,
    )


@contextlib.contextmanager
def engine_for(
    rd: RunDir, kind: str, setup: Setup, batch_size: int, model, tokenizer
) -> Iterator[Engine]:
    """The generation engine, recorded in the manifest. ``model``/``tokenizer`` serve hf (a
    model already loaded for the probe). On a GPU a vLLM engine is shut down on leaving, so
    that its memory goes back to the probe's model."""
    engine = make_engine(
        kind,
        setup.resolved.path,
        device=setup.device,
        dtype=setup.dtype,
        batch_size=batch_size,
        max_model_len=setup.max_model_len,
        parallel=setup.parallel,
        model=model,
        tokenizer=tokenizer,
    )
    rd.update(engine=engine.name, engine_options=engine.record())
    try:
        yield engine
    finally:  # also when generation fails, so the memory is not left held
        if kind == "vllm" and setup.device.startswith("cuda"):
            close_engines()


def generate_into(
    rd: RunDir,
    cfg: Any,
    setup: Setup,
    engine: tuple[str, Any, Any],
    table: str,
    sampling: Sampling,
    keys: Sequence[str],
    token_lists: Sequence[Sequence[int]],
    todo: list[int],
    *,
    min_step: int = 32,
    columns: Callable[[list[int], list[Generation]], dict] | None = None,
    unit: str = "prompts",
) -> None:
    """The generation stage: start ``engine`` = (kind, model, tokenizer) (hf uses the model
    already loaded), generate the ``todo`` rows and append each part of ``--batch-size`` (at
    least ``min_step``) prompts to ``table`` as one shard at once, so that an interrupted run
    resumes where it stopped. A shard holds ``id``, ``token_ids``, ``logprobs`` and
    ``finish_reason``, or the columns that ``columns(rows, generations)`` gives."""
    kind, model, tokenizer = engine
    step = max(cfg.batch_size, min_step)
    with (
        engine_for(rd, kind, setup, cfg.batch_size, model, tokenizer) as engine,
        rd.stage("generate") as timing,
        progress(cfg.quiet) as bar,
    ):
        task = bar.add_task(f"generate ({engine.name})", total=len(todo), unit=unit)
        n_tokens = 0
        for lo in range(0, len(todo), step):
            part = todo[lo : lo + step]
            gens = engine.generate(
                [token_lists[i] for i in part],
                [keys[i] for i in part],
                sampling,
                on_done=lambda n: bar.advance(task, n),
            )
            if columns is None:
                shard = {
                    "id": [keys[i] for i in part],
                    "token_ids": [g.token_ids for g in gens],
                    "logprobs": [g.logprobs for g in gens],
                    "finish_reason": [g.finish_reason for g in gens],
                }
            else:
                shard = columns(part, gens)
            rd.append_shard(table, pd.DataFrame(shard))
            n_tokens += sum(len(g.token_ids) for g in gens)
        timing[unit] = len(todo)
        timing["tokens"] = n_tokens


# -- the per-token probe of generated text (correlate, probe) ----------------------------------

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


def token_generation_stage(
    rd, cfg, setup, kind, sampling, ids, texts, token_lists, rows, tokenizer
) -> tuple[Any, Any]:
    """The generation stage the token probe reads: the ``rows`` (positions in ``ids``) not yet
    in ``generations`` are generated, each prompt (``texts``, ``token_lists``) beside its
    sampled tokens and the engine's log-probs. A resumed run with nothing left starts no engine.
    Returns (model, tokenizer): the transformers model when hf generated with it (else None:
    not loaded yet) and the tokenizer to go on with."""
    done = rd.done_ids("generations", "id")
    todo = [i for i in rows if ids[i] not in done]
    if not todo:
        return None, tokenizer
    model = None
    if kind == "hf":  # the probe's model generates too
        model, tokenizer = load_model(rd, setup)

    def columns(part: list[int], gens: list[Generation]) -> dict:
        return {
            "id": [ids[i] for i in part],
            "prompt": [texts[i] for i in part],
            "prompt_token_ids": [token_lists[i] for i in part],
            "token_ids": [g.token_ids for g in gens],
            "engine_logprobs": [g.logprobs for g in gens],
            "finish_reason": [g.finish_reason for g in gens],
        }

    engine = (kind, model, tokenizer)
    generate_into(
        rd, cfg, setup, engine, "generations", sampling, ids, token_lists, todo, columns=columns
    )
    return model, tokenizer


def probed_ids(gens: pd.DataFrame, tokens: pd.DataFrame | None) -> set:
    """The generations whose every token is in ``tokens``: the table that holds the work is
    its own record, so tokens lost with a damaged shard are probed again, whatever else
    survived."""
    have: dict = {}
    if tokens is not None:
        tokens = tokens.drop_duplicates(["id", "step"], keep="last").sort_values(["id", "step"])
        have = tokens.groupby("id")["token_id"].agg(list).to_dict()
    return {
        i for i, t in zip(gens["id"], gens["token_ids"], strict=True) if have.get(i, []) == list(t)
    }


def token_probe_stage(rd, cfg, probe, tokenizer, ids, device) -> None:
    """The per-token probe stage (resumable): one teacher-forced :class:`TokenProbe` pass over
    each ``generations`` row whose tokens are not all in ``tokens``, appended there."""
    gens = rd.read_shards("generations").drop_duplicates("id", keep="last")
    done = probed_ids(gens, rd.read_shards("tokens"))
    gens = gens[~gens["id"].isin(done)].reset_index(drop=True)
    with rd.stage("token_probe") as timing, progress(cfg.quiet) as bar:
        task = bar.add_task("token probe", total=len(gens), unit="prompts")
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
                frame.insert(0, "id", part["id"].to_numpy()[example])
                engine_lp = [lp for lps in part["engine_logprobs"] for lp in lps]
                frame["engine_logprob"] = np.asarray(engine_lp, dtype=np.float64)
                rd.append_shard("tokens", frame)
            bar.advance(task, len(part))
        timing["prompts"] = len(gens)
        timing["tokens"] = int(sum(len(t) for t in gens["token_ids"]))


def token_tables(rd, tokenizer, ids) -> tuple[pd.DataFrame, pd.DataFrame]:
    """tables/prompts.parquet (the generations) and tables/tokens.parquet (the per-token
    metrics) in dataset order, whatever the batch order."""
    gens = rd.read_in_order("generations", ["id"], ids)
    table = pd.DataFrame(
        {
            "id": gens["id"],
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
    tokens = rd.read_in_order("tokens", ["id", "step"], ids)
    if tokens is None:
        raise UserError("no tokens were generated (every generation was empty); see run.log")
    tokens["token"] = tokenizer.batch_decode([[t] for t in tokens["token_id"]])
    first = ["id", "step", "token_id", "token", *TOKEN_STATS, "engine_logprob"]
    tokens = tokens[first + [c for c in tokens.columns if c not in first]]
    rd.write_table("prompts", table)
    rd.write_table("tokens", tokens)
    return table, tokens
