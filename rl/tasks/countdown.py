"""Countdown: reach a target from given numbers with + - * /, each number used at most once.

The reference answer is one valid equation's left side, e.g. "(3+5)*2" (or "(3+5)*2 = 16"); its exact
value is the target. The numbers allowed are read from the prompt: the generator's "Make 16 from 2, 3, 5
(...)" or a list "[2, 3, 5]" (the usual Countdown prompt, "Using the numbers [19, 36, 55, 7], create an
equation that equals 65"); with such a prompt the reference may be the target alone ("65"). When the prompt
lists no numbers, the numbers of the reference are the allowed multiset, so the reference must be an
expression of at least two numbers (a data file's row that is not is refused when it loads:
`check_reference`; a bare target then scores nothing). The operators allowed are the prompt's ("(+-*/,
...)"), else + - * /; any other (a power "2^3") fails. A candidate may be the expression alone or
"expression = target"; it is evaluated exactly by `safe_math` (never `eval`). Each number may be used at
most once, unless the prompt asks for all of them ("each number exactly once", "use all the numbers", "every
number": TinyZero's rule, whose judge wants every listed number): then a candidate must use each listed number
exactly as often as the prompt lists it.

Knobs: `count` numbers that build the target, `max_value` of each number, `distractors` extra numbers
that the target does not need. Targets stay at most MAX_TARGET: a draw above it is drawn again, like one
whose target is one of its numbers.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction
from typing import Iterator

from r1jax.errors import UserError
from r1jax.rl.tasks import safe_math
from r1jax.rl.tasks.base import Problem, Task, r1_solution, register_task, strip_markup
from r1jax.rl.tasks.math_answer import join_digit_groups

MAX_TARGET = 1000
# draws before a problem is given up (the shipped levels need at most 5 in 100,000 problems; 10 numbers up to 1,000
# missed MAX_TARGET 20 times in a row in 8 of 1,000 problems, which then kept a target past it)
MAX_TRIES = 1000
MAX_COUNT = 10  # numbers a problem combines (and distractors beside them)
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_PROMPT_NUMBERS = re.compile(r"from ([\d, ]+)\(")
_PROMPT_LIST = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)+)\s*\]")  # "[19, 36, 55, 7]"
_PROMPT_OPERATORS = re.compile(r"from [\d, ]+\(((?:\s*[-+*/]\s*,?)+)")  # "(+-*/, each" or "(+, -, *, /)"
# "each number exactly once", "use all (of) the (4 / given) numbers", "every number must be used", "all 4
# numbers"; not "some or all of the numbers", "use all four operations"
_EVERY_NUMBER = re.compile(r"\bnumbers?\b[^.;]{0,30}?\b(?:exactly once|once and only once|exactly one time)"
                           r"|(?<!some or )(?<!any or )\ball (?:of )?(?:the )?(?:\w+ )?numbers\b"
                           r"|\bevery number\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:not|no|need not|never)\b|n't\b", re.IGNORECASE)
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


def prompt_numbers(prompt: str) -> Counter | None:
    """The numbers the prompt lists ("from 2, 3, 5 (" or "[2, 3, 5]"), or None when it lists none."""
    match = _PROMPT_NUMBERS.search(prompt or "") or _PROMPT_LIST.search(prompt or "")
    return Counter(Fraction(n) for n in re.findall(r"\d+", match.group(1))) if match else None


def allowed_numbers(prompt: str, reference_node: tuple) -> Counter:
    listed = prompt_numbers(prompt)
    return listed if listed is not None else Counter(safe_math.numbers(reference_node))


def uses_every_number(prompt: str) -> bool:
    """Whether the prompt asks for every listed number (exactly once each), not for at most once."""
    if prompt_numbers(prompt) is None:
        return False
    for match in _EVERY_NUMBER.finditer(prompt):  # not "you do not need to use all the numbers"
        if not _NEGATION.search(re.split(r"[.,;]", prompt[max(0, match.start() - 40):match.start()])[-1]):
            return True
    return False


def allowed_operators(prompt: str) -> str:
    """The operator symbols the prompt lists ("(+-*/, each at most once)" or "(+, -, *, /)"), else + - * /."""
    match = _PROMPT_OPERATORS.search(prompt or "")
    return "".join(re.findall(r"[-+*/]", match.group(1))) if match else "+-*/"


def operators(node: tuple) -> Iterator[str]:
    """The operator symbols of an AST (an implicit product "2(3+5)" is "*", a unary minus "-")."""
    if node[0] in _OPERATORS:
        yield _OPERATORS[node[0]]
    if node[0] not in ("num", "var"):
        for child in node[1:]:
            yield from operators(child)


def _split_equation(text: str, target: Fraction | None) -> tuple | None:
    """The expression side of 'expr', 'expr = target' or 'target = expr' (None when it is neither). Without a
    target (a reference), 'expr = n' is taken when n is the expression's value."""
    # digit groups joined as the math and arithmetic tasks join them: "1\\,000" is 1000, "2\\,5" two numbers
    sides = [safe_math.parse(join_digit_groups(s)) for s in strip_markup(text).split("=")]
    if len(sides) == 1:
        return sides[0]
    if len(sides) == 2:
        for expr, other in (sides, sides[::-1]):
            if safe_math.is_number(other) and safe_math.evaluate(other) == (
                    safe_math.evaluate(expr) if target is None else target):
                return expr
    return None


