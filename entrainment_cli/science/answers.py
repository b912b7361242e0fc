"""Answers parsed from a model's output and compared with the gold: GSM8K numbers (and the
tokens that spell them), MATH's last ``\\boxed{}`` compared by math-verify, and option letters.

GSM8K (spec 3.4, 5.2): upstream dropped minus signs, glued together every digit after
``####``, counted only the first JSON answer and found answer tokens by a per-character
backward search that could land in the reasoning (spec 7, items 5 and 6). Here a number
keeps its sign and decimals, the last answer wins, and answer tokens are the ones whose
character span in the decoded text overlaps the span of the parsed number.

MATH (spec 3.7): upstream took the text after the first ``boxed`` up to a brace count that
broke on nested braces, and compared normalised strings, so ``\\frac12`` and ``0.5`` differed
and an empty box could match an empty gold. Here the box is read with balanced braces and the
two answers are compared as mathematics (fractions, radicals, intervals, matrices, sets,
percentages, units and degrees normalised) by HuggingFace's math-verify; an empty or missing
answer is never correct. Pure functions, no I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# A number as written: optional sign, digits with optional thousands commas, optional
# decimals. A "-" counts as a sign only when no word character or closing bracket precedes
# it, so "20-12" is 20 and 12, not 20 and -12. Digits right after a digit or "." never
# start a number, so "1.2.3" is not read as ending in 3.
_NUM = (
    r"(?:(?<![\w)\]])-)?(?<![\d.])"
    r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"  # "1,250" is one number; "1,2345" is 1 and 2345
    r"(?:\.\d+)?"
)
NUMBER = re.compile(_NUM)
_JSON = re.compile(
    r"""\{\s*(["'])answer\1\s*:\s*(["']?)\$?\s*(?P<num>""" + _NUM + r""")\2\s*\}""",
    re.IGNORECASE,
)
_HASHES = re.compile(r"####[\s*]*\$?\s*(?P<num>" + _NUM + r")")
_PLAIN = re.compile(r"[+-]?\$?[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\$?[+-]?\.\d+")


def parse_number(s: str) -> float | None:
    """``s`` as a float, or None: sign and decimals kept; "$", "1,250"-style commas and one
    trailing "." or "%" allowed; anything else (words, units, "1,2", "--5") is not a number."""
    t = s.strip()
    if t[-1:] in {".", "%"}:
        t = t[:-1]
    if not _PLAIN.fullmatch(t) or t.count("-") + t.count("+") > 1:
        return None
    value = float(t.replace("$", "").replace(",", ""))
    return value if math.isfinite(value) else None


def gold_answer(solution: str) -> float:
    """The number after the last "####" of a GSM8K ``answer`` field."""
    _, sep, tail = solution.rpartition("####")
    m = NUMBER.search(tail) if sep else None
    if m is None:
        raise ValueError(f"no number after '####' in the gold answer: {solution[-80:]!r}")
    value = parse_number(m.group())
    if value is None:  # unreachable for a NUMBER match, except an overflow to inf
        raise ValueError(f"gold answer {m.group()!r} is not a finite number")
    return value


@dataclass(frozen=True)
class Answer:
    value: float | None
    start: int | None  # text[start:end] is the number as written (sign included, no "$")
    end: int | None
    how: str  # json | hashes | last_number | none


NO_ANSWER = Answer(None, None, None, "none")


def _answer(m: re.Match, group: str | int, how: str) -> Answer:
    value = parse_number(m.group(group))
    if value is None:
        return NO_ANSWER
    return Answer(value, m.start(group), m.end(group), how)


def _last(pattern: re.Pattern, text: str) -> re.Match | None:
    matches = list(pattern.finditer(text))
    return matches[-1] if matches else None


def extract_answer(text: str) -> Answer:
    """The model's final answer: the last ``{"answer": N}`` object, else the number right
    after the last "####", else the last number anywhere in the text.

    The last, not the first as upstream: the final answer follows any number the reasoning
    mentions. (A continuation that goes on to invent the next few-shot example should be cut
    before calling this.) JSON beats "####" because upstream's prompt style writes
    ``#### {'answer': N}``, where the number sits inside the braces.
    """
    m = _last(_JSON, text)
    if m is not None:
        return _answer(m, "num", "json")
    at = text.rfind("####")
    m = _HASHES.match(text, at) if at >= 0 else None
    if m is not None:
        return _answer(m, "num", "hashes")
    m = _last(NUMBER, text)
    if m is not None:
        return _answer(m, 0, "last_number")
    return NO_ANSWER


def is_correct(
    pred: float | None, gold: float, rel_tol: float = 1e-6, abs_tol: float = 1e-6
) -> bool:
    """Numeric equality with a float tolerance, so "18.00" matches 18; no answer is wrong."""
    if pred is None:
        return False
    return math.isclose(pred, gold, rel_tol=rel_tol, abs_tol=abs_tol)


def _common_prefix(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def token_offsets(tokenizer, token_ids) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of ``token_ids`` and each token's ``(start, end)`` span in it.

    Token i ends where the decode of ``ids[: i + 1]`` stops agreeing with the full decode.
    Decoding whole prefixes, not single tokens, keeps SentencePiece leading spaces and
    byte-level merges exactly as the tokenizer renders the full text. A prefix ending inside
    a multi-byte character decodes to U+FFFD, which the full text does not contain, so that
    character goes to the token that completes it (the earlier ones get empty spans). Spans
    are contiguous and monotone and together cover the whole text. The cost is quadratic in
    the length (about 0.2 s for 1,200 SmolLM2 tokens), small beside generating them.
    """
    ids = [int(t) for t in token_ids]
    text = tokenizer.decode(ids)
    offsets: list[tuple[int, int]] = []
    end = 0
    for i in range(len(ids)):
        start = end
        if i == len(ids) - 1:
            end = len(text)
        else:
            end = max(start, _common_prefix(tokenizer.decode(ids[: i + 1]), text))
        offsets.append((start, end))
    return text, offsets


def answer_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens sharing at least one character with ``[start, end)``; an empty
    span (part of a multi-byte character, see ``token_offsets``) shares none."""
    return [i for i, (lo, hi) in enumerate(offsets) if lo < end and hi > start and hi > lo]


def span_tokens(tokenizer, token_ids, start: int, end: int) -> list[int]:
    """:func:`answer_tokens` of ``[start, end)`` in the decode of ``token_ids``, without
    decoding every prefix: the prefix whose decode first reaches ``start`` is found by
    bisection (about log2(n) decodes), then spans are measured as in :func:`token_offsets`
    from a few tokens before it. For a short span near the end of a long chain of thought
    this is what keeps grading cheap (``token_offsets`` is quadratic in the length)."""
    ids = [int(t) for t in token_ids]
    text = tokenizer.decode(ids)

    def reach(i: int) -> int:  # characters of ``text`` that the first i tokens render
        return len(text) if i >= len(ids) else _common_prefix(tokenizer.decode(ids[:i]), text)

    lo, hi = 0, len(ids)
    while lo < hi:  # the fewest tokens whose decode reaches past ``start``
        mid = (lo + hi) // 2
        if reach(mid) > start:
            hi = mid
        else:
            lo = mid + 1
    first = max(0, lo - 4)  # a multi-byte character may hold back a few earlier tokens
    out, begin = [], reach(first)
    for i in range(first, len(ids)):
        stop = max(begin, reach(i + 1))
        if begin < end and stop > start and stop > begin:
            out.append(i)
        if begin >= end:
            break
        begin = stop
    return out


# -- multiple choice ---------------------------------------------------------------------------

# A letter standing alone: no letter, digit, apostrophe or hyphen touching it ("I'm", "B-52").
_ALONE = r"(?<![\w'’-])[({\[]?\s*({L})\s*[)}\]]?(?![\w'’-])"
# "the answer is (B)", "Answer: C", "final answer - D", "option E", "choice A"
_STATED = r"(?:answer\s*(?:is|would\s+be|:|-)?|option|choice)\s*[:\-]?\s*\**"


def parse_choice(text: str, letters: str = "ABCDE") -> str | None:
    """The option letter a reply gives, or None; never a letter taken out of a word.

    In order: a stated answer ("The answer is (B)", "Answer: C", "option D"); a reply that is
    only a letter ("B", "(B)", "**B.**"); a reply that starts with a marked letter ("B) ...",
    "C. ..."); the first marked letter anywhere ("(D)", "D)", "D:" or "D." ending a sentence).
    Lower-case letters never count, nor does a capital inside or next to a word ("The",
    "I'm", "B-52"). "A" and "I" are also English words, so a bare "A"/"I" followed by more
    text ("A good guess", "I think") is not an answer; marked they are ("(A)", "A.").
    Upstream took the first character of the reply whose upper case was a letter A-E, so
    "The answer..." gave E (spec 7.2 item 14).
    """
    ls = "".join(sorted(set(letters)))
    if not ls.isalpha() or not ls.isupper():
        raise ValueError(f"letters must be capital letters, got {letters!r}")
    group = f"[{ls}]"
    alone = _ALONE.replace("{L}", group)
    cleaned = text.replace("*", "").strip()
    m = re.search(r"(?i:" + _STATED + r")" + alone, cleaned)
    if m:
        return m.group(1)
    m = re.fullmatch(r"[\"'`]?[({\[]?\s*(" + group + r")\s*[)}\]]?[.:!]?[\"'`]?", cleaned)
    if m:
        return m.group(1)
    m = re.match(r"[({\[]?\s*(" + group + r")\s*(?:[)}\]]|[.:](?=\s|$))", cleaned)
    if m:
        return m.group(1)
    marked = (
        r"(?<![\w'’-])(?:[({\[]\s*(" + group + r")\s*[)}\]]"  # (D)
        r"|(" + group + r")(?:\)|:|\.(?=\s|$))(?![\w'’-]))"  # D)  D:  D.
    )
    m = re.search(marked, cleaned)
    if m:
        return m.group(1) or m.group(2)
    for m in re.finditer(alone, cleaned):  # a bare capital: B, C, ... but not "A good" / "I do"
        letter = m.group(1)
        rest = cleaned[m.end() :].lstrip()
        if letter in "AI" and rest and rest[0].isalpha():
            continue
        return letter
    return None


# -- MATH: the last \boxed{}, compared by math-verify ------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)\s*")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces kept), or of a
    braceless ``\\boxed 5``; None when there is none, it is unbalanced, or it is empty."""
    span = boxed_span(text)
    return None if span is None else text[span[0] : span[1]]


def boxed_span(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of what :func:`extract_boxed` returns, as a slice of ``text``."""
    for match in reversed(list(_BOX.finditer(text))):
        start = match.end()
        if start < len(text) and text[start] == "{":
            depth = 0
            for i in range(start, len(text)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    inner = text[start + 1 : i]
                    lo = start + 1 + (len(inner) - len(inner.lstrip()))
                    hi = start + 1 + len(inner.rstrip())
                    return (lo, hi) if hi > lo else None
            return None  # unbalanced: the output was cut off inside the box
        if match.group().endswith((" ", "\t")):  # "\boxed 5": up to the next space or "$"
            content = re.match(r"[^\s$]+", text[start:])
            return (start, start + content.end()) if content else None
    return None


def _normalized(s: str) -> str:
    s = re.sub(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right|!|,|;|:)|\s+|\$", "", s)
    return s.replace("dfrac", "frac").replace("tfrac", "frac").rstrip(".")


def math_equal(pred: str | None, gold: str) -> bool:
    """Whether two LaTeX answers are mathematically equal (math-verify), else whether they are
    identical after removing spacing and text wrappers. Never a substring match."""
    if pred is None or not pred.strip() or not gold.strip():
        return False
    if _normalized(pred) == _normalized(gold):
        return True
    from math_verify import parse, verify

    try:
        gold_parsed = parse(f"${gold}$")
        pred_parsed = parse(f"${pred}$")
        return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed))
    except Exception:  # math-verify raises on inputs sympy cannot handle: not equal
        return False


# -- probe --answer-field: the user's gold, of any kind ----------------------------------------


@dataclass(frozen=True)
class Graded:
    prediction: str | None  # the answer as written in the output
    start: int | None  # text[start:end] is the prediction
    end: int | None
    how: str  # boxed | json | hashes | last_number | first_line | none
    correct: bool


def _plain(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().strip("\"'`*").rstrip(".!").strip().casefold()


def grade_output(text: str, gold: str) -> Graded:
    """Grade a free generation against a gold answer of any kind, by the first rule that
    applies: a ``\\boxed{}`` in the output is compared by :func:`math_equal`; a numeric gold
    with the output's final number (:func:`extract_answer`); any other gold with the output's
    first non-empty line, ignoring case, surrounding quotes and spacing, and a final period.
    No answer is never correct."""
    span = boxed_span(text)
    if span is not None:
        pred = text[span[0] : span[1]]
        return Graded(pred, *span, "boxed", math_equal(pred, gold))
    number = parse_number(gold) if gold.strip() else None
    if number is not None:
        a = extract_answer(text)
        if a.value is None:
            return Graded(None, None, None, "none", False)
        return Graded(text[a.start : a.end], a.start, a.end, a.how, is_correct(a.value, number))
    line = re.search(r"\S[^\n]*", text)
    if line is None:
        return Graded(None, None, None, "none", False)
    pred = line.group().rstrip()
    start = line.start()
    return Graded(pred, start, start + len(pred), "first_line", _plain(pred) == _plain(gold))
