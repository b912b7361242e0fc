"""Answer grading: number parsing, answer extraction with offsets, token spans of the answer."""

import pytest
from transformers import AutoTokenizer

from entrainment_cli.engines.models import resolve_model
from entrainment_cli.science.answers import (
    Answer,
    answer_tokens,
    extract_answer,
    gold_answer,
    is_correct,
    parse_number,
    token_offsets,
)


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_model(None).path)


@pytest.mark.parametrize(
    "s, value",
    [
        ("18", 18.0),
        ("-7", -7.0),
        ("0.75", 0.75),
        ("1,250", 1250.0),
        ("$1,250.50", 1250.5),
        ("-$5", -5.0),
        ("18.", 18.0),
        ("25%", 25.0),
        (" 42 ", 42.0),
        (".5", 0.5),
        ("abc", None),
        ("", None),
        ("1,2", None),
        ("--5", None),
        ("5 apples", None),
    ],
)
def test_parse_number(s, value):
    assert parse_number(s) == value


def _check(text: str, value: float, how: str, written: str) -> None:
    a = extract_answer(text)
    assert (a.value, a.how) == (value, how)
    assert text[a.start : a.end] == written


@pytest.mark.parametrize(
    "text, value, how, written",
    [
        ("It falls to -7 degrees.\n#### -7", -7.0, "hashes", "-7"),
        ("Change: 10 - 9.25\n#### 0.75", 0.75, "hashes", "0.75"),
        ("That is 1,234 seats.\n#### 1,234", 1234.0, "hashes", "1,234"),
        ("#### 5\nwait, again\n#### 6\n", 6.0, "hashes", "6"),
        ("####   $18.\n", 18.0, "hashes", "18"),
        ("{'answer': 8}", 8.0, "json", "8"),
        ('{"answer":-2.5}', -2.5, "json", "-2.5"),
        ('x {  "answer" :  1,250  } y', 1250.0, "json", "1,250"),
        ("{'answer': 1} then {'answer': 2}", 2.0, "json", "2"),
        ("#### {'answer': 18}", 18.0, "json", "18"),
        ("{'answer': 3}\n#### 4", 3.0, "json", "3"),
        ("She has 20 - 12 = 8 apples left.", 8.0, "last_number", "8"),
        ("20-12 is the sum", 12.0, "last_number", "12"),
        ("The #### marks nothing, 3 then 9", 9.0, "last_number", "9"),
    ],
)
def test_extract_answer(text, value, how, written):
    _check(text, value, how, written)


def test_nothing_parsable():
    assert extract_answer("no digits here; #### none") == Answer(None, None, None, "none")
    assert extract_answer("").how == "none"


def test_offsets_point_at_the_number_not_the_braces():
    text = "Work: 3 * 4 = 12.\n#### {'answer': -1,234.5}"
    a = extract_answer(text)
    assert a.value == -1234.5 and text[a.start : a.end] == "-1,234.5"
    assert text[a.end] == "}"


def test_gold_answer():
    assert gold_answer("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == 72.0
    assert gold_answer("a #### 1 b\n#### -3") == -3.0
    assert gold_answer("#### 1,250") == 1250.0
    with pytest.raises(ValueError, match="no number"):
        gold_answer("no separator 12")
    with pytest.raises(ValueError):
        gold_answer("#### none")


def test_is_correct():
    assert is_correct(18.0, 18)
    assert is_correct(0.1 + 0.2, 0.3)
    assert is_correct(1234.0000001, 1234)
    assert not is_correct(18.01, 18)
    assert not is_correct(None, 18)
    assert is_correct(18.5, 18, abs_tol=1.0)


@pytest.mark.parametrize(
    "text",
    [
        "So the total is 1,234.\n#### 1234",
        "  Leading spaces,  double  spaces\n\nand 3.14159 digits",
        "Price: 5 € each, 😀 café naïve 日本語\n#### 10",
        "😀😀😀",
    ],
)
def test_token_offsets_reconstruct_the_text(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    decoded, offsets = token_offsets(tok, ids)
    assert decoded == tok.decode(ids) == text
    assert len(offsets) == len(ids)
    assert offsets[0][0] == 0 and offsets[-1][1] == len(decoded)
    for (lo, hi), (nlo, _) in zip(offsets, offsets[1:], strict=False):
        assert lo <= hi == nlo
    assert "".join(decoded[lo:hi] for lo, hi in offsets) == decoded


def test_token_offsets_give_multibyte_characters_to_the_completing_token(tok):
    ids = tok("a 😀 b", add_special_tokens=False)["input_ids"]
    text, offsets = token_offsets(tok, ids)
    assert "\ufffd" not in "".join(text[lo:hi] for lo, hi in offsets)
    pieces = [text[lo:hi] for lo, hi in offsets]
    assert any("😀" in p for p in pieces)


class FakeTokenizer:
    """Byte pieces decoded as UTF-8 with replacement, like a byte-level BPE; ``sp`` drops
    one leading space like SentencePiece, ``cleanup`` rewrites " ." like HF's cleanup."""

    def __init__(self, pieces, sp=False, cleanup=False):
        self.pieces, self.sp, self.cleanup = pieces, sp, cleanup

    def decode(self, ids):
        text = b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")
        if self.sp and text.startswith(" "):
            text = text[1:]
        return text.replace(" .", ".") if self.cleanup else text


@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("cleanup", [False, True])
def test_token_offsets_any_tokenizer(sp, cleanup):
    euro = "€".encode()
    pieces = [b" Total", b" is", b" ", euro[:1], euro[1:], b"5", b" .", b"\n", b"#### 5"]
    fake = FakeTokenizer(pieces, sp=sp, cleanup=cleanup)
    ids = list(range(len(pieces)))
    text, offsets = token_offsets(fake, ids)
    assert text == fake.decode(ids)
    assert "".join(text[lo:hi] for lo, hi in offsets) == text
    assert offsets[3][0] == offsets[3][1]  # the euro's first byte: nothing of its own
    assert text[slice(*offsets[4])] == "€"
    a = extract_answer(text)
    assert [text[slice(*offsets[i])] for i in answer_tokens(offsets, a.start, a.end)] == ["#### 5"]


def test_token_offsets_empty():
    class Dummy:
        def decode(self, ids):
            return ""

    assert token_offsets(Dummy(), []) == ("", [])


def test_answer_tokens_spell_the_answer(tok):
    ids = tok("So the total is 1,234.\n#### 1234", add_special_tokens=False)["input_ids"]
    text, offsets = token_offsets(tok, ids)
    a = extract_answer(text)
    assert a.how == "hashes" and a.value == 1234.0
    picked = answer_tokens(offsets, a.start, a.end)
    assert picked == sorted(picked) and picked
    spelled = "".join(tok.decode([ids[i]]) for i in picked)
    assert spelled.strip() == "1234"
    # the "1,234" of the reasoning is not among them
    assert all(offsets[i][0] >= text.rindex("####") for i in picked)


def test_answer_tokens_overlap_rule():
    offsets = [(0, 3), (3, 5), (5, 5), (5, 9), (9, 10)]
    assert answer_tokens(offsets, 4, 9) == [1, 3]
    assert answer_tokens(offsets, 3, 5) == [1]
    assert answer_tokens(offsets, 0, 10) == [0, 1, 3, 4]
    assert answer_tokens(offsets, 10, 10) == []
