"""The `math` task: a verifier for free-form math answers (user data), through math-verify.

math-verify parses LaTeX with an ANTLR grammar (latex2sympy2), so model text never reaches sympy's
`parse_expr`: only `LatexExtractionConfig` is used (its `ExprExtractionConfig` calls `parse_expr`, which
evaluates Python). It handles fractions, decimals, percentages, sets, intervals, equations ("x=5" equals
"5") and symbolic equality.

Digit groups: "10\\,000", "10 000", "10~000", "10{,}000" and "10,\\!000" are 10000 (`join_digit_groups`:
groups of exactly three digits after a first group of one to three); math-verify alone reads "1\\,000" as
1*0 and "3 4" as 3+4. Two numbers still side by side with only spacing between ("3 4", "1 2", "5 \\quad 4",
"1 000 00") are ambiguous: such an answer scores 0. A number or a closing bracket next to an opening bracket,
or a closing bracket next to a number, is a product ("2(3)", "(3)(4)", "\\frac{1}{2}(x+1)": `explicit_products`),
which math-verify read as a mixed number (2 + 3). An answer is parsed as one formula (inside $...$), unless
math delimiters remain inside it: bare, math-verify took its first fraction for the answer ("1 + \\frac{1}{2}").

Costs that no in-process timeout stops: sympy evaluates integer powers and factorials eagerly inside GMP
(9^{9^{9^9}} runs for hours and ignores signals), expands powers of sums, and the ANTLR parser takes about
0.1 s per level of nesting. `risky` screens these shapes out before parsing (they score 0):
- brackets nested deeper than MAX_NESTING;
- exponent towers and products in exponents ("9^{9^9}", "2^{9}^{9}", "9^9!"); a power of a bracketed group
  is a tower too ("(10^{9999})^{9999}": the digits of its exponents add up) and, when the group holds a
  letter or a function ("(x+1)^{999}", "\\cos(x)^{999}", expanded by sympy), its exponents' product is at
  most MAX_SYMBOLIC_POWER; a numeric power's digits (its base's, a factorial's log10(k!), times its exponent's
  bound) are at most MAX_POWER_DIGITS ("(9999!)^{9999}", "9999^{9999+9999+...}": millions of digits);
- factorials, \\binom and \\Gamma of anything but a small argument: a sum of numbers and of letters with a
  one-digit factor ("5", "(n-k)!", "\\binom{n+k}{k}", "\\left(2n-k+1\\right)!"), whose numbers add up to at
  most 9999 (MAX_FACTORIAL_DIGITS digits) or, with a letter in it or in the other \\binom argument, to at
  most MAX_SYMBOLIC_OFFSET (sympy expands "(n+99)!/n!" and "\\binom{n}{99}" into 99 factors); not
  "(99999999)!", "(2^{99})!", "(n^n)!", "(10n)!", "(n!)!", "\\frac{1}{2}!", "\\Gamma(99999999)"; double
  factorials ("5!!");
- what puts numbers in place of letters, so that "n!" could become (99999999)!: evaluation at a point
  ("n!|_{n=99999999}"; a bar followed by a subscript, or by a superscript that holds a letter), \\lim and
  \\int (math-verify evaluates them: "\\int_0^{N} \\frac{d}{dx} x! dx" is N!-1);
- \\sum, \\prod and \\choose outright (a final answer is a value, not an unevaluated sum or product).
The screen covers the reference too, with the same limits: a reference costs what an answer costs to parse, and
an answer written as its reference must pass exactly when the reference does. `check_reference` names a
reference that can never score, for data loading to report (none of MATH's 12,500 answers nests deeper than 3
or fails the screen). It is a cheap first line, not a proof: some inputs still take up to math-verify's 2 s
alarm per parse (a product of brackets with many variables expands), and the reward pool's killable workers
are the backstop. math-verify's own signal-based timeouts are used only on the main thread, where signals
work; a parse that timed out is not retried.

sympy, latex2sympy2 and math-verify are imported inside the functions that use them: they take seconds to
import and are needed only where answers are verified (the reward workers), not in the trainer.
"""

from __future__ import annotations

import math
import re
import threading

from r1jax.errors import UserError
from r1jax.rl.tasks.base import Problem, Task, register_task, strip_markup

