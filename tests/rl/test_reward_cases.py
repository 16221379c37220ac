"""The accuracy reward on a table of (task, reference, completion, expected) cases written for r1jax.

Equivalent forms must score 1, wrong answers and malformed output 0, and only the final answer counts: the
content of the last <answer> after the chain of thought, else the last \\boxed{} there. Scored in-process
(the same pure function the workers run) so the table stays fast.
"""

import pytest

from r1jax.rl.rewards import RewardsConfig, ScoreItem, score_item

CONFIG = RewardsConfig(names=("accuracy",), weights=(1.0,))
COUNTDOWN_PROMPT = "Make 16 from 2, 3, 5 (+-*/, each at most once)"


def a(text: str) -> str:
    """A well-formed R1 completion whose final answer is `text`."""
    return f"<think> working </think> <answer> {text} </answer>"


MATH = [  # (reference, completion, expected)
    ("0.5", a(r"\frac{1}{2}"), 1), ("1/2", a("0.5"), 1), (r"\frac{1}{2}", a("2/4"), 1),
    (r"\frac{3}{4}", a("0.75"), 1), (r"\dfrac{3}{4}", a(r"\frac34"), 1), ("3", a("3.0"), 1),
    ("1000", a("1,000"), 1), ("-3", a("- 3"), 1), ("5", a("x = 5"), 1), ("x=5", a("5"), 1),
    (r"\{1,2\}", a(r"\{2, 1\}"), 1), ("[1,2)", a("[1, 2)"), 1), ("(0,1)", a(r"x \in (0,1)"), 1),
    (r"\sqrt{2}/2", a(r"\frac{1}{\sqrt{2}}"), 1), ("x^2-1", a("(x-1)(x+1)"), 1), (r"\infty", a(r"\infty"), 1),
    ("0.5", a(r"50\%"), 1), ("10", a(r"\text{10}"), 1), ("12", a(r"\boxed{12}"), 1), ("12", a("$12$"), 1),
    ("12", r"The sum is \boxed{12}.", 1), ("12", r"<think> 5+7 </think> so \boxed{12}", 1),
    (r"\frac{\pi}{2}", a(r"\pi/2"), 1), ("2", a(r"\sqrt{4}"), 1), ("1,2", a("2,1"), 1),
    ("2", a("3"), 0), ("[1,2)", a("(1,2)"), 0), (r"\pi", a("3.14159"), 0), (r"\frac{1}{2}", a("0.49"), 0),
    (r"\{1,2\}", a(r"\{1,2,3\}"), 0), ("x^2-1", a("x^2+1"), 0), ("-3", a("3"), 0), ("12", a("21"), 0),
    ("5", a("x = 6"), 0), (r"\sqrt{2}", a("1.41"), 0),
    # words compare as words (math-verify read "On" as o*n, equal to "\text{No}"'s n*o)
    (r"\text{No}", a("No"), 1), (r"\text{No}", a(r"$\text{no}$."), 1), (r"\text{Devon}", a(r"\text{ devon }"), 1),
    (r"\text{No}", a(r"\text{On}"), 0), (r"\text{BCA}", a("ABC"), 0), (r"\text{listen}", a("silent"), 0),
    (r"\text{even}", a(r"\text{neve}"), 0), ("10", a(r"\text{10}"), 1), (r"\text{(C)}", a("(C)"), 1),
    # decimals: 6 places and also 1e-4 of the value (6 places alone took -0.0000004 for 0.0000001)
    (r"\pi", a("3.141593"), 1), (r"\frac{1}{3}", a("0.333333"), 1), (r"\frac{1}{1000000}", a("0.000001"), 1),
    ("0.0000001", a("-0.0000004"), 0), ("0.0000003", a("0.0000001"), 0), (r"\frac{1}{1000000}", a("0.0000014"), 0),
    ("0", a("-0.0000001"), 0), ("0.0000001", a("x = -0.0000004"), 0),
    ("0.0001234", a("0.0001234"), 1), ("0.0001234", a("0.000123"), 0), ("0.0000101", a("0.00001"), 0),
    (r"\frac{1}{3000}", a("0.000333"), 0), (r"\frac{1}{30000}", a("0.0000333"), 0),  # 0.1-0.4% off: not 1e-4
    (r"\{0.0000001\}", a(r"\{-0.0000004\}"), 0), ("(0.0000001, 1)", a("(-0.0000004, 1)"), 0),
    (r"\{0.5, 2\}", a(r"\{\frac{1}{2}, 2\}"), 1), ("(0.5, 1]", a(r"(\frac{1}{2}, 1]"), 1),
    # a set's elements pair by value: sympy puts floats before rationals, which paired -1 with 1/2 (scored 0)
    (r"\{-1, 0.5\}", a(r"\{\frac{1}{2}, -1\}"), 1), (r"\{\frac{1}{2}, 0.3\}", a(r"\{0.5, \frac{3}{10}\}"), 1),
    (r"\{\sqrt{2}, 0.5\}", a(r"\{\frac{1}{2}, 1.414214\}"), 1),
    (r"\{-1, \frac{1}{10000000}\}", a(r"\{0.0000004, -1\}"), 0),
    (r"1.5\times 10^{400}", a(r"1.5\times 10^{400}"), 1), ("10^{400}", a(r"1.0\times10^{400}"), 1),  # (overflowed)
    (r"\text{Sunday}", a(r"\textit{Sunday}"), 1), (r"\text{Sunday}", a(r"\mbox{Sunday}"), 1),
    (r"\text{a cat}", a("a cat"), 1), (r"\text{a cat}", a("cat a"), 0),
    # a command's arguments are its braces and brackets: e^\pi(...) is a product, not a tower
    (r"e^{\pi}(e^{2}-1)", a(r"e^\pi(e^2-1)"), 1), (r"e^{\pi}(e^{2}-1)", a(r"e^\pi\left(e^{2}-1\right)"), 1),
    # malformed output
    ("7", "7", 0), ("7", "<answer> 7", 0), ("7", "<think> 7 </think> <answer> </answer>", 0),
    ("7", "<think> 7 </think>", 0), ("7", "<think> the answer is 7", 0), ("7", r"<think> \boxed{7}", 0),
    ("7", "", 0), ("7", "<answer>seven</answer>", 0), ("7", r"\boxed{7", 0), ("7", "<answer>7</answr>", 0),
    # answers in the thought vs the answer
    ("4", r"<think> \boxed{5} </think> <answer> 4 </answer>", 1),
    ("5", r"<think> \boxed{5} </think> <answer> 4 </answer>", 0),
    ("5", "<think> <answer> 5 </answer> </think> <answer> 4 </answer>", 0),
    ("4", "<think> <answer> 5 </answer> </think> <answer> 4 </answer>", 1),
    ("5", "<think> <answer> 5 </answer> </think>", 0), ("5", r"<think> \boxed{5} </think> I give up", 0),
    ("6", "<think> a </think> <answer> 5 </answer> <answer> 6 </answer>", 1),
    ("5", "<think> a </think> <answer> 5 </answer> <answer> 6 </answer>", 0),
    ("9", r"<think> a </think> \boxed{8} then \boxed{9}", 1),
]

