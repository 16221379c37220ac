"""Arithmetic: evaluate an integer expression of + - * with standard precedence.

Knobs: `digits` (largest operand has this many digits), `operands` (how many numbers), `ops` (which
operators appear). The worked solution reduces the leftmost highest-precedence operator one step at a time
("37*4=148. 148-12=136."), which is also how a tiny model can learn it. The answer is a single integer; an
expression such as "148-12" is not accepted as a final answer.
"""

from __future__ import annotations

from fractions import Fraction

from r1jax.errors import UserError
from r1jax.rl.tasks import safe_math
from r1jax.rl.tasks.base import Problem, Task, r1_solution, register_task, strip_markup
from r1jax.rl.tasks.math_answer import join_digit_groups

MAX_DIGITS = safe_math.MAX_DIGITS  # of an answer: the verifier reads no longer number
_PRECEDENCE = {"*": 2, "+": 1, "-": 1}


def _apply(a: int, op: str, b: int) -> int:
    return a * b if op == "*" else a + b if op == "+" else a - b


def reduce_steps(numbers: list[int], ops: list[str]) -> tuple[list[str], int]:
    """Evaluate left to right by precedence, recording each step as 'a*b=c'."""
    numbers, ops, steps = list(numbers), list(ops), []
    while ops:
        top = max(_PRECEDENCE[o] for o in ops)
        i = next(i for i, o in enumerate(ops) if _PRECEDENCE[o] == top)
        value = _apply(numbers[i], ops[i], numbers[i + 1])
        steps.append(f"{_show(numbers[i])}{ops[i]}{_show(numbers[i + 1])}={value}.")
        numbers[i:i + 2] = [value]
        del ops[i]
    return steps, numbers[0]


def _show(n: int) -> str:
    return f"({n})" if n < 0 else str(n)  # "5*(-3)", never the ambiguous "5*-3"


def parse_number(text: str) -> Fraction | None:
    """A signed number literal ("136", "-7", "1,360", "136.0"), or None for anything else ("1 2", "2, 333").
    Digit groups read as the math task reads them ("1{,}360", "1,\\!360", "1\\,360", "1 360":
    math_answer.join_digit_groups), and so do plain commas between groups of three ("1,360"; not "0,136")."""
    text = join_digit_groups(strip_markup(text))
    try:
        node = safe_math.parse(text)
    except safe_math.MathError:
        return None
    return safe_math.evaluate(node) if safe_math.is_number(node) else None


def check_reference(reference: str) -> str | None:
    """Why a data row's reference can never score (no number `parse_number` reads: every answer would be wrong),
    or None."""
    if parse_number(reference) is None:
        return f"the reference {reference[:60]!r} is not a number the arithmetic verifier reads (such as '-136')"
    return None


@register_task
class ArithmeticTask(Task):
    name = "arithmetic"
    levels = {
        1: {"digits": 1, "operands": 2, "ops": "+-*"},
        2: {"digits": 2, "operands": 2, "ops": "+-*"},
        3: {"digits": 2, "operands": 3, "ops": "+-*"},
        4: {"digits": 3, "operands": 3, "ops": "+-*"},
        5: {"digits": 3, "operands": 4, "ops": "+-*"},
    }

    def check_knobs(self) -> None:
        digits, count = self.knob_integer("digits", 1, MAX_DIGITS), self.knob_integer("operands", 2, 64)
        ops = self.knob_names("ops", "+-*", separator="")
        longest = digits * count if "*" in ops else digits + len(str(count))  # digits of the largest answer
        if longest > MAX_DIGITS:  # an answer the verifier reads no number of (safe_math.MAX_DIGITS)
            raise UserError(f"task 'arithmetic': knobs digits = {digits}, operands = {count}, ops = {''.join(ops)!r} "
                            f"give answers of up to {longest} digits, past the {MAX_DIGITS} a number may have")

    def generate(self, seed: int, index: int) -> Problem:
        rng = self.rng(seed, index)
        digits, count = self.knobs["digits"], self.knobs["operands"]
        numbers = [rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1) for _ in range(count)]
        ops = [rng.choice(self.knobs["ops"]) for _ in range(count - 1)]
        expression = "".join(f"{n}{o}" for n, o in zip(numbers, ops)) + str(numbers[-1])
        steps, value = reduce_steps(numbers, ops)
        return Problem(task=self.name, prompt=f"Compute {expression}", answer=str(value),
                       solution=r1_solution(steps, str(value)), difficulty=self.difficulty)

    def verify(self, candidate: str, reference: str, prompt: str = "") -> bool:
        got, want = parse_number(candidate), parse_number(reference)
        return got is not None and want is not None and got == want
