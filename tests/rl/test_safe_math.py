"""rl.tasks.safe_math, the bounded exact parser every verifier reads a model's answer with: standard precedence,
what it refuses (and why), sympy construction bounded before it runs, LaTeX fractions, and agreement with exact
arithmetic over generated expressions. Edges by hand: test_safe_math_more.py."""

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1jax.rl.tasks import safe_math


@pytest.mark.parametrize("text,value", [
    ("1+2*3", 7), ("(1+2)*3", 9), ("2^3^2", 512), ("-2^2", -4), ("2*-3", -6), ("7/2", Fraction(7, 2)),
    (r"\frac{3}{4}+1", Fraction(7, 4)), ("2(3+4)", 14), ("1.5*2", 3), ("10-2-3", 5), ("12/3/2", 2),
    ("2^64", 2**64), ("2^-64", Fraction(1, 2**64)),  # the exponent bound (MAX_EXPONENT) is inclusive
])
def test_safe_math_evaluates_exactly_with_standard_precedence(text, value):
    assert safe_math.evaluate(safe_math.parse(text)) == value


@pytest.mark.parametrize("text,reason", [
    ("9^9^9^9", "exponent"), ("2^99999", "exponent"), ("(" * 100 + "1" + ")" * 100, "nesting"),
    ("1" * 100, "digits"), ("1/0", "division by zero"), ("x+1", "name"), ("__import__('os')", "character"),
    ("2 3", "after the expression"), ("(1+2", "end of answer"), ("1+", "end of answer"), ("", "empty"),
    ("((2^60)^60)^60", "bits"), ("1" + "+1" * 300, "longer than"), ("0^-1", "division by zero"),
    ("(3-3)^(-2)", "division by zero"),
])
def test_safe_math_rejects_what_it_cannot_bound(text, reason):
    with pytest.raises(safe_math.MathError, match=reason):
        safe_math.evaluate(safe_math.parse(text))


def test_safe_math_bounds_sympy_construction():
    with pytest.raises(safe_math.MathError, match="too large"):
        safe_math.to_sympy(safe_math.parse("((x+1)^16)^16", names="x"))
    with pytest.raises(safe_math.MathError, match="exponent"):
        safe_math.to_sympy(safe_math.parse("x^x", names="x"))
    assert str(safe_math.to_sympy(safe_math.parse("3x(x+1)", names="x")).expand()) == "3*x**2 + 3*x"


def test_safe_math_bounds_sums_of_fractions_by_their_common_denominator():
    """cancel() of a sum of fractions multiplies the denominators: eight 1/(x+k)^16 make degree 128."""
    import time

    text = "+".join(f"1/(x+{k})^16" for k in range(1, 9))
    start = time.perf_counter()
    with pytest.raises(safe_math.MathError, match="too large"):
        safe_math.to_sympy(safe_math.parse(text, names="x"))
    assert time.perf_counter() - start < 1.0
    two = safe_math.parse("1/(x+1)+1/(x+2)", names="x")  # = (2x+3)/((x+1)(x+2)): degrees 1 over 2
    with pytest.raises(safe_math.MathError, match="too large"):
        safe_math.to_sympy(two, max_degree=2)
    assert safe_math.to_sympy(two, max_degree=3) is not None
    assert safe_math.to_sympy(safe_math.parse("x^3+x^2+x+1", names="x"), max_degree=3) is not None  # the max


def _expressions():
    leaf = st.integers(0, 99).map(lambda n: (str(n), Fraction(n)))

    def combine(children):
        def build(pair, op):
            (ta, va), (tb, vb) = pair
            if op == "/" and vb == 0:
                return f"({ta})+({tb})", va + vb
            value = {"+": va + vb, "-": va - vb, "*": va * vb, "/": va / vb if vb else 0}[op]
            return f"({ta}){op}({tb})", value
        return st.builds(build, st.tuples(children, children), st.sampled_from("+-*/"))

    return st.recursive(leaf, combine, max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(_expressions())
def test_safe_math_agrees_with_exact_arithmetic(expression):
    text, value = expression
    assert safe_math.evaluate(safe_math.parse(text)) == value


@pytest.mark.parametrize("text,value", [
    (r"\frac12", Fraction(1, 2)), (r"\frac 34", Fraction(3, 4)), (r"\frac{1}2", Fraction(1, 2)),
    (r"\frac12\frac13", Fraction(1, 6)), (r"2*\frac13", Fraction(2, 3)), (r"\frac{12}{5}", Fraction(12, 5)),
    (r"-2\frac{1}{3}", None), (r"2 \frac13", None), (r"1+2\frac{1}{3}", None), (r"\frac123", None),
    (r"\frac1.5", None),
])
def test_safe_math_reads_frac_as_latex_and_refuses_mixed_numbers(text, value):
    """LaTeX takes one token per \\frac argument ("\\frac12" is 1/2; the parser read 12 as one number); a number
    before \\frac is a mixed number to a reader (-7/3) and an implicit product to the grammar (-2/3): refused."""
    if value is None:
        with pytest.raises(safe_math.MathError):
            safe_math.evaluate(safe_math.parse(text))
    else:
        assert safe_math.evaluate(safe_math.parse(text)) == value