def check_reference(prompt: str, reference: str) -> str | None:
    """Why a data row's reference cannot be checked (a message), or None when it can: it must be an
    expression (or 'expression = target'), and one of at least two numbers unless the prompt lists them."""
    try:
        node = _split_equation(reference, None)
        if node is None:
            raise safe_math.MathError("an equation whose sides differ")
        safe_math.evaluate(node)
    except (safe_math.MathError, TypeError, ZeroDivisionError) as err:
        return (f"the reference {reference[:60]!r} is not an arithmetic expression such as '(3+5)*2' ({err})")
    used, listed = list(safe_math.numbers(node)), prompt_numbers(prompt)
    if listed is None and len(used) < 2:
        return (f"the reference {reference[:60]!r} is not an expression of the numbers, and the prompt does not "
                "list them ('from 2, 3, 5 (' or '[2, 3, 5]'): give the expression that reaches the target, "
                "e.g. '(3+5)*2' (data.fields.answer can name such a column), or list the numbers in the prompt")
    if listed is not None and len(used) > 1 and Counter(used) - listed:
        return f"the reference {reference[:60]!r} uses numbers that the prompt does not list"
    if listed is not None and len(used) > 1 and uses_every_number(prompt) and Counter(used) != listed:
        return (f"the reference {reference[:60]!r} leaves out numbers that its prompt asks to use all of "
                f"({', '.join(str(n) for n in sorted(listed.elements()))})")
    banned = sorted(set(operators(node)) - set(allowed_operators(prompt)))
    if banned:  # every answer would be judged against operators the prompt seems to leave out
        return (f"the reference {reference[:60]!r} uses {' '.join(banned)}, which the prompt's operator list "
                f"({' '.join(allowed_operators(prompt))}) leaves out")
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

    def check_knobs(self) -> None:
        self.knob_integer("count", 2, MAX_COUNT)  # one number "makes" itself
        self.knob_integer("max_value", 2, MAX_TARGET)
        self.knob_integer("distractors", 0, MAX_COUNT)

    def generate(self, seed: int, index: int) -> Problem:
        rng = self.rng(seed, index)
        for _ in range(MAX_TRIES):  # skip trivial problems (a target among the numbers), targets past MAX_TARGET
            used = [rng.randint(1, self.knobs["max_value"]) for _ in range(self.knobs["count"])]
            expression, target, steps = build_equation(rng, used)
            if target not in used and target <= MAX_TARGET:
                break
        else:
            raise UserError(f"task countdown {self.knobs}: no draw of {MAX_TRIES} made a target of at most "
                            f"{MAX_TARGET} that is not one of its numbers (fewer or smaller numbers)")
        extra = [_distractor(rng, self.knobs["max_value"], target) for _ in range(self.knobs["distractors"])]
        shown = used + extra
        rng.shuffle(shown)
        prompt = f"Make {target} from {', '.join(map(str, shown))} (+-*/, each at most once)"
        return Problem(task=self.name, prompt=prompt, answer=expression,
                       solution=r1_solution(steps, expression), difficulty=self.difficulty)

    @staticmethod
    def problem_key(prompt: str) -> object:
        """The target and the multiset of numbers: the prompt shows the numbers shuffled, so one problem has many
        prompts (held out by prompt, 191 of 200 held-out problems were training problems reordered). Also for
        a data file's list form ("Using the numbers [19, 36, 55, 7], create an equation that equals 91")."""
        numbers = _PROMPT_NUMBERS.search(prompt) or _PROMPT_LIST.search(prompt)
        target = re.match(r"Make (\d+) ", prompt) or re.search(r"equals? (\d+)\b", prompt)
        if numbers is None or target is None:
            return Task.problem_key(prompt)
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
        if prompt_numbers(prompt) is None and len(list(safe_math.numbers(reference_node))) < 2:
            return False  # a bare target as the reference, no numbers in the prompt: nothing to check against
        used = list(safe_math.numbers(node))
        if any(n.denominator != 1 for n in used):
            return False
        if uses_every_number(prompt):
            return Counter(used) == prompt_numbers(prompt)
        return not (Counter(used) - allowed_numbers(prompt, reference_node))
