"""Shared fixtures: no network, tiny random models, the embedded SmolLM2 resolved once."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from entrainment_cli.cli.app import app  # noqa: E402
from entrainment_cli.engines import models  # noqa: E402


@pytest.fixture(autouse=True)
def _runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTRAIN_RUNS_DIR", str(tmp_path / "runs"))


@pytest.fixture(scope="session")
def embedded() -> models.ResolvedModel:
    return models.resolve_model(None)


def _tiny(kind: str, tokenizer_dir: Path, out: Path) -> Path:
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    if kind.startswith("llama"):
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True))
        if kind == "llama-peaked":
            # Larger (tied) embeddings make next-token distributions peaked, as in a trained
            # model: nuclei from 1 to thousands of tokens, not nearly the whole vocabulary.
            model.model.embed_tokens.weight.data *= 12
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama(embedded, tmp_path_factory) -> Path:
    return _tiny("llama", embedded.path, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_peaked(embedded, tmp_path_factory) -> Path:
    return _tiny("llama-peaked", embedded.path, tmp_path_factory.mktemp("tiny-peaked"))


@pytest.fixture(scope="session")
def tiny_qwen(embedded, tmp_path_factory) -> Path:
    return _tiny("qwen2", embedded.path, tmp_path_factory.mktemp("tiny-qwen2"))


@contextlib.contextmanager
def _ctrl_c_at(cls, name: str, n: int):
    """Ctrl-C (KeyboardInterrupt) at the ``n``-th call of ``cls.name`` inside the block, as if
    the user pressed it mid-run; the method is itself again after the block."""
    real, calls = getattr(cls, name), [0]

    def dying(self, *a, **kw):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cls, name, dying)
        yield


@pytest.fixture
def ctrl_c():
    """``with ctrl_c(HiddenProbe, "measure", 3): ...``: see :func:`_ctrl_c_at`."""
    return _ctrl_c_at


@pytest.fixture
def script_engine(monkeypatch):
    """``script_engine(model, reply, logprob=0.0)``: every engine the pipeline makes
    'generates' ``reply(key)`` for each prompt (each token at ``logprob``), so a grading
    outcome is known; the probes still run on the real model. Returns the list of sampling
    temperatures the engine was asked for."""
    from transformers import AutoTokenizer

    from entrainment_cli.engines import generate
    from entrainment_cli.engines.generate import Generation

    def script(model, reply, logprob: float = 0.0) -> list[float]:
        tok, real, seen = AutoTokenizer.from_pretrained(model), generate.make_engine, []

        def make(*args, **kwargs):
            engine = real(*args, **kwargs)

            def gen(prompts, keys, sampling, on_done=None):
                seen.append(sampling.temperature)
                out = []
                for key in keys:
                    ids = tok(reply(key), add_special_tokens=False)["input_ids"]
                    out.append(Generation(ids, [logprob] * len(ids), "stop"))
                if on_done:
                    on_done(len(keys))
                return out

            engine.generate = gen
            return engine

        monkeypatch.setattr("entrainment_cli.pipeline.make_engine", make)
        return seen

    return script


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def vllm_engine(embedded):
    """One vLLM engine on the embedded SmolLM2 (float32) for the whole session.

    ``correlate --engine vllm`` on the embedded model at ``--dtype auto`` reuses it (the
    engines are cached by path, dtype and max_model_len), so it starts once (~30 s here).
    """
    from entrainment_cli.engines import generate

    if not generate.vllm_available():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "vLLM is not installed but CI=true: CI must run the vLLM tests "
                "(pip install 'entrainment-cli[cpu]')"
            )
        pytest.skip("vLLM is not installed")
    engine = generate.make_engine(
        "vllm", embedded.path, batch_size=8, device="cpu", dtype=torch.float32
    )
    yield engine
    generate.close_engines()
