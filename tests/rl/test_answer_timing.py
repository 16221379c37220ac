"""Answer checking stays linear on hostile model text: long runs of spaces, digits or spacing commands, as an early
policy emits them, are checked in milliseconds. Each case took seconds (quadratic or cubic backtracking) before its
patterns were made linear; benchmarks/answer_regexes.py times every pattern and checks the new ones against the old."""

import time

import pytest

from r1jax.rl.tasks import get_task
from r1jax.rl.tasks import math_answer
from r1jax.rl.tasks.math_screen import risky


@pytest.fixture(scope="module")
def tasks():
    found = {name: get_task(name) for name in ("math", "arithmetic", "algebra")}
    found["math"].warm_up()
    return found


# (the call, what it took before on a loaded 2-core machine)
HOSTILE = {
    "math: 3,000 spaces before the answer (7.8 s)": lambda t: t["math"].verify(" " * 3000 + "a", "1234"),
    "math: as the reference (7.8 s)": lambda t: t["math"].verify("1234", " " * 3000 + "a"),
    "arithmetic: 'x =' and 40,000 spaces (7.0 s)": lambda t: t["arithmetic"].verify("x =" + " " * 40000 + "a", "1234"),
    "algebra: 'y =' and 40,000 spaces (7.0 s)": lambda t: t["algebra"].verify("y =" + " " * 40000 + "a", "5"),
    "screen: 30,000 digits before a power (37 s)": lambda t: risky("1" * 30000 + "a^2"),
    "screen: 30,000 digits, no factorial (8.6 s)": lambda t: risky("1" * 30000 + "a"),
    "a trailing unit after 30,000 ~ (9.9 s)": lambda t: math_answer._UNIT.search("~" * 30000 + "x"),
    "a decimal before 30,000 spaces (2.3 s)": lambda t: math_answer._DECIMAL.fullmatch("1.5" + " " * 30000 + "x"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_answer_is_checked_in_linear_time(tasks, case):
    start = time.perf_counter()
    verdict = HOSTILE[case](tasks)
    assert time.perf_counter() - start < 0.5  # ~1-10 ms each
    assert not verdict  # none is an answer, a refusal, a unit or a decimal


def test_math_answer_past_the_bound_scores_zero_at_once(tasks):
    """math-verify's own normalisation is quadratic in runs of spaces: an answer or a reference of more than
    MAX_ANSWER_CHARS characters (whitespace around it aside) scores 0 before it (2 s, math-verify's alarm, before)."""
    start = time.perf_counter()
    assert not tasks["math"].verify("x =" + " " * 20000 + "1234", "1234")
    assert time.perf_counter() - start < 0.5
    bound = math_answer.MAX_ANSWER_CHARS
    assert tasks["math"].verify("0" * (bound - 4) + "1234", "1234")
    assert not tasks["math"].verify("0" * (bound - 3) + "1234", "1234")
    assert not tasks["math"].verify("1234", "0" * (bound - 3) + "1234")
    assert tasks["math"].verify(" " * 5000 + "1234" + " " * 5000, "1234")
    assert math_answer.check_reference("1" * (bound + 1)) == \
        f"the math verifier reads answers of at most {bound} characters, this reference has {bound + 1}"