ARITHMETIC = [
    ("136", a("136"), 1), ("136", a("136.0"), 1), ("1360", a("1,360"), 1), ("-26", a("-26"), 1),
    ("-26", a("−26"), 1), ("136", a("$136$"), 1), ("136", a(r"\boxed{136}"), 1), ("136", a("136."), 1),
    ("136", a(" 136 "), 1), ("0", a("-0"), 1),
    ("136", a("137"), 0), ("136", a("148-12"), 0), ("136", a("136 apples"), 0), ("136", a("13,6"), 0),
    ("-26", a("26"), 0), ("136", a("x"), 0), ("136", a("136/1*1"), 0), ("136", "<think> 136 </think>", 0),
    ("136", a("1.36e2"), 0), ("136", a("__import__('os')"), 0),
    ("2333", a("2, 333"), 0), ("12", a("1 2"), 0), ("12345678", a("12345,678"), 0),  # never merged
    ("136", a("0^-1"), 0), ("136", a("(3-3)^-1"), 0),  # a division by zero scores 0, never raises
    ("136", a("0,136"), 0), ("1360", a("01,360"), 0),  # a group led by 0 is no thousands group (0,136 is 0.136)
    # LaTeX spacing between digits is a space, not nothing: two numbers, not one (1\,360 is a digit group)
    ("12", a(r"1\,2"), 0), ("136", a(r"1\;36"), 0), ("136", a(r"13\!6"), 0), ("12", a(r"1\ 2"), 0), ("1360", a(r"1\,360"), 1),
]

