"""Task generators and verifiers, cases the mutation rounds found untested: each test pins what a user sees (a
knob refused, the numbers a problem draws, a verdict) against a hand-written or brute-force answer."""

import re

import pytest

from r1jax.errors import UserError
from r1jax.rl.tasks import get_task


@pytest.mark.parametrize("task,knob", [("arithmetic", "digits"), ("arithmetic", "operands"),
                                       ("countdown", "count"), ("code", "max_constant")])
def test_a_boolean_knob_is_no_integer(task, knob):
    with pytest.raises(UserError, match=f"knob {knob} = True: expected an integer"):
        get_task(task, 1, **{knob: True})  # YAML's `yes`: read as 1 before


@pytest.mark.parametrize("digits,low", [(1, 0), (2, 10), (3, 100)])
def test_arithmetic_operands_span_exactly_the_numbers_of_that_many_digits(digits, low):
    task = get_task("arithmetic", digits=digits, operands=4, ops="+")
    drawn = {int(n) for i in range(600) for n in re.findall(r"\d+", task.generate(3, i).prompt)}
    high = 10 ** digits - 1
    assert min(drawn) == low and max(drawn) == high  # both ends drawn, nothing past them


def algebra_problems(level, count=300):
    task = get_task("algebra", level)
    return [task.generate(7, i) for i in range(count)]


@pytest.mark.parametrize("level", [2, 3, 4, 5])
def test_algebra_text_writes_no_unit_or_zero_coefficient_and_no_plus_minus(level):
    for problem in algebra_problems(level):
        for text in (problem.prompt, problem.answer):
            assert not re.search(r"(?<![\d./])[01]x", text), text  # "-1x", "+0x": written "-x", left out
            assert "+-" not in text and "--" not in text, text
            assert text.strip(), problem.prompt


def test_algebra_polynomials_print_as_the_module_says():
    import sympy

    from r1jax.rl.tasks.algebra import format_poly

    x = sympy.Symbol("x")
    assert format_poly((x + 2) * (x - 3) - (x * x - x - 6)) == "0"  # everything cancelled: "0", not ""
    assert format_poly(sympy.expand((x + 3) * (x - 3))) == "x^2-9"
    assert format_poly(sympy.Rational(7, 3) * x - sympy.Rational(1, 2)) == "(7/3)x-1/2"
    assert format_poly(-x + 0) == "-x" and format_poly(sympy.Rational(-7, 3) + 0 * x) == "-7/3"


