"""safe_math's bounds and grammar at their edges (rl.tasks.safe_math), by hand: what mutation round 16 found
untested in test_tasks.py (now test_safe_math.py)."""

from fractions import Fraction

import pytest

from r1jax.rl.tasks import get_task, safe_math


def value(text: str, names: str = ""):
    return safe_math.evaluate(safe_math.parse(text, names))


def test_a_number_of_max_digits_digits_is_read_whatever_its_point():
    assert value("1." + "2" * 23) == Fraction("1." + "2" * 23)  # 24 digits and a point
    with pytest.raises(safe_math.MathError, match="more than 24 digits"):
        value("1." + "2" * 24)


def test_an_unclosed_bracket_is_refused_even_when_a_number_stands_where_it_closes():
    """'(16 2' is no 16: the bracket never closes ('2' is no closing bracket)."""
    with pytest.raises(safe_math.MathError, match="unbalanced"):
        value("(16 2")
    assert get_task("arithmetic").verify("(16 2", "16") is False


def test_exact_results_are_bounded_in_their_denominators_too():
    assert value("1" + "/2^64" * 63) == Fraction(1, 2 ** 4032)  # a denominator of 4033 bits
    with pytest.raises(safe_math.MathError, match="larger than 4096 bits"):
        value("1" + "/2^64" * 64)  # 2^4096: 4097 bits


def test_a_negative_power_counts_its_degree_in_the_denominator():
    """x^-16 + x is (x^17 + 1) / x^16: degree 17 over 16, 33 in all, past the default max_degree 32."""
    with pytest.raises(safe_math.MathError, match="too large"):
        safe_math.to_sympy(safe_math.parse("x^-16 + x", names="x"))
    assert safe_math.to_sympy(safe_math.parse("x^-15 + x", names="x")) is not None  # 16 over 15: 31
