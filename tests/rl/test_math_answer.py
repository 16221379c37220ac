"""The `math` task's screen on factorials, \\binom and \\Gamma (rl.tasks.math_answer): symbolic arguments such as
"(n-k)!" and "\\binom{n+k}{k}" are verified, while arguments whose value can be huge, and the forms that put
numbers in place of letters ("n!|_{n=99999999}", \\lim, \\int), are refused before math-verify sees them."""

import subprocess
import sys
import time

import pytest

from r1jax.rl.tasks import get_task
from r1jax.rl.tasks.math_answer import check_reference, join_digit_groups
from r1jax.rl.tasks.math_screen import risky
from tests.rl.test_answer_formats import SLOW


@pytest.fixture(scope="module")
def math_task():
    task = get_task("math")
    task.warm_up()
    return task


SYMBOLIC = [r"(n-k)!", r"\binom{n+k}{k}", r"\left(n+1\right)!", r"(a+b)!", r"(2n-k+1)!", r"\Gamma\left(n+1\right)",
            r"{n+1}!", r"\left( n + 1 \right) !", r"\binom{2n+2}{n+1}", r"\binom{n}{9}", r"\frac{1}{2004!}", "9999!",
            r"(999+999)!", r"\binom{n}{k-1}", r"\frac{(2n)!}{n!(n+1)!}", r"|x|^{2}", r"\left|x-1\right|^3",
            r"2^\frac{1}{2}", r"e^\pi", r"10^\,{3}", r"\left(\frac{1}{2}\right)^{2}", r"(n \, - \, k)!",
            r"e^\pi(e^2-1)", r"10^\circ (2^3)"]


@pytest.mark.parametrize("text", SYMBOLIC)
def test_symbolic_and_small_arguments_pass_the_screen(text):
    assert risky(text) is None


@pytest.mark.parametrize("reference,candidate,expected", [
    (r"(n-k)!", r"(n-k)!", True), (r"\binom{n+k}{k}", r"\binom{n+k}{n}", True),
    (r"\binom{n+k}{k}", r"\frac{(n+k)!}{n!\,k!}", True), (r"\left(n+1\right)!", r"(n+1)!", True),
    (r"(a+b)!", r"(b+a)!", True), (r"\frac{(2n)!}{n!(n+1)!}", r"\frac{1}{n+1}\binom{2n}{n}", True),
    (r"\binom{n}{k-1}", r"\frac{n!}{(k-1)!(n-k+1)!}", True), (r"n!", r"\Gamma\left(n+1\right)", True),
    (r"(2n-k+1)!", r"(2n-k+1)!", True), (r"\frac{1}{2004!}", r"\frac{1}{2004!}", True),
    (r"(n-k)!", r"(n+k)!", False), (r"\binom{n+k}{k}", r"\binom{n+k}{k+1}", False),
])
def test_equivalent_symbolic_forms_score(math_task, reference, candidate, expected):
    assert math_task.verify(candidate, reference) is expected


HUGE = [  # values that can be huge, or forms that put a number in place of a letter ("n" becomes 99999999)
    r"(n+10)!", r"\binom{n}{99}", r"\binom{n}{999}", r"(9999+1)!", r"\binom{99999}{3}", r"\Gamma\left(99999999\right)",
    r"(n^n)!", r"(10n)!", r"(n!)!", r"(\pi)!", r"\binom{n}{k}!", r"n!|_{n=99999999}", r"n! |^{n=99999999}",
    r"n!|^{7}_{n=99999999}", r"\left.n!\right|_{n=99999999}", r"\lim_{n \to 99999999} n!",
    r"\int_{0}^{99999999} \frac{d}{dx} x! dx", r"\iint x! \, dx",
    # spacing, sizing or a command as the exponent or the base hid the rest from the screen
    r"9^\,{9^{9}}", r"9^\;{9^{9}}", r"9^\quad{9^{9}}", r"9^\left(9^{9}\right)", r"7^\,{9999^{9}}",
    r"10^\,{10^{4}\cdot 10^{4}}", r"9^\mathrm{9^{9}}", r"2^\sqrt{9^{9}}", r"2^\sqrt[3]{9^{9}}", r"99999999\,!",
    r"99999999\!!",
    r"(99999999)\,!", r"99999999 \; !",
]


@pytest.mark.parametrize("text", HUGE)
def test_the_screen_refuses_huge_arguments_and_substitutions(text):
    assert risky(text) is not None


