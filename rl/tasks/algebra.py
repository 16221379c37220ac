"""Algebra in one variable x: solve a linear equation, expand a product, simplify a sum of like terms.

Reference answers are computed by sympy from integer coefficients (trusted objects, never strings) and
printed in plain notation ("x^2-x-6", "-7/3"). A candidate is parsed by `safe_math` into an AST and must be
the answer in the reference's form (read from the reference, so a problem checked without its prompt is
checked the same way), and equal to it:

- a number when the reference is one (Solve, a Simplify whose x terms cancel): an integer or decimal, or an
  integer over an integer, with signs: "5", "x = 5", "-7/3", "\\frac{-7}{3}", "10/2"; not "(7-(-2))/(18)".
- a polynomial with like terms collected when the reference is one (Expand, Simplify): a sum of monomials, each
  a number (as above) times at most one x or x^n, each power of x at most once, in any order: "x^2-x-6",
  "-6-x+x^2", "(7/3)x", "7x/3"; not "(x+2)(x-3)", "x(x-1)-6", "3x+3x" or "x^2-(x+6)" (no sum inside a term).
- anything equal when the reference is in neither form (a user's factored answer "(x+2)(x-3)"): symbolic
  equality through sympy, `cancel(candidate - reference) == 0`, bounded by `safe_math.to_sympy`.

So copying the question ("Expand (x+2)(x-3)", "Simplify 3x+3x", the formula of a solution) earns nothing:
the work is the answer's form. In the first two cases the coefficients are compared exactly (`Fraction`s read
off the monomials) and sympy never sees the candidate: a product of sums is refused, never expanded. For
equations, "x = 5" and "5" are both accepted.

Knobs: `kinds` (which of linear / expand / simplify), `coef` (coefficients in [-coef, coef]),
`integer_roots` (linear equations with integer solutions only), and at every level `constant` (a linear
equation's left-hand constant in [-constant, constant], default `coef`): a wider constant range multiplies
the number of distinct equations without harder division, so a small model cannot memorise them.
"""

from __future__ import annotations

import re
from fractions import Fraction

from r1jax.errors import UserError
from r1jax.rl.tasks import safe_math
from r1jax.rl.tasks.base import Problem, Task, r1_solution, register_task, strip_markup
from r1jax.rl.tasks.math_answer import join_digit_groups

MAX_COEF = 1000  # the `coef` knob's bound (each draw lists the 2 x coef non-zero values)
_LEADING_VAR = re.compile(r"^\s*x\s*=(?!=)")
_SIMPLIFY_TERM = re.compile(r"[+-]?\d*x|[+-]?\d+")


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


def parse_answer(text: str) -> tuple:
    """The safe parser's AST of answer text in x ("x = " before it dropped, digit groups joined as the math and
    arithmetic tasks join them: "1\\,000x" is 1000x, "1\\,2x" two numbers side by side); raises MathError."""
    return safe_math.parse(join_digit_groups(_LEADING_VAR.sub("", strip_markup(text), count=1)), names="x")


def check_reference(reference: str) -> str | None:
    """Why a data row's reference can never score (every answer would be wrong), or None: the verifier reads it
    as `AlgebraTask.verify` does, the safe parser, then its coefficients (a division by zero: "x/0") or, in
    another form, `safe_math.to_sympy` ("(x+1)^100", "2^x": a power past its bounds) and sympy's equality, which
    an undefined value fails even against itself ("0^-1" is sympy's zoo)."""
    try:
        want = parse_answer(reference)
        if answer_form(want) is None:
            import sympy

            value = safe_math.to_sympy(want)
            if sympy.cancel(value - value) != 0:
                raise safe_math.MathError("an undefined value, equal to nothing")
    except (safe_math.MathError, ZeroDivisionError) as err:
        return f"the reference {reference[:60]!r} is not an answer in x the algebra verifier reads ({err})"
    return None


def _x_power(node: tuple) -> int:
    """n for x or x^n (n a positive integer literal), else 0."""
    if node == ("var", "x"):
        return 1
    if node[0] == "pow" and node[1] == ("var", "x") and node[2][0] == "num":
        n = node[2][1]
        return int(n) if n.denominator == 1 and n >= 1 else 0
    return 0


def monomial_degree(node: tuple) -> int | None:
    """The power of x of a monomial: signs, at most one number (an integer or decimal) over at most one integer,
    and at most one x or x^n, multiplied in any order ("3x^2", "-x", "(7/3)x", "7x/3", "\\frac{x}{2}", "5");
    None for anything else (a sum, a product of two numbers or of x and x, x in a denominator)."""
    numerators, denominators, degree = [], [], 0
    stack = [(node, False)]  # (node, in a denominator)
    while stack:
        node, below = stack.pop()
        kind = node[0]
        if kind == "neg":
            stack.append((node[1], below))
        elif kind == "mul":
            stack += [(node[1], below), (node[2], below)]
        elif kind == "div" and not below:
            stack += [(node[1], False), (node[2], True)]
        elif kind == "num":
            (denominators if below else numerators).append(node[1])
        elif not below and not degree and _x_power(node):
            degree = _x_power(node)
        else:
            return None
    if len(numerators) > 1 or len(denominators) > 1:
        return None
    if denominators and (denominators[0].denominator != 1 or any(n.denominator != 1 for n in numerators)):
        return None  # a ratio of two integers, not 2.5/3 or 2/0.5
    return degree


