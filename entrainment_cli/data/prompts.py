"""Few-shot GSM8K prompts: baseline (answer only), chain of thought, chain of draft.

Upstream put the instruction after the exemplars, had no question/answer labels and ran the
test question straight into the generation (spec 1.2). Here the instruction comes first,
every example is labelled, and the prompt ends with an "Answer:" cue; for instruct models
the same content can go through the tokenizer's chat template instead. The exemplars are
original problems that share one question set across techniques, so techniques differ only
in the answer style, and every answer ends in a ``#### N`` line that the grader reads.
"""

from __future__ import annotations

from typing import Any

import yaml

from .. import assets_dir
from ..errors import UserError
from .texts import chat_text

TECHNIQUES = ("baseline", "cot", "cod")


def load_template(technique: str) -> dict[str, Any]:
    """The ``{"instruction": str, "shots": [{"question", "answer"}, ...]}`` of a technique."""
    if technique not in TECHNIQUES:
        raise UserError(
            f"unknown prompting technique '{technique}'; known techniques: {', '.join(TECHNIQUES)}"
        )
    path = assets_dir() / "prompts" / f"gsm8k_{technique}.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _chat(tokenizer, instruction: str, shots: list[dict[str, str]], question: str) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise UserError(
            "the model's tokenizer has no chat template; use --no-chat for a plain-text prompt"
        )
    turns: list[dict[str, str]] = []
    for shot in shots:
        turns += [
            {"role": "user", "content": shot["question"].strip()},
            {"role": "assistant", "content": shot["answer"].strip()},
        ]
    turns.append({"role": "user", "content": question.strip()})
    return chat_text(tokenizer, [{"role": "system", "content": instruction}, *turns])


def build_prompt(
    technique: str, question: str, shots: int, tokenizer=None, chat: bool = False
) -> str:
    """The exact text given to the tokenizer: the instruction, the first ``shots`` examples
    (0: zero-shot) and ``question``, as plain text or through the chat template."""
    template = load_template(technique)
    examples = template["shots"]
    if not 0 <= shots <= len(examples):
        raise UserError(
            f"--shots {shots} is out of range for '{technique}'; use 0 to {len(examples)}"
        )
    instruction = template["instruction"].strip()
    used = examples[:shots]
    if chat:
        return _chat(tokenizer, instruction, used, question)
    parts = [f"{instruction}\n\n"]
    parts += [f"Question: {s['question'].strip()}\nAnswer: {s['answer'].strip()}\n\n" for s in used]
    parts.append(f"Question: {question.strip()}\nAnswer:")
    return "".join(parts)


def chat_prompt(tokenizer, system: str, user: str, label: str = "Question: ") -> tuple[str, str]:
    """(exact text given to the tokenizer, 'chat' or 'plain'): the chat template with a
    generation prompt, or for a model without one the plain text
    ``{system}\\n\\n{label}{user}\\nAnswer:``."""
    if tokenizer.chat_template:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, "chat"
    return f"{system}\n\n{label}{user}\nAnswer:", "plain"
