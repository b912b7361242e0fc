"""Generation engines: hf (transformers generate) always, vLLM where it is installed.

The vLLM tests share one engine on the embedded SmolLM2 (float32), started once per session.
Without vLLM they skip, except in CI (CI=true), where a missing vLLM is a failure.
"""

from __future__ import annotations

import pytest
import torch

from entrainment_cli.engines import generate as gen
from entrainment_cli.engines.generate import Generation, Sampling, make_engine
from entrainment_cli.engines.models import load_model
from entrainment_cli.errors import UserError

CPU = dict(device="cpu", dtype=torch.float32)
QUESTIONS = [
    "Say hi.",
    "Answer with one word, yes or no: is the sky blue?",
    "What is 2+2? Answer with a number only.",
    "Write a haiku about rain.",
    "Name a color.",
]


def _logprob_gap(model, prompts, generations) -> float:
    """Largest |engine log-prob - recomputed log-prob|, recomputed by one plain float32
    forward over prompt + generated tokens, unpadded, one sequence at a time."""
    gap = 0.0
    for prompt, g in zip(prompts, generations, strict=True):
        assert len(g.token_ids) == len(g.logprobs)
        if not g.token_ids:
            continue
        ids = torch.tensor([prompt + g.token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
        ref = logp.gather(1, torch.tensor(g.token_ids)[:, None])[:, 0]
        gap = max(gap, (ref - torch.tensor(g.logprobs)).abs().max().item())
    return gap


def _chat_prompts(tokenizer, questions=QUESTIONS) -> list[list[int]]:
    out = []
    for q in questions:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True
        )
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


def _check_shape(gens: list[Generation], sampling: Sampling, stop_ids: set[int]) -> None:
    for g in gens:
        assert g.finish_reason in ("stop", "length")
        assert len(g.token_ids) == len(g.logprobs)
        assert not stop_ids & set(g.token_ids), "an EOS/stop token was left in token_ids"
        assert all(lp <= 1e-6 for lp in g.logprobs)
        if g.finish_reason == "length":
            assert len(g.token_ids) == sampling.max_tokens
        else:
            assert len(g.token_ids) < sampling.max_tokens


# --- pure parts ---------------------------------------------------------------------------


def test_row_seed_is_stable():
    # A fixed value: changing the derivation would silently change every run's samples.
    assert gen.row_seed(0, "ex-1") == gen.row_seed(0, "ex-1") == 8710708167921648278
    assert gen.row_seed(0, "ex-1") != gen.row_seed(1, "ex-1")
    assert gen.row_seed(0, "ex-1") != gen.row_seed(0, "ex-2")
    assert 0 <= gen.row_seed(123, "x") < 2**63


def test_sampling_validation():
    with pytest.raises(UserError, match="temperature"):
        Sampling(temperature=-0.5)
    with pytest.raises(UserError, match="top-p"):
        Sampling(top_p=0.0)
    with pytest.raises(UserError, match="max tokens"):
        Sampling(max_tokens=0)


def test_make_engine_errors(tiny_llama, monkeypatch):
    with pytest.raises(UserError, match="unknown --engine 'fast'"):
        make_engine("fast", tiny_llama, batch_size=2, **CPU)
    monkeypatch.setattr(gen, "vllm_available", lambda: False)
    with pytest.raises(UserError, match=r"entrainment-cli\[cpu\]") as err:
        make_engine("vllm", tiny_llama, batch_size=2, **CPU)
    assert "\n" not in str(err.value)
    # auto without vLLM is hf, and loads the model itself when none is given
    engine = make_engine("auto", tiny_llama, batch_size=2, **CPU)
    assert engine.name == "hf"


# --- hf engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    model, tokenizer = load_model(_local(tiny_llama), "cpu", torch.float32)
    return model, tokenizer


def _local(path):
    from entrainment_cli.engines.models import ResolvedModel

    return ResolvedModel(str(path), path, "local")


def _hf(model_tok, batch_size=3, **kw):
    model, tokenizer = model_tok
    return make_engine(
        "hf",
        model.name_or_path,
        batch_size=batch_size,
        model=model,
        tokenizer=tokenizer,
        **CPU,
        **kw,
    )


TINY_PROMPTS = [
    [1, 17, 300, 42, 9],
    [1, 5, 6, 7, 8, 9, 10, 11, 12],
    [1, 99],
    [1] + list(range(200, 214)),
]
TINY_KEYS = ["a", "b", "c", "d"]


def test_hf_reproducible_batch_independent_and_raw_logprobs(tiny):
    sampling = Sampling(temperature=0.7, top_p=0.9, max_tokens=10, seed=3)
    engine = _hf(tiny, batch_size=3)
    done: list[int] = []
    first = engine.generate(TINY_PROMPTS, TINY_KEYS, sampling, on_done=done.append)
    assert sum(done) == len(TINY_PROMPTS) and len(done) == 2  # batches of 3 + 1
    again = engine.generate(TINY_PROMPTS, TINY_KEYS, sampling)
    assert [g.token_ids for g in again] == [g.token_ids for g in first]
    # Other batch composition and order: each row has its own random stream.
    solo = _hf(tiny, batch_size=1).generate(TINY_PROMPTS[::-1], TINY_KEYS[::-1], sampling)[::-1]
    assert [g.token_ids for g in solo] == [g.token_ids for g in first]
    other = engine.generate(TINY_PROMPTS, TINY_KEYS, Sampling(0.7, 0.9, 10, seed=4))
    assert [g.token_ids for g in other] != [g.token_ids for g in first]
    # A random tiny model never says EOS in 10 tokens: all "length".
    _check_shape(first, sampling, engine.stop_ids)
    assert {g.finish_reason for g in first} == {"length"}
    # Log-probs are of the raw distribution (temperature 1, no top-p), despite T = 0.7.
    gap = _logprob_gap(tiny[0], TINY_PROMPTS, first)
    print(f"\nhf tiny-llama: max |logprob - recomputed| = {gap:.2e}")
    assert gap < 1e-4


def test_hf_greedy_is_argmax(tiny):
    sampling = Sampling(temperature=0.0, top_p=0.9, max_tokens=6, seed=0)
    a = _hf(tiny).generate(TINY_PROMPTS, TINY_KEYS, sampling)
    b = _hf(tiny).generate(TINY_PROMPTS, TINY_KEYS, Sampling(0.0, 0.9, 6, seed=99))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    model = tiny[0]
    for prompt, g in zip(TINY_PROMPTS, a, strict=True):
        ids = torch.tensor([prompt + g.token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        assert logits.argmax(-1).tolist() == g.token_ids


def test_hf_eos_first_gives_empty_generation(tiny):
    """Rows whose prompt ends in token 99 get EOS forced as their first token."""
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id

    def force_eos(module, args, kwargs, output):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:  # the prefill step only
            rows = ids[:, -1] == 99
            output.logits[rows, -1, eos] += 1e4
        return output

    handle = model.register_forward_hook(force_eos, with_kwargs=True)
    try:
        for temperature in (1.0, 0.0):
            sampling = Sampling(temperature=temperature, max_tokens=5)
            gens = _hf(tiny, batch_size=4).generate(TINY_PROMPTS, TINY_KEYS, sampling)
            assert gens[2] == Generation([], [], "stop")
            assert all(len(g.token_ids) == 5 for i, g in enumerate(gens) if i != 2)
            # and a batch of nothing but EOS-first rows
            assert _hf(tiny).generate([[1, 99]], ["z"], sampling) == [Generation([], [], "stop")]
    finally:
        handle.remove()


def test_hf_max_model_len_caps_each_row(tiny):
    engine = _hf(tiny, max_model_len=12)
    gens = engine.generate(TINY_PROMPTS[:3], TINY_KEYS[:3], Sampling(max_tokens=8))
    assert [len(g.token_ids) for g in gens] == [7, 3, 8]
    assert {g.finish_reason for g in gens} == {"length"}
    with pytest.raises(UserError, match="example d: the prompt has 15 tokens"):
        engine.generate(TINY_PROMPTS, TINY_KEYS, Sampling())


def test_hf_embedded_stops_and_matches_forward(embedded):
    model, tokenizer = load_model(embedded, "cpu", torch.float32)
    engine = make_engine("hf", embedded.path, batch_size=4, model=model, tokenizer=tokenizer, **CPU)
    prompts = _chat_prompts(tokenizer)
    sampling = Sampling(temperature=0.8, top_p=0.9, max_tokens=40, seed=0)
    gens = engine.generate(prompts, [f"q{i}" for i in range(len(prompts))], sampling)
    _check_shape(gens, sampling, engine.stop_ids)
    assert "stop" in {g.finish_reason for g in gens}, "the instruct model never stopped"
    gap = _logprob_gap(model, prompts, gens)
    print(f"\nhf SmolLM2 float32: max |logprob - recomputed| = {gap:.2e}")
    assert gap < 1e-4


# --- vLLM engine --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smol_hf(embedded):
    return load_model(embedded, "cpu", torch.float32)


def test_vllm_generates_reproducibly_with_raw_logprobs(vllm_engine, embedded, smol_hf):
    model, tokenizer = smol_hf
    prompts = _chat_prompts(tokenizer)
    keys = [f"q{i}" for i in range(len(prompts))]
    sampling = Sampling(temperature=1.0, top_p=0.9, max_tokens=48, seed=0)
    done: list[int] = []
    first = vllm_engine.generate(prompts, keys, sampling, on_done=done.append)
    assert sum(done) == len(prompts)
    _check_shape(first, sampling, vllm_engine.stop_ids)
    assert "stop" in {g.finish_reason for g in first}, "the instruct model never stopped"
    # Same seed, other batch (reversed, one prompt left out, one added): same samples.
    extra = _chat_prompts(tokenizer, ["Count to five."])
    order = [3, 2, 1, 0]
    second = vllm_engine.generate(
        [prompts[i] for i in order] + extra, [keys[i] for i in order] + ["q9"], sampling
    )
    for j, i in enumerate(order):
        assert second[j].token_ids == first[i].token_ids
        assert second[j].finish_reason == first[i].finish_reason
    # Another seed: other samples.
    other = vllm_engine.generate(prompts, keys, Sampling(1.0, 0.9, 48, seed=1))
    assert [g.token_ids for g in other] != [g.token_ids for g in first]
    # Log-probs are raw: the same as a plain float32 transformers forward.
    gap = _logprob_gap(model, prompts, first)
    print(f"\nvLLM SmolLM2 float32: max |logprob - transformers forward| = {gap:.2e}")
    assert gap < 1e-3


def test_vllm_eos_first_and_engine_reuse(vllm_engine, embedded, smol_hf):
    _, tokenizer = smol_hf
    # An assistant turn that is already complete: greedy decoding ends it at once.
    done = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": "Say hi."},
            {"role": "assistant", "content": "Hello! How can I help you today?"},
        ],
        tokenize=True,
    )
    done = list(done["input_ids"] if hasattr(done, "keys") else done)
    eos_at = max(i for i, t in enumerate(done) if t in vllm_engine.stop_ids)
    prompt = done[:eos_at]  # the finished answer with its EOS cut off: P(EOS) = 0.63 next
    (g,) = vllm_engine.generate([prompt], ["eos"], Sampling(temperature=0.0, max_tokens=8))
    assert g == Generation([], [], "stop")
    again = make_engine("vllm", embedded.path, batch_size=2, **CPU)
    assert again.llm is vllm_engine.llm  # cached: no second engine start