@pytest.mark.parametrize("level", [1, 3, 5])
def test_countdown_worked_steps_stay_positive_integers_and_reach_the_target(level):
    task = get_task("countdown", level)
    for index in range(300):
        problem = task.generate(2, index)
        steps = re.findall(r"(\d+)([-+*/])(\d+)=(-?\d+)\.", problem.solution)
        assert steps, problem.solution
        for a, op, b, value in steps:  # a >= b, "-" never of equal numbers (a 0), "/" exact and never by 1
            a, b, value = int(a), int(b), int(value)
            assert value >= 1 and a >= b, problem.solution
            assert value == {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
            assert op != "/" or (b > 1 and a % b == 0)
        assert int(re.match(r"Make (\d+) ", problem.prompt).group(1)) == int(steps[-1][3])


def test_countdown_every_number_rule_without_a_listed_prompt_reads_the_reference_numbers():
    task = get_task("countdown", 1)
    prompt = "Reach 16 using every number exactly once."  # no list: the reference's numbers are the allowed ones
    assert task.verify("(3+5)*2", "(3+5)*2", prompt) and task.verify("2*(5+3)", "(3+5)*2", prompt)
    assert not task.verify("8*2", "(3+5)*2", prompt) and not task.verify("(3+5)*2+2-2", "(3+5)*2", prompt)


@pytest.mark.parametrize("candidate", ["\\boxed{\\textbf{42}}", "$\\boxed{\\text{42}}$.", "\\[\\boxed{$42$}\\]",
                                       "\\boxed{\\mathbf{\\text{42}}}"])
def test_nested_markup_around_an_answer_is_removed_layer_by_layer(candidate):
    from r1jax.rl.tasks.base import strip_markup

    assert strip_markup(candidate) == "42"
    assert get_task("arithmetic").verify(candidate, "42") and not get_task("arithmetic").verify(candidate, "43")


def code_problems(level, count=200):
    task = get_task("code", level)
    return [task.generate(5, i) for i in range(count)]


def test_code_prompts_state_their_constant_and_their_tests_compute_it():
    import json

    seen = set()
    for problem in code_problems(2):
        assert "{" not in problem.prompt and "{" not in problem.answer, problem.prompt
        function = re.fullmatch(r"Write f\(x\) that returns x([-+*])(\d+)\.", problem.prompt)
        script = re.fullmatch(r"Read n and print n([-+*])(\d+)\.", problem.prompt)
        pair = problem.prompt == "Read a b on one line, print a+b."
        assert function or script or pair, problem.prompt
        tests = json.loads(problem.tests)
        assert len(tests) == 3
        if function:
            seen.add("function")
            op, k = function.group(1), int(function.group(2))
            assert k >= 2 and problem.entry_point == "f"  # no "x*1": k from 2
            for test in tests:
                x, y = map(int, re.fullmatch(r"assert f\((-?\d+)\) == (-?\d+)", test).groups())
                assert y == {"+": x + k, "-": x - k, "*": x * k}[op], (problem.prompt, test)
            assert len({t for t in tests}) == 3  # three different arguments
        else:
            seen.add("stdio")
            assert problem.entry_point is None and problem.to_dict().get("entry_point") is None
            for test in tests:
                numbers = [int(n) for n in test["input"].split()]
                assert test["input"].endswith("\n") and test["output"].endswith("\n")
                want = sum(numbers) if pair else {"+": numbers[0] + int(script.group(2)),
                                                  "*": numbers[0] * int(script.group(2))}[script.group(1)]
                assert int(test["output"]) == want
    assert seen == {"function", "stdio"}  # level 2 draws both forms


def test_code_level_three_draws_shaped_problems_with_python_literals_in_their_tests():
    import ast
    import json

    shaped = [p for p in code_problems(3) if not p.prompt.startswith(("Write f(x)", "Read"))]
    assert len(shaped) > 30
    for problem in shaped:
        for test in json.loads(problem.tests):
            call, _, want = test.removeprefix("assert ").partition(" == ")
            ast.literal_eval(want)  # "'cba'", not a bare cba (a NameError in every program's test)


def test_code_shaped_tests_fail_the_wrong_programs_a_policy_could_write():
    """`return a` passed 12-16% of the "larger" problems' three tests, `return xs[0]` 5-9% of the sums', `return
    s` 1-2% of the reversals': a policy scored on those without solving them."""
    import ast
    import json

    wrong = {"larger": [lambda a, b: a, lambda a, b: b], "reversed": [lambda s: s],
             "sum": [lambda xs: 0, lambda xs: len(xs), lambda xs: xs[0] if xs else 0, lambda xs: xs[-1] if xs else 0],
             "capitals": [lambda s: s, lambda s: s.title()]}
    seen = set()
    for problem in code_problems(3, 1000) + code_problems(5, 500):  # (draws where `xs[-1]` and title() would pass)
        kind = next((k for k in wrong if k in problem.prompt), None)
        if kind is None:
            continue
        seen.add(kind)
        calls = [ast.parse(t).body[0].test for t in json.loads(problem.tests)]
        cases = [([ast.literal_eval(a) for a in c.left.args], ast.literal_eval(c.comparators[0])) for c in calls]
        for program in wrong[kind]:
            assert not all(program(*args) == want for args, want in cases), (problem.prompt, problem.tests)
    assert seen == set(wrong)


def test_arithmetic_needs_two_operands_and_scores_no_unreadable_pair():
    with pytest.raises(UserError, match=r"knob operands = 1: expected an integer in \[2, 64\]"):
        get_task("arithmetic", operands=1)  # "Compute 7": the answer in the question
    task = get_task("arithmetic")
    assert not task.verify("foo", "bar") and not task.verify("", "") and not task.verify("7", "bar")


@pytest.mark.parametrize("candidate,expected", [("3x/2", True), ("(3/2)x", True), ("x/(2/3)", False),
                                                ("3/(2/x)", False), ("x*3/2", True), ("(3x)/(2/1)", False)])
def test_algebra_takes_one_number_over_one_integer_never_a_fraction_in_a_denominator(candidate, expected):
    assert get_task("algebra").verify(candidate, "(3/2)x") == expected


@pytest.mark.parametrize("candidate,reference", [("x*x", "x"), ("x*x", "x^2"), ("x^2*x", "x^3"), ("x*x+1", "x+1")])
def test_algebra_refuses_a_product_of_powers_of_x(candidate, reference):
    assert not get_task("algebra").verify(candidate, reference)  # "x*x" read as x (the last x won) would pass "x"


def test_countdown_references_are_checked_against_the_listed_numbers_and_all_four_operators():
    from r1jax.rl.tasks import countdown

    assert countdown.check_reference("Using the numbers [2, 3, 5], make 16.", "(3+5)*2") is None
    assert "uses numbers that the prompt does not list" in countdown.check_reference(
        "Using the numbers [2, 3, 5], make 14.", "(2+5)*2")  # 2 twice, listed once
    assert "is not an expression of the numbers" in countdown.check_reference("Reach 16.", "16")
    assert countdown.check_reference("Reach 16.", "32/2") is None  # no operator list: + - * / all allowed
    assert get_task("countdown").verify("32/2", "32/2", "Reach 16.")
    assert not get_task("countdown").verify("32/2", "32/2", "Reach 16 from 32, 2 (+-*, each at most once)")


@pytest.mark.parametrize("candidate,reference,expected", [
    ("1\\,000x", "1000x", True), ("x = 1\\,000", "1000", True), ("x^2+1\\,200x-5", "x^2+1200x-5", True),
    ("1 000x", "1000x", True), ("1,000", "1000", True), ("1\\,2x", "12x", False), ("x = 0\\,111", "111", False)])
def test_algebra_reads_digit_groups_as_the_math_and_arithmetic_tasks_do(candidate, reference, expected):
    # 37b54e5 made '\\,' a space: algebra, which joined no digit groups, then refused "1\\,000x" for 1000x
    assert get_task("algebra").verify(candidate, reference) == expected


@pytest.mark.parametrize("candidate,expected", [
    ("1\\,000/10", True), ("1{,}000/10 = 100", True), ("100 = 1\\,000/10", True), ("1000/10", True),
    ("1\\,0\\,00/10", False), ("10\\,0*1", False)])
def test_countdown_reads_digit_groups_as_the_math_and_arithmetic_tasks_do(candidate, expected):
    # 37b54e5 made '\\,' a space: countdown, which joined no digit groups, then refused "1\\,000/10" for 1000/10
    prompt = "Using the numbers [1000, 10, 1], create an equation that equals 100."
    assert get_task("countdown").verify(candidate, "1000/10", prompt) == expected
