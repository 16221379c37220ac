"""A small, bounded parser for arithmetic and polynomial answers: the only way model text becomes math.

Model text never reaches `eval`, `sympify` or `parse_expr` (those run Python). This module tokenises with one
regular expression, parses by recursive descent into a tuple AST, and evaluates that AST either exactly
(`Fraction`, for arithmetic and countdown) or into sympy objects built node by node (for algebra).

Grammar, lowest precedence first (`^` is right-associative and binds tighter than unary minus, as in
mathematics: -2^2 = -4):
    expr  := term (('+' | '-') term)*
    term  := unary (('*' | '/') unary | implicit)*     implicit product: 3x, 2(x+1), (x+1)(x-2)
    unary := ('+' | '-') unary | power
    power := atom ('^' unary)?
    atom  := NUMBER | NAME | '(' expr ')' | FRAC arg arg      arg := DIGIT | atom  ("\\frac12" = 1/2, as LaTeX)
A number directly before FRAC ("2\\frac{1}{3}", a mixed number to some, 2/3 to the grammar) is refused.
AST nodes: ("num", Fraction) | ("var", str) | ("neg", a) | (op, a, b) with op in add sub mul div pow.

Every dimension of the input is bounded before any arithmetic happens: text length, nesting depth, digits
per number, exponent size, and the bit size of exact results, so a hostile answer fails fast with
`MathError` instead of hanging (the reward pool's timeout is only the backstop).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable, Iterator

MAX_CHARS = 400  # answers are short; the extractor already keeps only the last K characters
MAX_DEPTH = 24  # nesting of brackets and unary signs
MAX_DIGITS = 24  # per number literal
MAX_EXPONENT = 64  # |integer exponent|
MAX_BITS = 4096  # numerator or denominator of any exact intermediate result

# LaTeX spellings folded to the plain grammar before tokenising (the order matters: longest first). Spacing is a
# space, as it reads: "1\,2" is two numbers (refused), not 12 (digit groups are joined before: "1\,360").
_LATEX = (
    (r"\left", ""), (r"\right", ""), (r"\cdot", "*"), (r"\times", "*"), (r"\div", "/"),
    (r"\dfrac", r"\frac"), (r"\tfrac", r"\frac"), (r"\!", " "), (r"\,", " "), (r"\;", " "), (r"\ ", " "),
    ("×", "*"), ("·", "*"), ("÷", "/"), ("−", "-"), ("**", "^"), ("[", "("), ("]", ")"),
    ("{", "("), ("}", ")"),
)
_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?|\.\d+)|(?P<name>[a-zA-Z])|(?P<frac>\\frac)|(?P<op>[-+*/^()]))")
_BINARY = {"+": "add", "-": "sub", "*": "mul", "/": "div"}


class MathError(ValueError):
    """The text is not an answer this parser accepts, or evaluating it would exceed a bound."""


def tokenize(text: str) -> list[tuple[str, str]]:
    if len(text) > MAX_CHARS:
        raise MathError(f"answer longer than {MAX_CHARS} characters")
    for old, new in _LATEX:
        text = text.replace(old, new)
    tokens, pos, text = [], 0, text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise MathError(f"unexpected character {text[pos]!r} at {pos}")
        kind = match.lastgroup
        value = match.group(kind)
        if kind == "num" and len(value.replace(".", "")) > MAX_DIGITS:
            raise MathError(f"number with more than {MAX_DIGITS} digits")
        tokens.append((kind, value))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], names: frozenset[str]):
        self.tokens, self.names, self.pos, self.depth = tokens, names, 0, 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise MathError("unexpected end of answer")
        self.pos += 1
        return token

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise MathError(f"nesting deeper than {MAX_DEPTH}")

    def expr(self) -> tuple:
        node = self.term()
        while (token := self.peek()) is not None and token[1] in "+-":
            self.take()
            node = (_BINARY[token[1]], node, self.term())
        return node

    def term(self) -> tuple:
        node = factor = self.unary()
        while (token := self.peek()) is not None:
            if token[1] in ("*", "/"):
                self.take()
                factor = self.unary()
                node = (_BINARY[token[1]], node, factor)
            elif token[0] in ("name", "frac") or token[1] == "(":
                if token[0] == "frac" and is_number(factor):  # "-2\\frac{1}{3}": -7/3 or -2/3? neither
                    raise MathError("a number before \\frac (a mixed number?) is ambiguous")
                factor = self.power()
                node = ("mul", node, factor)  # implicit product; never between two bare numbers
            else:
                break
        return node

    def unary(self) -> tuple:
        token = self.peek()
        if token is not None and token[1] in "+-":
            self.take()
            self.nest()
            operand = self.unary()
            self.depth -= 1
            return ("neg", operand) if token[1] == "-" else operand
        return self.power()

    def power(self) -> tuple:
        base = self.atom()
        if (token := self.peek()) is not None and token[1] == "^":
            self.take()
            self.nest()
            exponent = self.unary()
            self.depth -= 1
            return ("pow", base, exponent)
        return base

    def frac_argument(self) -> tuple:
        """One argument of \\frac: as in LaTeX, a bare number gives its first digit alone ("\\frac12" is 1/2)."""
        token = self.peek()
        if token is not None and token[0] == "num" and len(token[1]) > 1 and token[1][0] != ".":
            if token[1][1] == ".":
                raise MathError(f"\\frac{token[1]} is ambiguous")
            self.tokens[self.pos] = ("num", token[1][1:])  # the rest stays for what follows
            return ("num", Fraction(token[1][0]))
        return self.atom()

    def atom(self) -> tuple:
        kind, value = self.take()
        if kind == "num":
            return ("num", Fraction(value))
        if kind == "name":
            if value not in self.names:
                raise MathError(f"unexpected name {value!r}")
            return ("var", value)
        if kind == "frac":
            self.nest()
            node = ("div", self.frac_argument(), self.frac_argument())
            self.depth -= 1
            return node
        if value == "(":
            self.nest()
            node = self.expr()
            if self.take()[1] != ")":
                raise MathError("unbalanced brackets")
            self.depth -= 1
            return node
        raise MathError(f"unexpected {value!r}")


def parse(text: str, names: str = "") -> tuple:
    """Parse `text` into an AST; `names` lists the single-letter variables allowed (none by default)."""
    tokens = tokenize(text)
    if not tokens:
        raise MathError("empty answer")
    parser = _Parser(tokens, frozenset(names))
    node = parser.expr()
    if parser.peek() is not None:
        raise MathError(f"unexpected {parser.peek()[1]!r} after the expression")
    return node


def _check_size(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise MathError(f"intermediate result larger than {MAX_BITS} bits")
    return value


def _exact_pow(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1 or abs(exponent) > MAX_EXPONENT:
        raise MathError(f"exponent must be an integer of magnitude <= {MAX_EXPONENT}")
    if base == 0 and exponent < 0:
        raise MathError("division by zero")
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if bits * abs(int(exponent)) > MAX_BITS:  # checked before computing: 9^(9^9) never starts
        raise MathError(f"power larger than {MAX_BITS} bits")
    return base ** int(exponent)


def _exact_div(a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise MathError("division by zero")
    return a / b


_EXACT: dict[str, Callable[[Fraction, Fraction], Fraction]] = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": _exact_div, "pow": _exact_pow,
}


def evaluate(node: tuple) -> Fraction:
    """The exact value of a variable-free AST."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "var":
        raise MathError(f"unexpected variable {node[1]!r}")
    if kind == "neg":
        return -evaluate(node[1])
    return _check_size(_EXACT[kind](evaluate(node[1]), evaluate(node[2])))