MAX_NESTING = 6  # brackets of any kind; MATH's answers never pass 3, and each level costs the parser ~0.1 s
MAX_EXPONENT_DIGITS = 4  # 2^{9999} is cheap, 2^{99999999} is not
MAX_FACTORIAL_DIGITS = 4  # 9999! (35,656 digits) takes a millisecond; MATH has 1/2004!
MAX_SYMBOLIC_OFFSET = 9  # (n+9)!/n! and \binom{n}{9} expand to 9 factors; \binom{n}{99} outruns the 2 s alarm
MAX_SYMBOLIC_POWER = 20  # (x+1)^{20} expands in ~50 ms, (x+1)^{999} outruns the 2 s alarm
MAX_POWER_DIGITS = 100_000  # a numeric power's digits: 9999^{9999} has 40,000; (999!)^{999} 2.6 million (1 s)
_OPENERS, _CLOSERS = "({[", ")}]"
_FACTORIAL = re.compile(r"\d{%d,}\s*!" % (MAX_FACTORIAL_DIGITS + 1))
_DIGITS = re.compile(r"\d+")
_OPERAND = re.compile(r"\\[a-zA-Z]+|\d+|.")
# Inside an exponent these make a tower or a product; a plain exponent is a number, a letter or a sum.
_EXPONENT_FORBIDDEN = ("^", "*", "\\cdot", "\\times", "!", "\\exp", "\\binom", "\\uparrow")
_REFUSED = re.compile(r"\\(?:sum|prod|choose|lim(?:inf|sup)?|i{0,3}int|oint)(?![a-zA-Z])")
_SMALL_ARGUMENTS = re.compile(r"\\(?:[dt]?binom|Gamma)(?![a-zA-Z])")  # -> how many arguments: below
# A small argument: numbers and letters with a one-digit factor, added or subtracted ("5", "2n-k+1").
_TERM = r"\s*(?:\d{1,%d}|\d?\s*[a-zA-Z])\s*" % MAX_FACTORIAL_DIGITS
_SUM = re.compile(r"[-+]?{0}(?:[-+]{0})*".format(_TERM))
_WRAPPED = re.compile(r"\\left\s*\((.*)\\right\s*\)|\((.*)\)|\{(.*)\}", re.DOTALL)
_BAR = re.compile(r"(?<!\\)\|")  # "|x|", or an evaluation at a point: "n!|_{n=5}"
# Commands that keep a group numeric ("\left(\frac{1}{2}\right)"); any other command or letter is symbolic.
_NUMERIC_COMMANDS = re.compile(r"\\(?:[dt]?frac|sqrt|left|right|cdot|times|div|[,;:! ])")

_SPACE = r"(?:\\,|\\ |~| |\u00a0|\u2009|\u202f)"  # thin, normal, non-breaking, narrow no-break
_SEPARATOR = re.compile(r"\{,\}|,\\!|" + _SPACE)
_GROUPED = re.compile(r"(?<![\d.^_])\d{1,3}(?:(?:\{,\}|,\\!|%s)\d{3})+(?!\d)" % _SPACE)
# a whole answer that is one number with thousands commas, signed or not ("-1,234", "+2,500.5"): math-verify
# reads "1,234" as 1234 but "-1,234" as no number
_COMMA_GROUPED = re.compile(r"\s*[-+−]?\s*\d{1,3}(?:,\d{3})+(?:\.\d+)?\s*")
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
    """An answer as the screen and the parser read it: digit groups joined, implicit products explicit."""
    return explicit_products(join_digit_groups(text))


def join_digit_groups(text: str) -> str:
    """'10\\,000', '10 000', '1{,}234{,}567' -> '10000', '1234567': separators between digit groups of three; a
    whole answer of one number with commas, '-1,234' -> '-1234'."""
    if _COMMA_GROUPED.fullmatch(text):
        return text.replace(",", "")
    return _GROUPED.sub(lambda match: _SEPARATOR.sub("", match.group(0)), text)


def ambiguous(text: str) -> bool:
    """Two numbers side by side with only spacing between ("3 4"): a product, a sum, or a typo."""
    return _AMBIGUOUS.search(text) is not None


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif char in _CLOSERS:
            depth = max(depth - 1, 0)
    return deepest


def _operand_at(text: str, start: int) -> tuple[str, int]:
    """The operand that starts at `start` (after a '^' or a command) and where it ends: a bracketed group, a
    command, a digit run or a char."""
    while start < len(text) and text[start] == " ":
        start += 1
    if start >= len(text):
        return "", start
    if text[start] in _OPENERS:
        depth, end = 0, start
        while end < len(text):
            depth += (text[end] in _OPENERS) - (text[end] in _CLOSERS)
            end += 1
            if depth == 0:
                break
        return text[start:end], end
    match = _OPERAND.match(text, start)
    return match.group(0), match.end()


