"""`qa robustness` benchmark: our one batched pass against upstream's forward + generate.

Both ways take the same chat-templated MMLU-Pro prompts (the bundled sample's first
``--n-questions`` questions under normal, light and heavy noise, built as `qa robustness`
builds them) on the same model, and produce every metric of ``sparsity.METRICS`` of the final
hidden state at the last prompt token, plus an answer letter:

- upstream: a faithful re-implementation of QA-bench/robustness (spec 4.2). Per prompt, batch
  1: ``model(input_ids, output_hidden_states=True)``, the metrics of
  ``hidden_states[-1][0, -1]`` on the CPU, then a separate greedy
  ``model.generate(input_ids, max_new_tokens=1)`` without an attention mask (the prompt's
  prefill runs twice), the decoded token parsed for a letter A..J, default 'A';
- ours: ``HiddenProbe(model, [-1], ["last-prompt"], logit_ids=letters)`` over ``batches``:
  the decoder once per batch, the LM head on one vector per prompt, the answer the argmax over
  the letters of the prompt's own options.

Before reporting speed it asserts that both ways give the same metrics, and that our letter
logits equal upstream's full-vocabulary logits at those letters. It also counts how often the
two answers differ (upstream's free answer can be a non-letter, or a letter the prompt
lacks). Results go to ``bench/results/robustness-<device>.json``.

    python bench/bench_robustness.py                 # embedded SmolLM2, 10 questions x 3 levels
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled mmlu_pro sample, without waiting

import torch  # noqa: E402
from bench_probe import METRIC_NAMES, check_agree  # noqa: E402  (bench/ is on sys.path)
from common import RESULTS, timed  # noqa: E402

from entrainment_cli.data import registry  # noqa: E402
from entrainment_cli.engines import models  # noqa: E402
from entrainment_cli.engines.probe import HiddenProbe, batches  # noqa: E402
from entrainment_cli.qa import robustness  # noqa: E402
from entrainment_cli.science import noise  # noqa: E402
from entrainment_cli.science.sparsity import compute_metrics  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model spec as for entrain --model")
    p.add_argument("--n-questions", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1, help="timed passes; the fastest counts")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto (float32 on cpu, bfloat16 on cuda)")
    return p.parse_args(argv)


def prompts(tokenizer, n_questions: int) -> tuple[list[list[int]], list[int], list[str]]:
    """(token ids, number of options, gold letter) per prompt, as qa robustness builds them."""
    data = registry.load(registry.get_spec("mmlu_pro"))
    questions = robustness.select(data, None, None).head(n_questions)
    variants = robustness.make_variants(questions, list(noise.LEVELS.values()), seed=0)
    texts = [robustness.build_prompt(tokenizer, t)[0] for t in variants["text"]]
    toks = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return toks, variants["n_options"].tolist(), variants["answer"].tolist()


def upstream_letter(text: str) -> str:
    """Upstream's parse: the token if it is A..J, else the first A..J in it, else 'A'."""
    text = text.strip()
    if text in "ABCDEFGHIJ" and len(text) == 1:
        return text
    return next((c for c in text if c in "ABCDEFGHIJ"), "A")


