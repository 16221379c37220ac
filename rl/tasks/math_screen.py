"""The math task's screen (`risky`): the shapes of answer whose parsing or comparison could run away, refused
before math-verify sees them (such an answer scores 0; rl.tasks.math_answer).

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
"""

from __future__ import annotations

import math
import re

MAX_NESTING = 6  # brackets of any kind; MATH's answers never pass 3, and each level costs the parser ~0.1 s
MAX_EXPONENT_DIGITS = 4  # 2^{9999} is cheap, 2^{99999999} is not
MAX_FACTORIAL_DIGITS = 4  # 9999! (35,656 digits) takes a millisecond; MATH has 1/2004!
MAX_SYMBOLIC_OFFSET = 9  # (n+9)!/n! and \binom{n}{9} expand to 9 factors; \binom{n}{99} outruns the 2 s alarm
MAX_SYMBOLIC_POWER = 20  # (x+1)^{20} expands in ~50 ms, (x+1)^{999} outruns the 2 s alarm
MAX_POWER_DIGITS = 100_000  # a numeric power's digits: 9999^{9999} has 40,000; (999!)^{999} 2.6 million (1 s)
_OPENERS, _CLOSERS = "({[", ")}]"
_FACTORIAL = re.compile(r"(?<!\d)\d{%d,}+\s*+!" % (MAX_FACTORIAL_DIGITS + 1))
_DIGITS = re.compile(r"\d+")
# A number or a letter (a plain base), a number and its factorial, at the end of the text before a '^' or a '!'
_PLAIN_BEFORE = re.compile(r"(?:(?<!\d)\d++|[a-zA-Z])\s*+$")
_NUMBER_BEFORE = re.compile(r"(?<!\d)\d++\s*+!?\s*+$")
_OPERAND = re.compile(r"\\[a-zA-Z]+|\d+|.")
# Inside an exponent these make a tower or a product; a plain exponent is a number, a letter or a sum.
_EXPONENT_FORBIDDEN = ("^", "*", "\\cdot", "\\times", "!", "\\exp", "\\binom", "\\uparrow")
_REFUSED = re.compile(r"\\(?:sum|prod|choose|lim(?:inf|sup)?|i{0,3}int|oint)(?![a-zA-Z])")
_SMALL_ARGUMENTS = re.compile(r"\\(?:[dt]?binom|Gamma)(?![a-zA-Z])")  # -> how many arguments: below
# A small argument: numbers and letters with a one-digit factor, added or subtracted ("5", "2n-k+1").
# (matched with the spaces removed: "\s*" on both sides of a term made the match exponential in the terms, 15 s
# for "(a + a + a + a + a +!)" with 30 spaces after each "+")
_TERM = r"(?:\d{1,%d}|\d?[a-zA-Z])" % MAX_FACTORIAL_DIGITS
_SUM = re.compile(r"[-+]?{0}(?:[-+]{0})*".format(_TERM))
_WRAPPED = re.compile(r"\((.*)\)|\{(.*)\}", re.DOTALL)
# Spacing and \left/\right sizing, which the screen reads as nothing (a space): an exponent or a base that was
# "\," or "\left" hid what follows ("9^\,{9^{9}}", "9^\left(9^{9}\right)", "99999999\,!" passed the screen).
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad(?![a-zA-Z])|~|\\(?:left|right)(?![a-zA-Z])")
_BAR = re.compile(r"(?<!\\)\|")  # "|x|", or an evaluation at a point: "n!|_{n=5}"
# Commands that keep a group numeric ("\left(\frac{1}{2}\right)"); any other command or letter is symbolic.
_NUMERIC_COMMANDS = re.compile(r"\\(?:[dt]?frac|sqrt|left|right|cdot|times|div|[,;:! ])")

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
    command, a digit run or a char. Any whitespace before it is skipped, as TeX skips it (a newline made the
    match None and the screen raise; a tab was read as the exponent, so 9^99999999999 with a tab after the
    caret passed)."""
    while start < len(text) and text[start].isspace():
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
    end = match.end()
    if len(match.group(0)) > 1 and match.group(0).startswith("\\"):  # a command with its arguments: "\sqrt[3]{9^9}"
        group = end  # (in braces or brackets: "e^\pi(e^2-1)" is e^pi times a bracket)
        while group < len(text) and (text[group].isspace() or text[group] in "{["):
            if text[group].isspace():
                group += 1
            else:
                end = group = _operand_at(text, group)[1]
    return text[start:end], end


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
        plain = _PLAIN_BEFORE.search(text[:caret])
        start = plain.start() if plain else caret
    if text[:start].rstrip().endswith("^"):
        return "exponent tower"  # "2^{9}^{9}", "9^9^9": the base is itself an exponent
    if not base:
        number = _NUMBER_BEFORE.search(text[:caret])  # "9999^{...}", "9999!^{...}"
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
    and letters with a one-digit factor, added or subtracted, maybe in () or {}; else None."""
    wrapped = _WRAPPED.fullmatch(argument.strip())
    inner = next(group for group in wrapped.groups() if group is not None) if wrapped else argument
    inner = re.sub(r"\s+", "", inner)
    if not _SUM.fullmatch(inner):
        return None  # "\frac{1}{2}", "2^{99}", "n^n", "10n", "n!"
    terms = [term for term in re.split(r"[-+]", inner) if term]
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
        plain = _PLAIN_BEFORE.search(text[:bang])
        start = plain.start() if plain else bang
    if text[:start].rstrip().endswith("^"):
        return "factorial in an exponent"  # "9^9!" is 9^(9!)
    return None


def _risky_arguments(text: str, command: re.Match) -> str | None:
    end, arguments = command.end(), []
    for _ in range(1 if command.group(0) == "\\Gamma" else 2):
        argument, end = _operand_at(text, end)
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
    text = _SPACING.sub(" ", text.replace("**", "^"))
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
