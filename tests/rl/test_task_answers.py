"""Task answers derived independently of the generators, for a few hundred problems per task: Python's own
integer arithmetic for arithmetic, sympy on the equation rebuilt from the prompt's numbers for algebra, and
a brute-force search over the prompt's numbers for countdown (whose solution the verifier must accept)."""

import ast
import re
from collections import Counter
from fractions import Fraction

import pytest
import sympy
from sympy.parsing.sympy_parser import implicit_multiplication_application, parse_expr, standard_transformations

from r1jax.errors import UserError
from r1jax.rl.tasks import countdown, get_task

PER_LEVEL = 60  # x 5 levels: 300 problems per task
LEVELS = range(1, 6)
X = sympy.Symbol("x")


def problems(name):
    for level in LEVELS:
        task = get_task(name, level)
        for index in range(PER_LEVEL):
            yield task, task.generate(seed=11, index=index)


def exact_value(text: str) -> Fraction:
    """An expression of integers and + - * / evaluated exactly (a walk of Python's own parse tree)."""
    def walk(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp):
            a, b = walk(node.left), walk(node.right)
            ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.Div: lambda: a / b}
            return ops[type(node.op)]()
        raise AssertionError(f"unexpected syntax in {text!r}: {ast.dump(node)}")
    return walk(ast.parse(text, mode="eval").body)


def test_arithmetic_answers_equal_python_integer_arithmetic():
    for task, problem in problems("arithmetic"):
        expression = re.fullmatch(r"Compute ([0-9+*-]+)", problem.prompt).group(1)
        assert re.fullmatch(r"\d+([+*-]\d+)+", expression), problem.prompt  # non-negative operands only
        value = exact_value(expression)  # Python's precedence: * before + and -, left to right
        assert value.denominator == 1 and problem.answer == str(value.numerator), problem


def coefficient(text: str | None, empty: int) -> int:
    """'3' -> 3, '-' -> -1, '+' or '' -> 1 (a bare x), None (absent term) -> `empty`."""
    if text is None:
        return empty
    return {"": 1, "+": 1, "-": -1}.get(text, None) or int(text)


def plain_polynomial(text: str):
    """sympy's own reading of answer text such as 'x^2-x-6', '2x+7', '(1/3)x' or '-7/3'."""
    transformations = standard_transformations + (implicit_multiplication_application,)
    return parse_expr(text.replace("^", "**"), local_dict={"x": X}, transformations=transformations)


def expected_algebra_answer(prompt: str):
    """The answer rebuilt from the prompt's numbers: the root of the equation, or the expanded/summed
    polynomial."""
    linear = re.fullmatch(r"Solve (-?\d*)x([+-]\d+)?=(-?\d+)", prompt)
    if linear:
        a, b, c = coefficient(linear.group(1), 1), coefficient(linear.group(2), 0), int(linear.group(3))
        (root,) = sympy.solve(sympy.Eq(a * X + b, c), X)
        return root
    expand = re.fullmatch(r"Expand \(x([+-]\d+)?\)\(x([+-]\d+)?\)", prompt)
    if expand:
        p, q = (coefficient(g, 0) for g in expand.groups())
        return sympy.expand((X + p) * (X + q))
    simplify = re.fullmatch(r"Simplify (-?\d*)x([+-]\d+)?([+-]\d*)x([+-]\d+)?", prompt)
    assert simplify, f"unrecognised algebra prompt {prompt!r}"
    a, b, c, d = simplify.groups()
    return coefficient(a, 1) * X + coefficient(b, 0) + coefficient(c, 1) * X + coefficient(d, 0)


def test_algebra_answers_equal_sympy_on_the_equation_rebuilt_from_the_prompt():
    kinds = Counter()
    for task, problem in problems("algebra"):
        expected = expected_algebra_answer(problem.prompt)
        kinds[problem.prompt.split()[0]] += 1
        assert sympy.expand(plain_polynomial(problem.answer) - expected) == 0, problem
    assert set(kinds) == {"Solve", "Expand", "Simplify"} and min(kinds.values()) >= 30, kinds


def search(items: list[tuple[Fraction, str]], target: Fraction, seen: set) -> str | None:
    """Depth-first search for an expression of the given (value, text) items, each used at most once, whose
    value is the target (intermediate fractions allowed, as the verifier allows)."""
    for value, text in items:
        if value == target:
            return text
    key = tuple(sorted(value for value, _ in items))
    if len(items) < 2 or key in seen:
        return None
    seen.add(key)
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            (a, ta), (b, tb) = items[i], items[j]
            rest = items[:i] + items[i + 1:j] + items[j + 1:]
            combined = [(a + b, f"({ta}+{tb})"), (a - b, f"({ta}-{tb})"), (b - a, f"({tb}-{ta})"),
                        (a * b, f"({ta}*{tb})")]
            combined += [(a / b, f"({ta}/{tb})")] if b else []
            combined += [(b / a, f"({tb}/{ta})")] if a else []
            for item in combined:
                found = search(rest + [item], target, seen)
                if found is not None:
                    return found
    return None


def test_countdown_answers_reach_the_target_and_a_searched_solution_verifies():
    for task, problem in problems("countdown"):
        match = re.fullmatch(r"Make (\d+) from ([\d, ]+) \(\+-\*/, each at most once\)", problem.prompt)
        target, shown = Fraction(match.group(1)), [int(n) for n in match.group(2).split(", ")]
        assert exact_value(problem.answer) == target, problem
        assert not Counter(int(n) for n in re.findall(r"\d+", problem.answer)) - Counter(shown), problem
        found = search([(Fraction(n), str(n)) for n in shown], target, set())
        assert found is not None and exact_value(found) == target, problem
        assert task.verify(found, problem.answer, problem.prompt), (found, problem)


def countdown_targets(level, problems=300, **knobs):
    task = get_task("countdown", level, **knobs)
    for i in range(problems):
        prompt = task.generate(7, i).prompt
        yield int(prompt.split()[1]), countdown.prompt_numbers(prompt)


@pytest.mark.parametrize("level", LEVELS)
def test_countdown_targets_are_never_one_of_the_numbers_shown(level):
    """"Make 7 from 7, 2, 3" is answered by copying a number (a distractor equal to the target alike)."""
    for target, shown in countdown_targets(level):
        assert target not in shown, (target, shown)


def test_countdown_targets_stay_at_most_max_target_or_the_problem_is_refused(monkeypatch):
    """10 numbers up to 1,000 missed MAX_TARGET 20 draws in a row in 8 of 1,000 problems, which then kept a target
    past it (4,297); a problem no draw makes is refused, naming its knobs."""
    for target, _ in countdown_targets(1, 1000, count=10, max_value=1000):
        assert 1 <= target <= countdown.MAX_TARGET
    monkeypatch.setattr(countdown, "build_equation", lambda rng, used: ("+".join(map(str, used)), 5000, []))
    with pytest.raises(UserError, match=r"countdown .*'count': 3.*no draw of 1000 made a target of at most 1000"):
        get_task("countdown", 1).generate(0, 0)


def test_arithmetic_answers_one_digit_past_the_verifier_are_refused():
    get_task("arithmetic", 1, digits=8, operands=3)  # 24 digits: the most a number may have
    with pytest.raises(UserError, match="up to 25 digits"):
        get_task("arithmetic", 1, digits=5, operands=5)