def test_huge_arguments_and_substitutions_score_zero_fast(math_task):
    # bounded stand-ins for HUGE's: each ran into the 2 s alarm before the screen refused it
    slow = [r"n!|_{n=999999}", r"n!|^{n=999999}", r"\lim_{n \to 999999} n!", r"\int_{0}^{999999} \frac{d}{dx} x! dx",
            r"\binom{n}{999}"]
    start = time.perf_counter()
    verdicts = [math_task.verify(text, r"\binom{n}{2}") for text in slow]
    verdicts += [math_task.verify(r"\binom{n}{2}", text) for text in slow]
    assert time.perf_counter() - start < 1.0  # ~1 ms in all
    assert not any(verdicts)


def test_the_screen_stays_fast_on_the_hostile_corpus():
    texts = [join_digit_groups(text) for text in SLOW + HUGE + SYMBOLIC]
    start = time.perf_counter()
    for text in texts:
        risky(text)
    assert time.perf_counter() - start < 0.05  # ~1 ms for these 60 (answers are at most 256 characters)


def test_spaced_sums_in_arguments_are_read_in_linear_time():
    """A sum with runs of spaces inside a factorial, \\binom or \\Gamma: "\\s*" on both sides of each term made
    the match exponential in the terms (5 terms: 15 s; 6 never ended). Run apart, to survive a regression."""
    sums = [("a +" + " " * 30) * 12 + "!", " + ".join(["n"] * 200)]
    texts = [f"\\binom{{{sums[0]}}}{{1}}", f"({sums[0]})!", f"\\Gamma({sums[0]})", f"({sums[1]})!"]
    code = ("import sys; from r1jax.rl.tasks.math_screen import risky; "
            "print([risky(t) is not None for t in sys.argv[1:]])")
    result = subprocess.run([sys.executable, "-c", code, *texts], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[True, True, True, False]", result.stderr


def test_a_reference_the_screen_refuses_is_named():
    assert "refuses this reference" in check_reference(r"(99999999)!")
    assert "nested deeper" in check_reference("(" * 7 + "5" + ")" * 7)  # references get no looser limit
    assert check_reference(r"\frac{1}{2004!}") is None and check_reference(r"10\,000") is None


@pytest.mark.parametrize("reference,candidate,expected", [
    # a bare answer is one formula: math-verify alone took its first fraction for the answer
    (r"\frac{3}{2}", r"1 + \frac{1}{2}", True), (r"\frac{1}{2}", r"1 + \frac{1}{2}", False),
    (r"\frac{1}{2}", r"\sqrt{2}+\frac{1}{2}", False), (r"y = \frac{x}{2}+3", r"y = \frac{1}{2}x + 3", True),
    (r"1+\frac{\sqrt{2}}{2}", r"\frac{\sqrt{2}}{2}", False), (r"1+\frac{\sqrt{2}}{2}", r"\frac{2+\sqrt{2}}{2}", True),
    # math delimiters inside an answer are still where math-verify looks
    ("5", "x = $5$", True), ("5", r"the answer is \(5\)", True),
    # a number or a bracket next to a bracket multiplies (math-verify read "2(3)" as the mixed number 2 + 3)
    ("6", "2(3)", True), ("5", "2(3)", False), ("12", "(3)(4)", True), ("7", "(3)(4)", False), ("12", "(3)4", True),
    ("24", "(2)(3)(4)", True), ("6", r"2\left(3\right)", True), ("7", "2(3)+1", True),
    (r"\frac{x+1}{2}", r"\frac{1}{2}(x+1)", True), ("1", r"2(\frac{1}{2})", True), ("6", r"\dfrac{3}{4}(8)", True),
    # functions keep their arguments
    ("3", r"\log_{2}(8)", True), ("f(3)", "f(3)", True), (r"\sin(30)", r"\sin(30)", True),
])
def test_bare_answers_read_as_one_formula_with_their_implicit_products(math_task, reference, candidate, expected):
    """Expected values by hand (1 + 1/2 = 3/2; 2 x 3 = 6; log2 8 = 3)."""
    assert math_task.verify(candidate, reference) is expected


@pytest.mark.parametrize("reference,candidate,expected", [
    # the reference is math-verify's gold: an inequality reference takes its interval (by hand: x < 5 is
    # (-inf, 5), 1 <= x <= 2 is [1, 2]); verify(pred, gold) read the interval as gold and refused them
    ("x<5", r"(-\infty,5)", True), ("x<5", r"(-\infty,5]", False),
    (r"1 \le x \le 2", "[1,2]", True), (r"1 \le x \le 2", "(1,2]", False),
    # one letter is a choice, not a word: math-verify reads it, brackets and all ("(C)" is choice C)
    (r"\text{C}", "(C)", True), (r"\text{C}", r"\text{(C)}", True), (r"\text{A}", "B", False),
])
def test_the_reference_is_the_gold_and_a_single_letter_is_no_word(math_task, reference, candidate, expected):
    assert math_task.verify(candidate, reference) is expected


def test_the_screen_bounds_are_where_its_constants_put_them():
    """MAX_NESTING = 6 brackets deep (the deepest anywhere, not the last), a factorial's number and an exponent's
    of at most 4 digits (MAX_FACTORIAL_DIGITS, MAX_EXPONENT_DIGITS), no factorial in an exponent."""
    assert risky("(" * 6 + "1" + ")" * 6) is None
    assert "nested deeper than 6" in risky("(" * 7 + "1" + ")" * 7)
    assert "nested deeper than 6" in risky("(" * 7 + "1" + ")" * 7 + "(2)")  # a shallow bracket after the deep one
    assert "nested deeper than 6" in risky(")" + "(" * 7 + "1" + ")" * 7)  # a stray closer lowers no level
    assert risky("9999!") is None and "factorial of a large number" in risky("99999!")
    assert risky("2^{9999}") is None and "too many digits" in risky("2^{99999}")  # MAX_EXPONENT_DIGITS = 4
    assert "tower or product" in risky("2^{9!}")  # 2^362880: a factorial inside the exponent's braces
    assert risky("(x+1)^{20}") is None and "symbolic group above 20" in risky("(x+1)^{21}")  # MAX_SYMBOLIC_POWER
    assert "double factorial" in risky("5!!")
    assert "evaluation at a point" in risky(r"n!|_{99999999}")  # a numeric subscript substitutes too


@pytest.mark.parametrize("reference,candidate,expected", [
    # an approximation of an equation's reference is compared with its right side (by hand: 1/3 = 0.333...)
    (r"x = \frac{1}{3}", r"x \approx 0.333", True), (r"x = \frac{1}{3}", r"x \approx 0.334", False),
])
def test_an_approximation_reads_the_right_side_of_an_equation_reference(math_task, reference, candidate, expected):
    assert math_task.verify(candidate, reference) is expected


@pytest.mark.parametrize("reference,candidate,expected", [
    # a reference that is itself an approximation: its exact side is the value (by hand: 1/3 = 0.333..., pi =
    # 3.14159...); compared with its rounding 0.33, "\frac13 \approx 0.333" scored 0
    (r"\frac13 \approx 0.33", r"\frac13 \approx 0.333", True), (r"\frac13 \approx 0.33", r"\approx 0.333", True),
    (r"\frac13 \approx 0.33", r"\approx 0.3334", False), (r"\frac13 \approx 0.33", r"\frac13 \approx 0.34", False),
    (r"\pi \approx 3.14", r"\approx 3.1416", True), (r"\pi \approx 3.14", r"\approx 3.1415", True),  # cut
    (r"\pi \approx 3.14", r"\approx 3.1417", False), (r"x = \frac{2}{3} \approx 0.667", r"x \approx 0.6667", True),
    # no exact side: the decimal is the value, as before
    (r"\approx 3.14", r"\approx 3.14", True), (r"x \approx 3.14", r"\approx 3.1", True),
    (r"x \approx 3.14", r"\approx 3.1416", False),
])
def test_an_approximate_reference_is_compared_at_its_exact_value(math_task, reference, candidate, expected):
    assert math_task.verify(candidate, reference) is expected


@pytest.mark.parametrize("space", ["\n", "\t", "\r\n", "\x0b"])
def test_whitespace_after_a_caret_is_read_as_tex_skips_it(space):
    """A newline after '^' made the screen raise AttributeError (an answer scored as an `error`, a data file's
    reference stopped the run with a traceback, `benchmarks/answer_regexes.py diff` crashed); a tab was read
    as the exponent and let 9^99999999999 through to math-verify's 2-3 s alarm."""
    assert risky(f"9^{space}99999999999") == "exponent with too many digits"
    assert risky(f"2^{space}3") is None and check_reference(f"2^{space}3") is None
    assert risky(f"2^\\sqrt{space}{{9^{{9}}}}") is not None  # a command's arguments after whitespace too
