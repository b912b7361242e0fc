"""The public grading API: last boxed answer with nested braces, equivalence by math-verify."""

import pytest

from entrainment_cli.science.answers import extract_boxed, math_equal


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{5}.", "5"),
        (r"first \boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"$\fbox{x^{2}+1}$", "x^{2}+1"),
        (r"The answer is $\boxed 7$.", "7"),
        (r"\boxed {3}", "3"),
        ("no box here, the answer is 5", None),
        (r"\boxed{}", None),
        (r"\boxed{  }", None),
        (r"cut off \boxed{\frac{1}{2", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        (r"\frac12", "0.5"),
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"2\sqrt{2}", r"\sqrt{8}"),
        (r"\frac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}"),
        ("(1,2]", "(1, 2]"),
        (r"(-\infty, 3)", r"(-\infty,3)"),
        (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
        (r"5\text{ cm}", "5"),
        (r"\text{(B)}", "B"),
        (r"\text{Evelyn}", r"\text{Evelyn}"),
        (r"30^\circ", "30"),
        (r"50\%", "50"),
        ("1,000", "1000"),
        ("3, 5", "5, 3"),
        ("-7", "-7"),
        ("10", "10.0"),
    ],
)
def test_math_equal_accepts_equivalent_forms(pred, gold):
    assert math_equal(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("-3", "3"),
        ("12", "123"),  # a substring of the gold is not the gold
        ("23", "123"),
        ("1", "10"),
        ("(1,2)", "(1,2]"),
        (r"\begin{pmatrix}1\\3\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
        (r"\frac{1}{3}", "0.33"),
        (r"\sqrt{2}", "2"),
        ("", "1"),
        ("   ", "1"),
        (None, "1"),
        ("", ""),
        (r"\text{Eve}", r"\text{Evelyn}"),
    ],
)
def test_math_equal_rejects(pred, gold):
    assert not math_equal(pred, gold)


def test_boxed_then_equal_end_to_end():
    out = r"We get $x = \frac{2}{4}$, so the answer is $\boxed{\frac{1}{2}}$."
    assert math_equal(extract_boxed(out), "0.5")
    assert not math_equal(extract_boxed("The answer is 0.5"), "0.5")