def numbers(node: tuple) -> Iterator[Fraction]:
    """The number literals of an AST, left to right (countdown checks each is used at most once)."""
    if node[0] == "num":
        yield node[1]
    elif node[0] != "var":
        for child in node[1:]:
            yield from numbers(child)


def is_number(node: tuple) -> bool:
    """A literal, possibly signed: what arithmetic accepts as a final answer (not an expression)."""
    return node[0] == "num" or (node[0] == "neg" and node[1][0] == "num")


def _size(node: tuple, max_exponent: int) -> tuple[int, int, int]:
    """Upper bounds on (numerator degree, denominator degree, bits of any coefficient) of an AST written as
    one fraction, before sympy sees it: a sum of fractions has the product of their denominators
    (what `cancel` builds), so 1/(x+1) + 1/(x+2) is degree 1 over degree 2."""
    kind = node[0]
    if kind == "num":
        return 0, 0, max(node[1].numerator.bit_length(), node[1].denominator.bit_length())
    if kind == "var":
        return 1, 0, 1
    if kind == "neg":
        return _size(node[1], max_exponent)
    (na, ma, ba), (nb, mb, bb) = _size(node[1], max_exponent), _size(node[2], max_exponent)
    if kind == "pow":
        exponent = node[2][1] if node[2][0] == "num" else None
        if node[2][0] == "neg" and node[2][1][0] == "num":
            exponent = -node[2][1][1]
        if exponent is None or exponent.denominator != 1 or abs(exponent) > max_exponent:
            raise MathError(f"exponent must be an integer of magnitude <= {max_exponent}")
        e = abs(int(exponent))
        return (na * e, ma * e, ba * e) if exponent >= 0 else (ma * e, na * e, ba * e)
    if kind == "mul":
        return na + nb, ma + mb, ba + bb
    if kind == "div":
        return na + mb, ma + nb, ba + bb
    if ma == mb == 0:  # a sum of polynomials: the larger degree
        return max(na, nb), 0, max(ba, bb) + 1
    return max(na + mb, nb + ma), ma + mb, ba + bb + 1  # a/b + c/d = (ad + cb)/(bd)


def to_sympy(node: tuple, max_exponent: int = 16, max_degree: int = 32):
    """Build a sympy expression node by node (no string ever reaches sympy's parser).

    Degree (numerator plus denominator, as one fraction) and coefficient size are bounded first: sympy
    evaluates integer powers eagerly, so ((2^16)^16)^16 or ((x+1)^16)^16 would otherwise run for minutes
    inside GMP or `expand`, and `cancel` of a sum of fractions such as 1/(x+1)^16 + 1/(x+2)^16 + ... works
    on the product of their denominators.
    """
    numerator, denominator, bits = _size(node, max_exponent)
    degree = numerator + denominator
    if degree > max_degree or bits > MAX_BITS:
        raise MathError(f"expression too large (degree <= {degree}, coefficients <= {bits} bits)")
    return _build_sympy(node)


def _build_sympy(node: tuple):
    import sympy

    kind = node[0]
    if kind == "num":
        return sympy.Rational(node[1].numerator, node[1].denominator)
    if kind == "var":
        return sympy.Symbol(node[1])
    if kind == "neg":
        return -_build_sympy(node[1])
    a, b = _build_sympy(node[1]), _build_sympy(node[2])
    if kind == "add":
        return a + b
    if kind == "sub":
        return a - b
    if kind == "mul":
        return a * b
    if kind == "pow":
        return a ** b
    if b == 0:
        raise MathError("division by zero")
    return a / b