COUNTDOWN = [
    ("(3+5)*2", a("(3+5)*2"), 1), ("(3+5)*2", a("2*(5+3)"), 1), ("(3+5)*2", a("(3+5)*2=16"), 1),
    ("(3+5)*2", a("16 = (3+5)*2"), 1), ("(3+5)*2", a(r"(3+5)\times 2"), 1), ("(3+5)*2", a("(3 + 5) · 2"), 1),
    ("(3+5)*2", a(r"\boxed{(5+3)\cdot 2}"), 1), ("(3+5)*2", a(r"(3\,+\,5)\;\times\;2"), 1), ("(3+5)*2", a("2*5+3*2"), 0), ("(3+5)*2", a("(3+5)*2=15"), 0),
    ("(3+5)*2", a("3*5+1"), 0), ("(3+5)*2", a("2*2*2*2"), 0), ("(3+5)*2", a("16"), 0), ("(3+5)*2", a("8*2"), 0),
    ("(3+5)*2", a("5*3+2/2"), 0), ("(3+5)*2", a("(3+5)*(5-3)"), 0), ("(3+5)*2", a("(3+5)*2=16=16"), 0),
    ("(3+5)*2", a("eval('16')"), 0), ("(3+5)*2", a("(3+5)*2*1"), 0),
    ("(3+5)*2", a("0^-1"), 0), ("(3+5)*2", a("(5-5)^-1 = 16"), 0),
]

ALGEBRA = [
    ("x^2-x-6", a("x^2 - x - 6"), 1), ("x^2-x-6", a("-6-x+x^2"), 1),
    ("x^2-x-6", a("x**2-x-6"), 1), ("x^2-x-6", a("x^{2}-x-6"), 1), ("5", a("x=5"), 1), ("5", a("5"), 1),
    ("5", a("x = 5.0"), 1), ("5", a("10/2"), 1), ("-7/3", a(r"-\frac{7}{3}"), 1), ("-7/3", a("x=-7/3"), 1),
    ("-7/3", a(r"\frac{-7}{3}"), 1), ("1/2", a(r"\frac12"), 1), ("2x+7", a("7+2x"), 1),
    ("(7/3)x+1", a(r"\frac{7x}{3}+1"), 1), ("(7/3)x+1", a("7x/3+1"), 1), ("(x+2)(x-3)", a("x^2-x-6"), 1),
    ("x^2-x-6", a("x^2+x-6"), 0), ("x^2-x-6", a("x^2-x"), 0), ("5", a("x=6"), 0), ("-7/3", a("-2.333"), 0),
    ("2x+7", a("2x+8"), 0), ("5", a("y=5"), 0), ("x^2-x-6", a("(x+2)(x-3)+"), 0),
    ("x^2-x-6", a(r"x^2\,-\,x\,-\,6"), 1), ("2x+7", a(r"2\,x+7"), 1), ("-7/3", a(r"-\frac{7}{3}\!"), 1),
    # the answer's form is the work: a copied question or an unevaluated formula is not the answer
    ("x^2-x-6", a("(x+2)(x-3)"), 0), ("x^2-13x-140", a("(x+7)(x-20)"), 0), ("2x+7", a("2(x+3.5)"), 0),
    ("6x-11", a("3x-4+3x-7"), 0), ("6x-11", a("x+5x-11"), 0), ("x^2-x-6", a("x^2-(x+6)"), 0),
    ("1/2", a("(7-(-2))/(18)"), 0), ("5", a("5x/x"), 0), ("5", a("2+3"), 0), ("5", a("0x+5"), 0),
    # a mixed number is ambiguous (-7/3 to a reader, -2/3 as an implicit product): never accepted
    ("-7/3", a(r"-2\frac{1}{3}"), 0), ("-2/3", a(r"-2\frac{1}{3}"), 0),
]

CASES = ([("math", *c) for c in MATH] + [("arithmetic", *c) for c in ARITHMETIC]
         + [("countdown", *c) for c in COUNTDOWN] + [("algebra", *c) for c in ALGEBRA])


def test_the_table_has_at_least_100_cases_with_both_outcomes_per_task():
    assert len(CASES) >= 100
    for task in ("math", "arithmetic", "countdown", "algebra"):
        assert {expected for t, _, _, expected in CASES if t == task} == {0, 1}


@pytest.mark.parametrize("task,reference,completion,expected", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_accuracy(task, reference, completion, expected):
    prompt = COUNTDOWN_PROMPT if task == "countdown" else "question"
    item = ScoreItem(prompt=prompt, completion=completion, reference=reference, task=task)
    assert score_item(item, CONFIG) == {"accuracy": float(expected)}
