"""The hook probe captures exactly what output_hidden_states=True would, without asking for it."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from entrainment_cli.engines.probe import HiddenProbe, batches, parse_layers
from entrainment_cli.errors import UserError
from entrainment_cli.science.sparsity import compute_metrics

SEQS = [[5, 17, 99, 3, 8, 42, 7], [11, 12], [300, 1, 2, 3], [9]]


def _reference(model, seq):
    """Unpadded single-sequence pass with every hidden state (the upstream way)."""
    out = model(torch.tensor([seq]), output_hidden_states=True)
    return [h[0] for h in out.hidden_states]  # L + 1 entries of [T, d]


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_capture_equals_output_hidden_states(request, fixture, side, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(fixture)).eval()
    n = model.config.num_hidden_layers
    layers = parse_layers("all", n)
    assert layers == [*range(n + 1), -1]
    probe = HiddenProbe(model, layers, ["last-prompt", "mean-prompt"])

    with torch.no_grad():
        refs = [_reference(model, seq) for seq in SEQS]
    forward = type(probe.decoder).forward

    def guarded(self, *args, **kwargs):
        assert not kwargs.get("output_hidden_states"), "probe asked for all hidden states"
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(probe.decoder), "forward", guarded)
    seen = 0
    for batch in batches(SEQS, 3, pad_id=0, device="cpu", padding_side=side):
        got = probe.capture(batch.input_ids, batch.attention_mask)
        for row, i in enumerate(batch.indices):
            ref = refs[i]
            for layer in range(n):  # embeddings and raw residual streams
                torch.testing.assert_close(
                    got[(layer, "last-prompt")][row], ref[layer][-1], rtol=1e-4, atol=1e-5
                )
                torch.testing.assert_close(
                    got[(layer, "mean-prompt")][row], ref[layer].mean(0), rtol=1e-4, atol=1e-5
                )
            # HF's last hidden state is after the final norm: our layer -1
            torch.testing.assert_close(
                got[(-1, "last-prompt")][row], ref[n][-1], rtol=1e-4, atol=1e-5
            )
            # our layer L is the raw residual stream; the final norm maps it to layer -1
            with torch.no_grad():
                normed = probe.norm(got[(n, "last-prompt")][row])
            torch.testing.assert_close(normed, ref[n][-1], rtol=1e-4, atol=1e-5)
            seen += 1
    assert seen == len(SEQS)


def test_forward_stops_after_last_needed_layer(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    calls = []
    for i, block in enumerate(model.model.layers):
        block.register_forward_hook(lambda *_a, i=i: calls.append(i))
    probe = HiddenProbe(model, [1], ["last-prompt"])
    batch = next(batches(SEQS, 4, 0, "cpu"))
    got = probe.capture(batch.input_ids, batch.attention_mask)
    assert calls == [0] and list(got) == [(1, "last-prompt")]
    assert all(not b._forward_hooks or len(b._forward_hooks) == 1 for b in model.model.layers)


def test_measure_is_metrics_of_captured_vectors(tiny_qwen):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen).eval()
    probe = HiddenProbe(model, [-1, 2], ["last-prompt"])
    batch = next(batches(SEQS, 4, 0, "cpu"))
    vectors = probe.capture(batch.input_ids, batch.attention_mask)
    measured = probe.measure(batch.input_ids, batch.attention_mask, ["l1", "hoyer"])
    for key, vec in vectors.items():
        for name, value in compute_metrics(vec, ["l1", "hoyer"]).items():
            torch.testing.assert_close(measured[key][name], value)


def test_batches_sort_and_pad():
    out = list(batches(SEQS, 2, pad_id=-7, device="cpu", padding_side="left"))
    assert [b.indices for b in out] == [[0, 2], [1, 3]]
    assert out[0].input_ids[1].tolist() == [-7, -7, -7, 300, 1, 2, 3]
    assert out[0].attention_mask[1].tolist() == [0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize(
    ("spec", "want"),
    [("-1", [-1]), ("0,2,-1", [0, 2, -1]), ("1-3", [1, 2, 3]), ("3, 3", [3])],
)
def test_parse_layers(spec, want):
    assert parse_layers(spec, 3) == want


@pytest.mark.parametrize(
    ("spec", "message"),
    [("4", "out of range"), ("-2", "out of range"), ("x", "cannot read"), ("", "cannot read")],
)
def test_parse_layers_errors(spec, message):
    with pytest.raises(UserError, match=message):
        parse_layers(spec, 3)
