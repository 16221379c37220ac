"""The `math` task: a verifier for free-form math answers (user data), through math-verify.

math-verify parses LaTeX with an ANTLR grammar (latex2sympy2), so model text never reaches sympy's
`parse_expr`: only `LatexExtractionConfig` is used (its `ExprExtractionConfig` calls `parse_expr`, which
evaluates Python). It handles fractions, decimals, percentages, sets, intervals, equations ("x=5" equals
"5") and symbolic equality.

Digit groups: "10\\,000", "10\\!000", "10\\;000", "10 000", "10~000", "10{,}000" and "10,\\!000" are 10000
(`join_digit_groups`: groups of exactly three digits after a first group of one to three, not led by a 0: "0,111"
is 0.111 as math-verify reads it, never 111, and "-0,111" -0.111); math-verify alone reads "1\\,000" and "1\\;000"
as 1*0 and "3 4" as 3+4. Two numbers still side by side with only spacing between ("3 4", "1 2", "5 \\quad 4",
"1 000 00") are ambiguous: such an answer scores 0. A number or a closing bracket next to an opening bracket,
or a closing bracket next to a number, is a product ("2(3)", "(3)(4)", "\\frac{1}{2}(x+1)": `explicit_products`),
which math-verify read as a mixed number (2 + 3). An answer is parsed as one formula (inside $...$), unless
math delimiters remain inside it: bare, math-verify took its first fraction for the answer ("1 + \\frac{1}{2}").
A reference of words in \\text ("\\text{No}") compares as words (`_words`), and a decimal must also agree to
RELATIVE_TOLERANCE of the value (`_relatively_close`). Text math-verify drops may not hide a second answer
("5 \\text{ or 6}", "5 \\textbf{6}": `hedged`), and each side of an approximation with a digit must verify, a
decimal (a percent: over 100) to its last place ("5 \\approx 6" was 5; "\\frac{1}{3} \\approx 0.333" and
"\\frac{2}{3} \\approx 66.7\\%" score). Shapes whose parsing or comparison could run away are refused first
(rl.tasks.math_screen), and so is an answer or a reference of more than MAX_ANSWER_CHARS characters (whitespace
around it aside): math-verify's own normalisation is quadratic in runs of spaces (0.5 s for 1,000 in "x = ... a",
2 s, its alarm, for 2,000 and beyond).

sympy, latex2sympy2 and math-verify are imported inside the functions that use them: they take seconds to
import and are needed only where answers are verified (the reward workers), not in the trainer.
"""

from __future__ import annotations

import re
import threading

from r1jax.errors import UserError
from r1jax.rl.tasks.base import TEXT_COMMANDS, Problem, Task, register_task, strip_markup
from r1jax.rl.tasks.math_screen import risky

MAX_ANSWER_CHARS = 1000  # four times the longest answer the accuracy reward reads by default (answer_max_chars)
# LaTeX's spacing (thin, medium, thick, negative thin, normal), non-breaking, narrow no-break
_SPACE = r"(?:\\[,:;! ]|~| |\u00a0|\u2009|\u202f)"
_SEPARATOR = re.compile(r"\{,\}|,\\!|" + _SPACE)
_GROUPED = re.compile(r"(?<![\d.^_])[1-9]\d{0,2}(?:(?:\{,\}|,\\!|%s)\d{3})+(?!\d)" % _SPACE)
# a whole answer that is one number with thousands commas, signed or not ("-1,234", "+2,500.5"), or a letter equal
# to one ("x = 1,234"): math-verify reads "1,234" as 1234 but "-1,234" as no number, and "x = 1,234" as 1234 as
# text (its default) but x = {1, 234} as LaTeX (the only way r1jax parses), which scored a right answer 0
_COMMA_GROUPED = re.compile(r"\s*+(?:[a-zA-Z]\s*+=\s*+)?(?:[-+−]\s*+)?[1-9]\d{0,2}(?:,\d{3})++(?:\.\d++)?\s*+")
# a whole answer that is 0, a comma and three digits, signed or not: a decimal comma ("0,111" is 0.111 to math-verify,
# "-0,111" no number; "0,5" and "1,5" stay the lists {0, 5} and {1, 5}, as math-verify reads them)
_DECIMAL_COMMA = re.compile(r"\s*+(?P<sign>[-+−]?)\s*+0,(?P<digits>\d{3})\s*+")
_AMBIGUOUS = re.compile(r"\d(?:\s|\\[,;: !]|~|\\q?quad(?![a-zA-Z])|[\u00a0\u2009\u202f])+\d")