def _base_before(text: str, end: int) -> tuple[str, int]:
    """The base that ends at `end` (a '^' or '!' follows) and where it starts, when it is more than a number
    or a letter: groups side by side ("\\frac{x+1}{2}", "(x+1)(x+2)", "|x|") with the command before them,
    or a bare command ("\\cos", "\\pi"); ("", end) for a number or a letter."""
    start = end
    while start > 0 and text[start - 1] == " ":
        start -= 1
    if start and text[start - 1] == "|":
        start = max(text.rfind("|", 0, start - 1), 0)
    else:
        while start and text[start - 1] in _CLOSERS:  # walk back over "{...}{...}" or "(...)(...)"
            depth, start = 0, start - 1
            while start > 0:
                depth += (text[start] in _CLOSERS) - (text[start] in _OPENERS)
                if depth == 0:
                    break
                start -= 1
    command = re.search(r"\\[a-zA-Z]+\s*$", text[:start])
    if command:
        start = command.start()
    base = text[start:end].strip()
    return (base, start) if base else ("", end)


def _digits(exponent: str) -> int:
    return sum(len(d) for d in _DIGITS.findall(exponent))


def _power(exponent: str) -> int:
    """An upper bound on a plain exponent's value: the sum of its numbers (a letter counts 1)."""
    return max(1, sum(int(d) for d in _DIGITS.findall(exponent)))


def _symbolic(base: str) -> bool:
    return re.search(r"[a-zA-Z]", _NUMERIC_COMMANDS.sub("", base)) is not None


def _risky_power(text: str, caret: int) -> str | None:
    exponent, after = _operand_at(text, caret + 1)
    if any(token in exponent for token in _EXPONENT_FORBIDDEN):
        return "exponent tower or product in an exponent"
    if any(len(d) > MAX_EXPONENT_DIGITS for d in _DIGITS.findall(exponent)):
        return "exponent with too many digits"
    if text[after:].lstrip().startswith("!"):
        return "factorial in an exponent"  # "9^9!" is 9^(9!)
    base, start = _base_before(text, caret)
    if not base:
        plain = re.search(r"(?:\d+|[a-zA-Z])\s*$", text[:caret])
        start = plain.start() if plain else caret
    if text[:start].rstrip().endswith("^"):
        return "exponent tower"  # "2^{9}^{9}", "9^9^9": the base is itself an exponent
    if not base:
        number = re.search(r"\d+\s*!?\s*$", text[:caret])  # "9999^{...}", "9999!^{...}"
        if number and _number_digits(number.group(0)) * _power(exponent) > MAX_POWER_DIGITS:
            return "power with too many digits"  # 9999^{9999+9999+...}
        return None
    inner = [_operand_at(base, m.end())[0] for m in re.finditer(r"\^", base)]
    if _digits(exponent) + sum(_digits(e) for e in inner) > MAX_EXPONENT_DIGITS:
        return "power of a power with too many digits"  # (10^{999})^{999} = 10^{998001}
    if _symbolic(base) and _power(exponent) * math.prod(_power(e) for e in inner) > MAX_SYMBOLIC_POWER:
        return f"power of a symbolic group above {MAX_SYMBOLIC_POWER}"
    if not _symbolic(base) and _number_digits(base) * _power(exponent) > MAX_POWER_DIGITS:
        return "power with too many digits"  # (9999!)^{9999}, 9999^{9999+9999+...}
    return None


def _number_digits(base: str) -> float:
    """The digits of a numeric group's value, roughly: its numbers' digits added (a product has at most as
    many), k! counting log10(k!) + 1 (a power inside the group is the tower rule's business)."""
    total = 0.0
    for match in re.finditer(r"(\d+)(\s*!)?", base):
        digits = match.group(1)
        factorial = match.group(2) and len(digits) <= MAX_FACTORIAL_DIGITS
        total += math.lgamma(int(digits) + 1) / math.log(10) + 1 if factorial else len(digits)
    return total


def _argument(argument: str) -> tuple[int, bool] | None:
    """(its numbers added up, whether it holds a letter) for a small argument of !, \\binom or \\Gamma: numbers
    and letters with a one-digit factor, added or subtracted, maybe in (), {} or \\left( \\right); else None."""
    wrapped = _WRAPPED.fullmatch(argument.strip())
    inner = next(group for group in wrapped.groups() if group is not None) if wrapped else argument
    if not _SUM.fullmatch(inner):
        return None  # "\frac{1}{2}", "2^{99}", "n^n", "10n", "n!"
    terms = [term.strip() for term in re.split(r"[-+]", inner) if term.strip()]
    return sum(int(term) for term in terms if term.isdigit()), any(not term.isdigit() for term in terms)


