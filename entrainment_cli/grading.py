"""Public grading API: ``extract_boxed(text)`` and ``math_equal(pred, gold)`` for MATH-style
answers (the implementation lives in the science layer, science/math_answers.py)."""

from .science.math_answers import extract_boxed, math_equal

__all__ = ["extract_boxed", "math_equal"]