# A number or a closing bracket, then an opening bracket; a closing bracket, then a number: an implicit
# product, which math-verify reads as a mixed number ("2(3)", "(3)4", "(2)(3)" are 2 + 3; "2\\left(3\\right)"
# 5). A fraction before a bracket it drops ("\\frac{1}{2}(x+1)" is 1/2). A letter, a function or a command
# with a subscript before a bracket is left alone ("f(3)", "\\sin(x)", "\\log_{2}(8)").
_BRACKET_AFTER = re.compile(r"(?<=[\d)])\s*(?=\\left\s*\(|\()|(?<=\))\s*(?=\d)")
_FRACTION_BEFORE_BRACKET = re.compile(r"(\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\})\s*(?=\\left\s*\(|\()")
_INNER_DELIMITER = re.compile(r"\$|\\[(\[]")  # $, \( or \[ inside an answer (parse_answer)


def explicit_products(text: str) -> str:
    """'2(3)', '(2)(3)', '(3)4', '\\frac{1}{2}(x+1)' -> '2\\cdot (3)', ...: implicit products made explicit."""
    return _FRACTION_BEFORE_BRACKET.sub(r"\1\\cdot ", _BRACKET_AFTER.sub(r"\\cdot ", text))


def normalise(text: str) -> str:
    """An answer as the screen and the parser read it: a decimal comma a point ("-0,111"), digit groups joined,
    implicit products explicit."""
    comma = _DECIMAL_COMMA.fullmatch(strip_markup(text))  # (in \\boxed{} or $...$ too)
    if comma:
        return f"{comma.group('sign').replace('−', '-')}0.{comma.group('digits')}"
    return explicit_products(join_digit_groups(text))


def join_digit_groups(text: str) -> str:
    """'10\\,000', '10 000', '1{,}234{,}567' -> '10000', '1234567': separators between digit groups of three; a
    whole answer of one number with commas, '-1,234' or '\\boxed{-1,234}' -> '-1234', or a letter equal to one,
    'x = 1,234' -> 'x = 1234'."""
    bare = strip_markup(text)
    if _COMMA_GROUPED.fullmatch(bare):
        return bare.replace(",", "")
    return _GROUPED.sub(lambda match: _SEPARATOR.sub("", match.group(0)), text)


def ambiguous(text: str) -> bool:
    """Two numbers side by side with only spacing between ("3 4"): a product, a sum, or a typo."""
    return _AMBIGUOUS.search(text) is not None


def check_reference(reference: str) -> str | None:
    """Why a reference answer can never score (the screen refuses it), or None: for data loading to name the row,
    as countdown's check_reference does."""
    if len(reference.strip()) > MAX_ANSWER_CHARS:
        return f"the math verifier reads answers of at most {MAX_ANSWER_CHARS} characters, this reference has " \
               f"{len(reference.strip())}"
    reason = risky(normalise(reference))
    return f"the math verifier refuses this reference ({reason})" if reason else None


def _timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which works (and is allowed) only on the main thread.
    return 2 if threading.current_thread() is threading.main_thread() else None


_NUMERAL = re.compile(r"\d*+\.?\d*+")
_hardened = False


def _numeral(text: str):
    """A sympy number from digits with at most one point, built without sympify (which runs parse_expr)."""
    import sympy

    if not text or text == "." or not _NUMERAL.fullmatch(text):
        raise ValueError(f"not a numeral: {text[:40]!r}")
    return sympy.Float(text) if "." in text else sympy.Integer(int(text))


def _convert_number(number: str):  # latex2sympy2's convert_number, minus sympy.Number(str)
    if "," in number and number.startswith("0"):
        number = number.replace(",", ".")
    return _numeral(number.translate(str.maketrans("", "", ", ")).lstrip("0") or "0")


def _parse_number(self, text: str):  # latex2sympy2's _Latex2Sympy.parse_number, minus sympy.Number(str)
    return _numeral(text.replace(",", ""))