def _small(arguments: list[str]) -> bool:
    """Arguments whose factorials stay cheap: numbers adding up to at most 9999, or to at most MAX_SYMBOLIC_OFFSET
    beside a letter (a letter stays symbolic, as what substitutes numbers is refused, but sympy expands
    "(n+9)!/n!" and "\\binom{n}{9}" into 9 factors)."""
    parsed = [_argument(argument) for argument in arguments]
    if None in parsed:
        return False
    symbolic = any(letter for _, letter in parsed)
    bound = MAX_SYMBOLIC_OFFSET if symbolic else 10 ** MAX_FACTORIAL_DIGITS - 1
    return all(total <= bound for total, _ in parsed)


def _risky_factorial(text: str, bang: int) -> str | None:
    if text[bang + 1:].lstrip().startswith("!"):
        return "double factorial"
    base, start = _base_before(text, bang)
    if base and not _small([base]):
        return "factorial of more than a small argument"  # "(99999999)!", "(2^{99})!", "(n+99)!"
    if not base:
        plain = re.search(r"(?:\d+|[a-zA-Z])\s*$", text[:bang])
        start = plain.start() if plain else bang
    if text[:start].rstrip().endswith("^"):
        return "factorial in an exponent"  # "9^9!" is 9^(9!)
    return None


def _risky_arguments(text: str, command: re.Match) -> str | None:
    end, arguments = command.end(), []
    for _ in range(1 if command.group(0) == "\\Gamma" else 2):
        argument, end = _operand_at(text, end)
        if argument == "\\left":  # "\Gamma\left(n+1\right)"
            group, end = _operand_at(text, end)
            argument += group
        arguments.append(argument)
    if not _small(arguments):
        return f"{command.group(0)} of more than a small argument"
    return None


def _risky_bar(text: str, bar: int) -> str | None:
    """A bar followed by a subscript, or by a superscript that holds a letter, evaluates at a point
    ("n!|_{n=99999999}", "|^{n=5}_{n=3}"): it puts numbers in place of letters. "|x|^{2}" is a power."""
    end = bar + 1
    for _ in range(2):  # "|_{a}", "|^{b}" or "|^{b}_{a}"
        while text[end:end + 1] == " ":
            end += 1
        mark = text[end:end + 1]
        if mark not in ("_", "^"):
            return None
        script, end = _operand_at(text, end + 1)
        if mark == "_" or _symbolic(script):
            return "evaluation at a point (|_{n=...})"
    return None


def risky(text: str) -> str | None:
    """Why parsing or comparing `text` could run away (a reason), or None when it is safe to try."""
    text = text.replace("**", "^")
    if _nesting(text) > MAX_NESTING:
        return f"brackets nested deeper than {MAX_NESTING}"
    if _FACTORIAL.search(text):
        return "factorial of a large number"
    if _REFUSED.search(text):
        return "\\sum, \\prod, \\choose, \\lim or \\int"
    checks = ([(_risky_arguments, m) for m in _SMALL_ARGUMENTS.finditer(text)]
              + [(_risky_factorial, m.start()) for m in re.finditer(r"(?<!\\)!", text)]
              + [(_risky_bar, m.start()) for m in _BAR.finditer(text)]
              + [(_risky_power, m.start()) for m in re.finditer(r"\^", text)])
    for check, where in checks:
        reason = check(text, where)
        if reason:
            return reason
    return None


def check_reference(reference: str) -> str | None:
    """Why a reference answer can never score (the screen refuses it), or None: for data loading to name the row,
    as countdown's check_reference does."""
    reason = risky(normalise(reference))
    return f"the math verifier refuses this reference ({reason})" if reason else None


def _timeout() -> int | None:
    # math-verify's timeouts use signal.alarm, which works (and is allowed) only on the main thread.
    return 2 if threading.current_thread() is threading.main_thread() else None


_NUMERAL = re.compile(r"\d*\.?\d*")
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

    def verify(self, candidate: str, reference: str, prompt: str = "") -> bool:
        from math_verify import verify

        candidate, reference = normalise(candidate), normalise(reference)
        if ambiguous(candidate) or risky(candidate) or risky(reference):
            return False
        gold, pred = parse_answer(reference), parse_answer(candidate)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=_timeout()))
