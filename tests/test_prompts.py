"""Few-shot prompt templates and prompt assembly, plain and through a chat template."""

import re

import pytest
from transformers import AutoTokenizer

from entrainment_cli.data import prompts
from entrainment_cli.engines.models import resolve_model
from entrainment_cli.errors import UserError
from entrainment_cli.science.answers import extract_answer, gold_answer

QUESTION = "Tom has 3 boxes of 7 pens. How many pens does he have?"
EQUATION = re.compile(r"^(-?[\d.]+) ([-+*/]) (-?[\d.]+) = (-?[\d.]+)$")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_model(None).path)


@pytest.mark.parametrize("technique", prompts.TECHNIQUES)
def test_template_shape_and_answers(technique):
    template = prompts.load_template(technique)
    assert isinstance(template["instruction"], str) and "#### <number>" in template["instruction"]
    shots = template["shots"]
    assert len(shots) == 8
    for shot in shots:
        assert set(shot) == {"question", "answer"}
        last = shot["answer"].strip().splitlines()[-1]
        assert re.fullmatch(r"#### -?\d+(\.\d+)?", last), last
        assert gold_answer(shot["answer"]) == extract_answer(shot["answer"]).value
        steps = shot["answer"].strip().splitlines()[:-1]
        if technique == "baseline":
            assert steps == []
        elif technique == "cod":
            assert steps and all(len(step.split()) <= 5 for step in steps)
        else:
            assert steps


def test_same_questions_and_answers_across_techniques():
    loaded = {t: prompts.load_template(t)["shots"] for t in prompts.TECHNIQUES}
    questions = {t: [s["question"] for s in shots] for t, shots in loaded.items()}
    golds = {t: [gold_answer(s["answer"]) for s in shots] for t, shots in loaded.items()}
    assert questions["baseline"] == questions["cot"] == questions["cod"]
    assert golds["baseline"] == golds["cot"] == golds["cod"]


def test_draft_arithmetic_holds():
    for shot in prompts.load_template("cod")["shots"]:
        for step in shot["answer"].splitlines()[:-1]:
            a, op, b, c = EQUATION.match(step).groups()
            result = {"+": float.__add__, "-": float.__sub__, "*": float.__mul__}.get(
                op, float.__truediv__
            )(float(a), float(b))
            assert result == pytest.approx(float(c)), step


@pytest.mark.parametrize("shots", [0, 3, 8])
def test_plain_prompt(shots):
    template = prompts.load_template("cot")
    text = prompts.build_prompt("cot", QUESTION, shots)
    assert text.startswith(template["instruction"].strip() + "\n\n")
    assert text.endswith(f"Question: {QUESTION}\nAnswer:")
    assert text.count("Question: ") == shots + 1 and text.count("Answer:") == shots + 1
    assert text.count("\n#### ") == shots
    first = template["shots"][0]
    first_block = f"Question: {first['question']}\nAnswer: {first['answer']}\n\n"
    assert (first_block in text) == (shots > 0)


def test_chat_prompt(tok):
    template = prompts.load_template("cod")
    text = prompts.build_prompt("cod", QUESTION, 3, tokenizer=tok, chat=True)
    assert text.count("<|im_start|>user") == 4 and text.count("<|im_start|>assistant") == 4
    assert text.endswith("<|im_start|>assistant\n")
    assert f"<|im_start|>system\n{template['instruction']}<|im_end|>" in text
    assert template["shots"][2]["answer"] in text and template["shots"][3]["question"] not in text
    assert "Question:" not in text
    zero = prompts.build_prompt("baseline", QUESTION, 0, tokenizer=tok, chat=True)
    assert zero.count("<|im_start|>user") == 1 and QUESTION in zero


def test_no_chat_ignores_the_tokenizer(tok):
    assert prompts.build_prompt("cot", QUESTION, 2, tokenizer=tok) == prompts.build_prompt(
        "cot", QUESTION, 2
    )


def test_chat_without_template_says_no_chat():
    class Plain:
        chat_template = None

    with pytest.raises(UserError, match="no chat template; use --no-chat"):
        prompts.build_prompt("cot", QUESTION, 1, tokenizer=Plain(), chat=True)


def test_chat_without_system_role_folds_the_instruction(tok):
    class NoSystem:
        chat_template = "x"

        def apply_chat_template(self, messages, **kwargs):
            if messages[0]["role"] == "system":
                raise ValueError("System role not supported")
            return tok.apply_chat_template(messages, **kwargs)

    text = prompts.build_prompt("cot", QUESTION, 1, tokenizer=NoSystem(), chat=True)
    instruction = prompts.load_template("cot")["instruction"]
    assert "<|im_start|>user\n" + instruction + "\n\n" in text


def test_errors():
    with pytest.raises(UserError, match="unknown prompting technique 'zz'.*baseline, cot, cod"):
        prompts.build_prompt("zz", QUESTION, 0)
    with pytest.raises(UserError, match="use 0 to 8"):
        prompts.build_prompt("cot", QUESTION, 9)
    with pytest.raises(UserError, match="use 0 to 8"):
        prompts.build_prompt("baseline", QUESTION, -1)