def harden_latex2sympy() -> None:
    """Make latex2sympy2 build numbers without sympify: its two number helpers call sympy.Number(text),
    which parses with parse_expr and eval. Their input is a lexer-checked numeral, so this is defence in
    depth; afterwards no string from a completion reaches parse_expr at all (tests spy on it)."""
    global _hardened
    if not _hardened:
        from latex2sympy2_extended import latex2sympy2

        if not (hasattr(latex2sympy2, "convert_number") and hasattr(latex2sympy2._Latex2Sympy, "parse_number")):
            raise RuntimeError("latex2sympy2_extended changed its number helpers: update harden_latex2sympy")
        latex2sympy2.convert_number = _convert_number
        latex2sympy2._Latex2Sympy.parse_number = _parse_number
        _hardened = True


def _parse(text: str) -> tuple[list, bool]:
    """math-verify's parse, LaTeX only: (the parsed answers, whether the parse timed out)."""
    from math_verify import LatexExtractionConfig, parse
    from math_verify.errors import TimeoutException

    try:
        return parse(text, extraction_config=[LatexExtractionConfig()], parsing_timeout=_timeout(),
                     raise_on_error=True), False
    except TimeoutException:
        return [], True
    except Exception:  # noqa: BLE001 - what parse returns [] for without raise_on_error
        return [], False


def parse_answer(text: str) -> list:
    """math-verify's parse, LaTeX only, of the answer as one formula: inside $...$ with its outer markup
    stripped, unless math delimiters remain inside it ("x = $5$": then as math-verify finds them); each way
    tried after the other when it does not parse (and did not time out: it would again). Unwrapped,
    math-verify took the first fraction it found for the answer: "1 + \\frac{1}{2}" was 1/2, and
    "y = \\frac{1}{2}x + 3" too."""
    harden_latex2sympy()
    text = explicit_products(text)
    wrapped = f"${strip_markup(text)}$"
    tries = (text, wrapped) if _INNER_DELIMITER.search(wrapped[1:-1]) else (wrapped, text)
    parsed, timed_out = _parse(tries[0])
    if not parsed and not timed_out:
        parsed, _ = _parse(tries[1])
    return parsed


@register_task
class MathTask(Task):
    name = "math"

    def generate(self, seed: int, index: int) -> Problem:
        raise UserError("task 'math' has no generator: it verifies user data (give a data file, "
                        "or use the arithmetic / countdown / algebra tasks)")

    def warm_up(self) -> None:
        self.verify("x^2-1", "(x-1)(x+1)")  # math-verify and sympy: parse, compare, simplify (sympy.physics)

    def _approximate_side(self, side: str, bare: str, reference: str, prompt: str) -> bool:
        """One side of an approximation: a decimal to its last place (_approximates); a percent ("66.7\\%") also
        as math-verify reads it, its percent dropped, as the reference "50\\%" or "25" (a percent asked for) was
        compared before percents were read over 100; anything else verified as an answer."""
        decimal = _DECIMAL.fullmatch(bare)
        if decimal is None:
            return self.verify(side, reference, prompt)
        percent = bool(decimal.group("percent"))
        return _approximates(bare, reference) or (percent and self.verify(side, reference, prompt))

    def verify(self, candidate: str, reference: str, prompt: str = "") -> bool:
        from math_verify import verify

        if max(len(candidate.strip()), len(reference.strip())) > MAX_ANSWER_CHARS:
            return False  # (module docstring)
        words = _words(reference)
        if words is not None:
            return _words(candidate, wrapped=False) == words
        # "x = 2 \\text{ or } x = 3": the list "x = 2, x = 3"
        candidate, reference = _CONNECTOR.sub(", ", candidate), _CONNECTOR.sub(", ", reference)
        if hedged(candidate, reference):
            return False
        # each side without its unit ("3.33 \\text{ cm}"), which hedged checked
        sides = [(side, _UNIT.sub("", side)) for side in _APPROX.split(strip_markup(candidate))]
        sides = [(side, bare) for side, bare in sides if re.search(r"\d", bare)]
        if _APPROX.search(candidate):  # "5 \\approx 6": math-verify read its left side (5), "x \\approx 5" its right
            return bool(sides) and all(self._approximate_side(side, bare, reference, prompt) for side, bare in sides)
        candidate, reference = normalise(candidate), normalise(reference)
        if ambiguous(candidate) or risky(candidate) or risky(reference):
            return False
        gold, pred = parse_answer(reference), parse_answer(candidate)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=_timeout())) and _relatively_close(gold[0], pred[0])


