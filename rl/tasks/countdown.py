"""Countdown: reach a target from given numbers with + - * /, each number used at most once.

The reference answer is one valid equation's left side, e.g. "(3+5)*2"; its exact value is the target.
The numbers allowed are read from the prompt ("Make 16 from 2, 3, 5 (...)"); when the prompt is absent or
in another format, the numbers of the reference are the allowed multiset. The operators allowed are the
prompt's ("(+-*/, ...)"), else + - * /; any other (a power "2^3") fails. A candidate may be the expression
alone or "expression = target"; it is evaluated exactly by `safe_math` (never `eval`).

Knobs: `count` numbers that build the target, `max_value` of each number, `distractors` extra numbers
that the target does not need.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction
from typing import Iterator

from r1jax.rl.tasks import safe_math
from r1jax.rl.tasks.base import Problem, Task, r1_solution, register_task, strip_markup

MAX_TARGET = 1000
MAX_TRIES = 20
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_PROMPT_NUMBERS = re.compile(r"from ([\d, ]+)\(")
_PROMPT_OPERATORS = re.compile(r"from [\d, ]+\(([-+*/]+)[,)]")
_OPERATORS = {"add": "+", "sub": "-", "neg": "-", "mul": "*", "div": "/", "pow": "^"}  # AST node -> symbol


def _wrap(text: str, prec: int, parent: int, right_of_noncommutative: bool = False) -> str:
    need = prec < parent or (right_of_noncommutative and prec == parent)
    return f"({text})" if need else text


def _choose_op(rng, a: int, b: int) -> str:
    choices = ["+", "*"] + (["-"] if a != b else []) + (["/"] if b > 1 and a % b == 0 else [])
    op = rng.choice(choices)
    return "+" if op == "*" and a * b > MAX_TARGET else op


def build_equation(rng, numbers: list[int]) -> tuple[str, int, list[str]]:
    """Combine the numbers pairwise at random: (expression, value, steps). Values stay positive integers."""
    pool = [(n, str(n), 3) for n in numbers]  # (value, text, precedence); atoms bind tightest
    steps = []
    while len(pool) > 1:
        i, j = sorted(rng.sample(range(len(pool)), 2))
        (a, ta, pa), (b, tb, pb) = pool[j], pool[i]
        if a < b:
            (a, ta, pa), (b, tb, pb) = (b, tb, pb), (a, ta, pa)
        op = _choose_op(rng, a, b)
        value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
        text = _wrap(ta, pa, _PREC[op]) + op + _wrap(tb, pb, _PREC[op], op in "-/")
        steps.append(f"{a}{op}{b}={value}.")
        pool[i:i + 1] = [(value, text, _PREC[op])]
        del pool[j]
    return pool[0][1], pool[0][0], steps


def _distractor(rng, max_value: int, target: int) -> int:
    value = rng.randint(1, max_value)
    return value if value != target else value % max_value + 1  # never the trivial answer "target"


def allowed_numbers(prompt: str, reference_node: tuple) -> Counter:
    match = _PROMPT_NUMBERS.search(prompt or "")
    if match:
        return Counter(Fraction(n) for n in re.findall(r"\d+", match.group(1)))
    return Counter(safe_math.numbers(reference_node))


def allowed_operators(prompt: str) -> str:
    """The operator symbols the prompt lists ("(+-*/, each at most once)"), else + - * /."""
    match = _PROMPT_OPERATORS.search(prompt or "")
    return match.group(1) if match else "+-*/"


def operators(node: tuple) -> Iterator[str]:
    """The operator symbols of an AST (an implicit product "2(3+5)" is "*", a unary minus "-")."""
    if node[0] in _OPERATORS:
        yield _OPERATORS[node[0]]
    if node[0] not in ("num", "var"):
        for child in node[1:]:
            yield from operators(child)


def _split_equation(text: str, target: Fraction | None) -> tuple | None:
    """The expression side of 'expr', 'expr = target' or 'target = expr' (None when it is neither)."""
    sides = [safe_math.parse(s) for s in strip_markup(text).split("=")]
    if len(sides) == 1:
        return sides[0]
    if len(sides) == 2 and target is not None:
        for expr, other in (sides, sides[::-1]):
            if safe_math.is_number(other) and safe_math.evaluate(other) == target:
                return expr
    return None


@register_task
class CountdownTask(Task):
    name = "countdown"
    levels = {
        1: {"count": 3, "max_value": 10, "distractors": 0},
        2: {"count": 3, "max_value": 20, "distractors": 0},
        3: {"count": 4, "max_value": 20, "distractors": 0},
        4: {"count": 3, "max_value": 25, "distractors": 1},
        5: {"count": 4, "max_value": 50, "distractors": 1},
    }

    def generate(self, seed: int, index: int) -> Problem:
        rng = self.rng(seed, index)
        for _ in range(MAX_TRIES):  # skip trivial problems whose target is one of the numbers
            used = [rng.randint(1, self.knobs["max_value"]) for _ in range(self.knobs["count"])]
            expression, target, steps = build_equation(rng, used)
            if target not in used:
                break
        extra = [_distractor(rng, self.knobs["max_value"], target) for _ in range(self.knobs["distractors"])]
        shown = used + extra
        rng.shuffle(shown)
        prompt = f"Make {target} from {', '.join(map(str, shown))} (+-*/, each at most once)"
        return Problem(task=self.name, prompt=prompt, answer=expression,
                       solution=r1_solution(steps, expression), difficulty=self.difficulty)

    @staticmethod
    def problem_key(prompt: str) -> object:
        """The target and the multiset of numbers: the prompt shows the numbers shuffled, so one problem has many
        prompts (held out by prompt, 191 of 200 held-out problems were training problems reordered)."""
        numbers = _PROMPT_NUMBERS.search(prompt)
        target = re.match(r"Make (\d+) ", prompt)
        if numbers is None or target is None:
            return prompt
        return int(target.group(1)), tuple(sorted(int(n) for n in re.findall(r"\d+", numbers.group(1))))

    def verify(self, candidate: str, reference: str, prompt: str = "") -> bool:
        try:
            reference_node = _split_equation(reference, None)
            target = safe_math.evaluate(reference_node)
            node = _split_equation(candidate, target)
            if node is None or safe_math.evaluate(node) != target:
                return False
        except (safe_math.MathError, TypeError):
            return False
        if not set(operators(node)) <= set(allowed_operators(prompt)):
            return False
        used = list(safe_math.numbers(node))
        if any(n.denominator != 1 for n in used):
            return False
        return not (Counter(used) - allowed_numbers(prompt, reference_node))
