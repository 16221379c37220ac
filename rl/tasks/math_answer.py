"""The `math` task: a verifier for free-form math answers (user data), through math-verify.

math-verify parses LaTeX with an ANTLR grammar (latex2sympy2), so model text never reaches sympy's
`parse_expr`: only `LatexExtractionConfig` is used (its `ExprExtractionConfig` calls `parse_expr`, which
evaluates Python). It handles fractions, decimals, percentages, sets, intervals, equations ("x=5" equals
"5") and symbolic equality.

Two costs remain that no in-process timeout stops: sympy evaluates integer powers eagerly inside GMP
(9^{9^{9^9}} runs for hours and ignores signals) and the ANTLR parser is slow on deep nesting. `risky`
screens those shapes out before parsing (they score 0); the reward pool's killable workers are the
backstop for anything the screen misses. math-verify's own signal-based timeouts are used only on the main
thread, where signals work.

sympy, latex2sympy2 and math-verify are imported inside the functions that use them: they take seconds to
import and are needed only where answers are verified (the reward workers), not in the trainer.
"""

from __future__ import annotations

import re
import threading

from r1jax.errors import UserError
from r1jax.rl.tasks.base import Problem, Task, register_task, strip_markup

MAX_NESTING = 16  # brackets of any kind; real answers rarely pass 4
MAX_EXPONENT_DIGITS = 4  # 2^{9999} is cheap, 2^{99999999} is not
MAX_FACTORIAL_DIGITS = 3  # 999! is cheap
_OPENERS, _CLOSERS = "({[", ")}]"
_FACTORIAL = re.compile(r"\d{%d,}\s*!" % (MAX_FACTORIAL_DIGITS + 1))
_DIGITS = re.compile(r"\d+")
# Inside an exponent these make a tower or a product; a plain exponent is a number, a letter or a sum.
_EXPONENT_FORBIDDEN = ("^", "*", "\\cdot", "\\times", "!", "\\exp", "\\binom", "\\uparrow")


def _nesting(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif char in _CLOSERS:
            depth = max(depth - 1, 0)
    return deepest


def _exponent_at(text: str, start: int) -> str:
    """The operand of the '^' just before `start`: a bracketed group, a command, a digit run or a char."""
    while start < len(text) and text[start] == " ":
        start += 1
    if start >= len(text):
        return ""
    if text[start] in _OPENERS:
        depth, end = 0, start
        while end < len(text):
            depth += (text[end] in _OPENERS) - (text[end] in _CLOSERS)
            end += 1
            if depth == 0:
                break
        return text[start:end]
    match = re.compile(r"\\[a-zA-Z]+|\d+|.").match(text, start)
    return match.group(0)


def risky(text: str) -> str | None:
    """Why parsing or comparing `text` could run away (a reason), or None when it is safe to try."""
    text = text.replace("**", "^")
    if _nesting(text) > MAX_NESTING:
        return f"brackets nested deeper than {MAX_NESTING}"
    if _FACTORIAL.search(text):
        return "factorial of a large number"
    for match in re.finditer(r"\^", text):
        exponent = _exponent_at(text, match.end())
        if any(token in exponent for token in _EXPONENT_FORBIDDEN):
            return "exponent tower or product in an exponent"
        if any(len(d) > MAX_EXPONENT_DIGITS for d in _DIGITS.findall(exponent)):
            return "exponent with too many digits"
    return None


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


def parse_answer(text: str) -> list:
    """math-verify's parse, LaTeX only; bare answers such as "1/2" or "x=5" are retried inside $...$."""
    from math_verify import LatexExtractionConfig, parse

    harden_latex2sympy()
    config = [LatexExtractionConfig()]
    parsed = parse(text, extraction_config=config, parsing_timeout=_timeout())
    if not parsed:
        parsed = parse(f"${strip_markup(text)}$", extraction_config=config, parsing_timeout=_timeout())
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

        if risky(candidate) or risky(reference):
            return False
        gold, pred = parse_answer(reference), parse_answer(candidate)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=_timeout()))
