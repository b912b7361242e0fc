"""MATH-style answers: the last ``\\boxed{}`` of an output, and equivalence by math-verify.

Upstream (spec 3.7) took the text after the first ``boxed`` up to a brace count that broke on
nested braces, and compared normalised strings, so ``\\frac12`` and ``0.5`` differed and an empty
box could match an empty gold. Here the box is read with balanced braces and the two answers are
compared as mathematics (fractions, radicals, intervals, matrices, sets, percentages, units and
degrees normalised) by HuggingFace's math-verify; an empty or missing answer is never correct.
"""

from __future__ import annotations

import re

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