# Text in a formula, whose content math-verify drops: "5 \\text{ or 6}", "5 \\textbf{6}" and "5 \\mathit{ (or 6)}" were
# 5. A group that holds a digit or a hedging word is refused unless the reference holds the same group.
_TEXT_GROUP = re.compile(r"\\(?:text[a-z]*|math[a-z]*|[mh]box|emph|operatorname)\s*\{")
# A text group of only "or" or "and" between answers: a list of them ("x = 2 \\text{ or } x = 3" for the solutions
# "2, 3"), compared as one; a hedge ("5 \\text{ or } 6" for 5) is a list of two, which fails a single reference
_CONNECTOR = re.compile(r"(?!(?<=\s)\s)\s*+,?\s*+\\(?:text[a-z]*+|mathrm|[mh]box)\s*+\{\s*+,?\s*+(?:or|and)\s*+\}\s*+",
                        re.I)
_POWER = re.compile(r"[\^_]\s*(?:\d|\{\s*-?\d+\s*\})")  # a unit's power or index ("\\mathrm{cm^2}", "H_2O"): no answer
_HEDGE = re.compile(r"\d|(?<![A-Za-z])(?:or|either|maybe|perhaps|possibly|probably|not|otherwise)(?![A-Za-z])", re.I)
# An approximation: each side with a digit must verify, a decimal to its last place ("5 \\approx 6" scored for 5);
# a side without one ("x", "\\pi") is left out
_APPROX = re.compile(r"\\(?:approx|approxeq|thickapprox)(?![a-zA-Z])|\u2248")
# a side's trailing unit, its power too ("3.33 \\text{ cm}^2"): a decimal with a unit is still a decimal
_UNIT = re.compile(r"(?<![\s~])(?<!\\[,;: !])(?:\s|\\[,;: !]|~)*+\\(?:text[a-z]*+|mathrm|[mh]box)\s*+\{[^{}]*+\}"
                   r"(?:\s*+\^\s*+(?:\d|\{\s*+\d++\s*+\}))?\s*+$")
# a decimal, or a number in percent ("66.7\\%", "67%": its value over 100, to its last place)
_DECIMAL = re.compile(r"\s*+(?P<number>[-+]?\d{1,30}\.\d{1,30}|[-+]?\d{1,30}(?=\s*+\\?%))\s*+(?P<percent>\\?%)?\s*+")


def _approximates(decimal: str, reference: str) -> bool:
    """Whether a decimal (_DECIMAL: a percent's over 100) is the reference's value (`_exact_value`) to its last place
    (rounded or cut), as the side of an approximation ("\\frac{1}{3} \\approx 0.333", "\\frac{2}{3} \\approx
    66.7\\%"); False for a reference that is no number."""
    import sympy

    value = _exact_value(reference)
    if value is None:
        return False
    match = _DECIMAL.fullmatch(decimal)
    number = match.group("number")
    places = len(number.split(".")[1]) if "." in number else 0
    places, digits = places + 2 * bool(match.group("percent")), int(number.replace(".", ""))
    try:  # in sympy's arbitrary precision: a float's 16 digits cut "\\frac{1}{7} \\approx 0.142857142857142857" short
        scaled = (value * sympy.Integer(10) ** places).evalf(len(str(abs(digits))) + 40)
        return digits in (int(sympy.floor(scaled + sympy.Rational(1, 2))), int(scaled))
    except (TypeError, ValueError, OverflowError):
        return False


def _exact_value(reference: str):
    """The reference's value as a sympy number, else None: of an approximation, its first side that is a number
    ("\\frac{1}{3} \\approx 0.33": 1/3, where its rounding 0.33 made "\\frac13 \\approx 0.333" score 0; "x \\approx
    3.14" and "\\approx 3.14": 3.14)."""
    import sympy

    for side in _APPROX.split(strip_markup(reference)):
        side = normalise(side)
        gold = [] if not side.strip() or ambiguous(side) or risky(side) else parse_answer(side)
        value = gold[0].rhs if gold and isinstance(gold[0], sympy.Eq) else gold[0] if gold else None
        if isinstance(value, sympy.Expr) and value.is_number:
            return value
    return None