def _coefficient(node: tuple) -> Fraction:
    """The number of a monomial (`monomial_degree` accepted it), x taken as 1."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "neg":
        return -_coefficient(node[1])
    if kind == "mul":
        return _coefficient(node[1]) * _coefficient(node[2])
    if kind == "div":
        divisor = _coefficient(node[2])
        if divisor == 0:
            raise safe_math.MathError("division by zero")
        return _coefficient(node[1]) / divisor
    return Fraction(1)  # x or x^n


def collected(node: tuple) -> dict[int, Fraction] | None:
    """Power of x -> coefficient of a polynomial written as a sum of monomials with like terms collected (each
    power once), e.g. {2: 1, 1: -1, 0: -6} for "x^2-x-6"; None for any other form ("(x+2)(x-3)", "3x+3x",
    "x^2-(x+6)"). Exact and cheap: at most two numbers of at most 24 digits per term."""
    terms = []
    while node[0] in ("add", "sub"):
        if node[2][0] in ("add", "sub"):  # "a - (b + c)": a bracketed sum is not collected
            return None
        terms.append((node[2], -1 if node[0] == "sub" else 1))
        node = node[1]
    terms.append((node, 1))
    coefficients = {}
    for term, sign in terms:
        degree = monomial_degree(term)
        if degree is None or degree in coefficients:
            return None
        coefficients[degree] = sign * _coefficient(term)
    return coefficients


def answer_form(node: tuple) -> str | None:
    """"number", "polynomial" (collected), or None: the form a reference asks of a candidate."""
    coefficients = collected(node)
    return None if coefficients is None else "number" if set(coefficients) == {0} else "polynomial"


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

    def check_knobs(self) -> None:
        self.knob_names("kinds", ("linear", "simplify", "expand"))  # an unknown kind generated simplify ones
        self.knob_integer("coef", 1, MAX_COEF)
        if type(self.knobs["integer_roots"]) is not bool:
            raise UserError(f"task 'algebra': knob integer_roots = {self.knobs['integer_roots']!r}: expected true "
                            "or false")

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

    @staticmethod
    def problem_key(prompt: str) -> object:
        """One problem however its prompt orders it: Expand's two factors and Simplify's terms as multisets
        (held out by prompt, 41 of 199 held-out Simplify problems at level 3 were training problems with their
        terms swapped); a Solve prompt, or one of another form, is its own key."""
        kind, _, body = prompt.partition(" ")
        factors = re.fullmatch(r"\((.+)\)\((.+)\)", body) if kind == "Expand" else None
        if factors:
            return kind, tuple(sorted(factors.groups()))
        terms = re.findall(r"[+-]?[^+-]+", body) if kind == "Simplify" else []
        if not terms or "".join(terms) != body or not all(_SIMPLIFY_TERM.fullmatch(t) for t in terms):
            return Task.problem_key(prompt)
        xs = sorted(int(t[:-1] + "1" if t[:-1] in ("", "+", "-") else t[:-1]) for t in terms if t.endswith("x"))
        return kind, tuple(xs), tuple(sorted(int(t) for t in terms if not t.endswith("x")))

    @staticmethod
    def problem_kind(prompt: str) -> object:
        kind = prompt.partition(" ")[0]
        return kind if kind in ("Solve", "Expand", "Simplify") else None

    def warm_up(self) -> None:
        self.verify("2x", "(x+1)(x-1)")  # sympy (a reference in another form), through the safe parser

    def verify(self, candidate: str, reference: str, prompt: str = "") -> bool:
        """Whether `candidate` is `reference` in the reference's form (the module docstring); the form is
        read from the reference, so a problem without its prompt is checked the same way."""
        import sympy

        try:
            want, got = parse_answer(reference), parse_answer(candidate)
            form = answer_form(want)
            if form is None:  # a reference in another form (a user's): equality alone, through sympy
                return sympy.cancel(safe_math.to_sympy(got) - safe_math.to_sympy(want)) == 0
            have = collected(got)  # the form first: a product of sums is never expanded
            if have is None or (form == "number" and set(have) != {0}):
                return False
            return {k: c for k, c in have.items() if c} == {k: c for k, c in collected(want).items() if c}
        except (safe_math.MathError, ZeroDivisionError, sympy.PolynomialError):
            return False