def run_upstream(model, tokenizer, toks, letter_ids, device):
    metrics, logits, answers = [], [], []
    with torch.inference_mode():
        for ids in toks:
            input_ids = torch.tensor([ids], device=device)
            out = model(input_ids, output_hidden_states=True)
            h = out.hidden_states[-1][0, -1].to("cpu", torch.float32)
            values = compute_metrics(h, METRIC_NAMES)
            metrics.append(torch.stack([values[m] for m in METRIC_NAMES]))
            logits.append(out.logits[0, -1, letter_ids].to("cpu", torch.float32))
            gen = model.generate(
                input_ids, max_new_tokens=1, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            answers.append(upstream_letter(tokenizer.decode(gen[0, len(ids) :])))
    return torch.stack(metrics), torch.stack(logits), answers


def run_ours(model, toks, n_options, letter_ids, device, batch_size, pad_id):
    probe = HiddenProbe(model, [-1], ["last-prompt"], logit_ids=letter_ids)
    metrics = torch.empty(len(toks), len(METRIC_NAMES))
    logits = torch.empty(len(toks), len(letter_ids))
    with torch.inference_mode():
        for batch in batches(toks, batch_size, pad_id, device):
            values = probe.measure(batch.input_ids, batch.attention_mask, METRIC_NAMES)
            values = values[(-1, "last-prompt")]
            metrics[batch.indices] = torch.stack([values[m] for m in METRIC_NAMES], -1).cpu()
            logits[batch.indices] = probe.logits.cpu()
    answers = [noise.LETTERS[int(x[:n].argmax())] for x, n in zip(logits, n_options, strict=True)]
    return metrics, logits, answers


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = models.pick_device(args.device)
    dtype = models.pick_dtype(args.dtype, device)
    resolved = models.resolve_model(args.model)
    model, tokenizer = models.load_model(resolved, device, dtype)
    toks, n_options, gold = prompts(tokenizer, args.n_questions)
    letter_ids = robustness.letter_token_ids(tokenizer, max(n_options), "chat")
    pad_id = tokenizer.pad_token_id

    # warm-up: the longest prompt each way
    longest = [max(range(len(toks)), key=lambda i: len(toks[i]))]
    run_upstream(model, tokenizer, [toks[i] for i in longest], letter_ids, device)
    run_ours(model, [toks[i] for i in longest], [20], letter_ids, device, 1, pad_id)

    up_s, up_all, (up_m, up_l, up_a) = timed(
        lambda: run_upstream(model, tokenizer, toks, letter_ids, device), args.repeats, device
    )
    our_s, our_all, (our_m, our_l, our_a) = timed(
        lambda: run_ours(model, toks, n_options, letter_ids, device, args.batch_size, pad_id),
        args.repeats,
        device,
    )
    max_diff = check_agree({"values": up_m.tolist()}, {"values": our_m.tolist()}, dtype)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(our_l, up_l, rtol=tol, atol=tol)
    differ = sum(a != b for a, b in zip(up_a, our_a, strict=True))
    past_j = sum(noise.LETTERS.index(g) >= 10 for g in gold)
    n = len(toks)
    speed = up_s / our_s
    summary = {
        "model": resolved.id,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "cpu_threads": torch.get_num_threads(),
        "prompts": n,
        "mean_prompt_tokens": sum(map(len, toks)) / n,
        "batch_size": args.batch_size,
        "upstream_seconds": up_all,
        "ours_seconds": our_all,
        "upstream_prompts_per_s": n / up_s,
        "ours_prompts_per_s": n / our_s,
        "speed_ours_over_upstream": speed,
        "max_abs_metric_difference": max_diff,
        "answers_differ": differ,
        "gold_past_j": past_j,
        "accuracy_upstream": sum(a == g for a, g in zip(up_a, gold, strict=True)) / n,
        "accuracy_ours": sum(a == g for a, g in zip(our_a, gold, strict=True)) / n,
    }
    tokens = summary["mean_prompt_tokens"]
    print(f"model {resolved.id}, {device}, {summary['dtype']}, {n} prompts")
    print(f"({tokens:.0f} tokens on average), batch {args.batch_size}")
    print(f"metrics agree (largest absolute difference {max_diff:.2e}); letter logits agree\n")
    print(f"upstream {n / up_s:7.2f} prompts/s   ours {n / our_s:7.2f} prompts/s")
    print(f"speed ours/upstream: {speed:.2f}x")
    acc_up, acc_ours = summary["accuracy_upstream"], summary["accuracy_ours"]
    print(f"answers differ on {differ}/{n} prompts; gold past J on {past_j}")
    print(f"accuracy upstream {acc_up:.2f}, ours {acc_ours:.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"robustness-{'cuda' if device.startswith('cuda') else device}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