def _text_groups(text: str) -> list[str]:
    """The contents of the text commands' brace groups in `text`, spaces collapsed."""
    groups = []
    for match in _TEXT_GROUP.finditer(text):
        depth, start = 0, match.end() - 1
        for end in range(start, len(text)):
            depth += (text[end] == "{") - (text[end] == "}")
            if depth == 0:
                groups.append(" ".join(text[start + 1:end].split()))
                break
    return groups


def hedged(candidate: str, reference: str) -> bool:
    """Whether the candidate hides another answer in text math-verify drops: a \\text-like group (not the whole
    answer) holding a digit or a hedging word, which the reference does not hold."""
    known = set(_text_groups(reference))
    return any(_HEDGE.search(_POWER.sub("", group)) and group not in known
               for group in _text_groups(strip_markup(candidate)))


_TEXT_WRAPPER = re.compile(r"\\(?:%s)\s*\{" % "|".join(TEXT_COMMANDS))
_WORDS = re.compile(r"[A-Za-z]+(?:\s+[A-Za-z]+)*")  # and a word of two letters or more (`_words`)


def _words(answer: str, wrapped: bool = True) -> str | None:
    """An answer of words ("\\text{No}", "\\text{Devon}", "$\\text{even}$"), lowercased with single spaces, else
    None; a reference must write them in \\text, \\textbf or \\mathrm (`wrapped`), or they are letters ("ab"). They
    compare as text: math-verify read the letters as a product of variables, so "On" scored for "No", "ECA" for
    "\\text{ACE}" and "silent" for "\\text{listen}"."""
    if wrapped and not _TEXT_WRAPPER.search(answer):
        return None
    text = strip_markup(answer)
    words = _WORDS.fullmatch(text) and re.search(r"[A-Za-z]{2}", text)
    return " ".join(text.lower().split()) if words else None


# math-verify compares a decimal with a number rounded to 6 places: -0.0000004 matched 0.0000001, 0.0000014
# matched \frac{1}{1000000}. Decimals must also agree to this relative difference (a decimal of 6 places
# still matches \frac{1}{3}, \sqrt{2} or \pi as before; only values below ~0.01 meet the bound first).
RELATIVE_TOLERANCE = 1e-4


def _by_value(elements: tuple) -> tuple:
    """A set's elements, numbers by value first (real part, then imaginary), the rest in sympy's order: sympy
    orders a set's floats before its rationals, so {-1, 0.5} and {\\frac{1}{2}, -1} were paired -1 with 1/2 and
    0.5 with -1 and a right answer scored 0."""
    import sympy

    def key(element):
        if isinstance(element, sympy.Expr) and element.is_number:
            return (0, *element.evalf(15).as_real_imag())
        return (1, sympy.default_sort_key(element))

    try:
        return tuple(sorted(elements, key=key))
    except TypeError:  # no order: a value sympy cannot compare (nan, zoo)
        return elements


def _relatively_close(gold, pred) -> bool:
    """Whether two parsed answers that math-verify found equal, where both are numbers (an equation's right
    side) and one holds a decimal, differ by at most RELATIVE_TOLERANCE of the larger, element by element in
    sets, tuples and intervals; True for anything else (math-verify decided)."""
    import sympy

    gold, pred = (answer.rhs if isinstance(answer, sympy.Eq) else answer for answer in (gold, pred))
    if isinstance(gold, (sympy.FiniteSet, sympy.Tuple, sympy.Interval)) and type(gold) is type(pred):
        pairs = zip(*map(_by_value, (gold.args, pred.args))) if isinstance(gold, sympy.FiniteSet) \
            else zip(gold.args, pred.args)  # (a set's elements are paired by value, a tuple's by place)
        return len(gold.args) != len(pred.args) or all(_relatively_close(g, p) for g, p in pairs)
    if not all(isinstance(answer, sympy.Expr) and answer.is_number for answer in (gold, pred)):
        return True
    if not (gold.has(sympy.Float) or pred.has(sympy.Float)):
        return True
    a, b = gold.evalf(15), pred.evalf(15)  # sympy's floats: 1.5 x 10^400 overflowed a Python complex
    try:
        return bool(abs(a - b) <= RELATIVE_TOLERANCE * sympy.Max(abs(a), abs(b)))
    except (TypeError, ValueError):  # no order: a value sympy cannot compare (a percent's "12.0*Abs(1/100)")
        return True
