"""Algebra in one variable x: solve a linear equation, expand a product, simplify a sum of like terms.

Reference answers are computed by sympy from integer coefficients (trusted objects, never strings) and
printed in plain notation ("x^2-x-6", "-7/3"). A candidate is parsed by `safe_math` into sympy objects and
accepted when it is symbolically equal to the reference: `cancel(candidate - reference) == 0`, so
"(x+2)(x-3)", "x^2 - x - 6" and "-6-x+x^2" are all the same answer. For equations, "x = 5" and "5" are
both accepted.

Knobs: `kinds` (which of linear / expand / simplify), `coef` (coefficients in [-coef, coef]),
`integer_roots` (linear equations with integer solutions only), and at every level `constant` (a linear
equation's left-hand constant in [-constant, constant], default `coef`): a wider constant range multiplies
the number of distinct equations without harder division, so a small model cannot memorise them.
"""

from __future__ import annotations

import re

from r1jax.errors import UserError
from r1jax.rl.tasks import safe_math
from r1jax.rl.tasks.base import Problem, Task, r1_solution, register_task, strip_markup

_LEADING_VAR = re.compile(r"^\s*x\s*=(?!=)")


def _nonzero(rng, bound: int) -> int:
    return rng.choice([v for v in range(-bound, bound + 1) if v != 0])


def format_poly(expr) -> str:
    """Plain-text polynomial in x with integer or rational coefficients: 'x^2-x-6', '2x+7', '-7/3'."""
    import sympy

    x = sympy.Symbol("x")
    coeffs = sympy.Poly(expr, x).all_coeffs()
    degree = len(coeffs) - 1
    terms = []
    for power, c in zip(range(degree, -1, -1), coeffs):
        if c == 0:
            continue
        var = "" if power == 0 else "x" if power == 1 else f"x^{power}"
        number = str(c) if power == 0 or abs(c) != 1 or c.q != 1 else "-" if c < 0 else ""
        if var and number not in ("", "-") and c.q != 1:
            number = f"({c})"
        terms.append(f"{number}{var}")
    text = "+".join(terms).replace("+-", "-")
    return text or "0"


def _signed(v: int) -> str:
    return f"+{v}" if v >= 0 else str(v)


def _x_term(c: int, first: bool = False) -> str:
    """'3x', '-x', '+x', '+3x': a signed term of x, the sign omitted on a positive first term."""
    number = "" if abs(c) == 1 else str(abs(c))
    sign = "-" if c < 0 else "" if first else "+"
    return f"{sign}{number}x"


def _constant(c: int) -> str:
    return _signed(c) if c else ""


def _linear(rng, coef: int, integer_roots: bool, constant: int) -> tuple[str, str, list[str]]:
    import sympy

    a = _nonzero(rng, coef)
    root = rng.randint(-coef, coef) if integer_roots else sympy.Rational(rng.randint(-coef, coef), a)
    b = rng.randint(-constant, constant)
    c = a * root + b
    solution = sympy.Rational(c - b, a)
    lhs = format_poly(a * sympy.Symbol("x") + b)
    steps = [f"{_x_term(a, first=True)}={c}{_signed(-b)}={c - b}."] if b else []
    steps.append(f"x=({c - b})/({a})={solution}.")
    return f"Solve {lhs}={c}", str(solution), steps


def _expand(rng, coef: int) -> tuple[str, str, list[str]]:
    import sympy

    x = sympy.Symbol("x")
    p, q = rng.randint(-coef, coef), rng.randint(-coef, coef)
    first, second = format_poly(x + p), format_poly(x + q)
    answer = format_poly(sympy.expand((x + p) * (x + q)))
    steps = ["x*x=x^2.", f"x*({q})+({p})*x={format_poly((p + q) * x)}.", f"({p})*({q})={p * q}."]
    return f"Expand ({first})({second})", answer, steps


def _simplify(rng, coef: int) -> tuple[str, str, list[str]]:
    import sympy

    x = sympy.Symbol("x")
    a, c = _nonzero(rng, coef), _nonzero(rng, coef)
    b, d = rng.randint(-coef, coef), rng.randint(-coef, coef)
    shown = _x_term(a, first=True) + _constant(b) + _x_term(c) + _constant(d)
    answer = format_poly(a * x + b + c * x + d)
    steps = [f"{_x_term(a, first=True)}{_x_term(c)}={format_poly((a + c) * x)}.", f"{b}{_signed(d)}={b + d}."]
    return f"Simplify {shown}", answer, steps


def to_expression(text: str):
    """A sympy expression in x from answer text, through the safe parser; raises MathError."""
    text = _LEADING_VAR.sub("", strip_markup(text), count=1)
    return safe_math.to_sympy(safe_math.parse(text, names="x"))


@register_task
class AlgebraTask(Task):
    name = "algebra"
    levels = {
        1: {"kinds": "linear", "coef": 5, "integer_roots": True},
        2: {"kinds": "linear,simplify", "coef": 9, "integer_roots": True},
        3: {"kinds": "linear,simplify,expand", "coef": 9, "integer_roots": True},
        4: {"kinds": "linear,simplify,expand", "coef": 12, "integer_roots": False},
        5: {"kinds": "linear,expand", "coef": 20, "integer_roots": False},
    }

    optional_knobs = ("constant",)

    def __init__(self, difficulty: int = 1, **knobs):
        super().__init__(difficulty, **knobs)
        constant = self.knobs["constant"]
        if constant is not None and (isinstance(constant, bool) or not isinstance(constant, int) or constant < 0):
            raise UserError(f"task 'algebra': knob constant = {constant!r}: expected an integer >= 0")

    def generate(self, seed: int, index: int) -> Problem:
        rng = self.rng(seed, index)
        kind = rng.choice(self.knobs["kinds"].split(","))
        coef = self.knobs["coef"]
        if kind == "linear":
            constant = coef if self.knobs["constant"] is None else self.knobs["constant"]
            prompt, answer, steps = _linear(rng, coef, self.knobs["integer_roots"], constant)
        elif kind == "expand":
            prompt, answer, steps = _expand(rng, coef)
        else:
            prompt, answer, steps = _simplify(rng, coef)
        return Problem(task=self.name, prompt=prompt, answer=answer, solution=r1_solution(steps, answer),
                       difficulty=self.difficulty)

    def warm_up(self) -> None:
        self.verify("2x", "x+x")  # sympy, through the safe parser

    def verify(self, candidate: str, reference: str, prompt: str = "") -> bool:
        import sympy

        try:
            got, want = to_expression(candidate), to_expression(reference)
            return sympy.cancel(got - want) == 0
        except (safe_math.MathError, ZeroDivisionError, sympy.PolynomialError):
            return False
