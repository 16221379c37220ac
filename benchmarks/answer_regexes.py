"""Answer checking on hostile model text: worst times of every regex that reads model text, and of the paths that
run them (each task's verify, the answer extraction, the accuracy / format / language rewards), on degenerate
strings (long runs of spaces, digits, commas, backslashes, braces...) with a valid answer at the end; and a
differential check that the linear-time patterns give exactly what the old ones gave (kept here, in OLD, not in
the code). Reported, never asserted (tests/rl/test_answer_timing.py is the regression test).

    python benchmarks/answer_regexes.py timing [--sizes 1000,10000,100000] [--old] [--budget 2] [--only NAME]
    python benchmarks/answer_regexes.py diff [--n 20000] [--pairs 20000] [--seed 0]

`timing` runs each call in a forked child killed after `--budget` seconds (a slow regex ignores signals), and
skips a string's larger sizes once one timed out; `--old` times the old patterns too (patched into the modules).
`diff` compares each regex's output (every match, its span and groups) old against new on random short strings
built from the same tokens plus every string literal of the answer tests, then each task's verify (and the
accuracy reward) on random (answer, reference) pairs under the old and the new patterns.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import os
import pathlib
import random
import re
import select
import signal
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

M = "r1jax.rl.tasks."
_WORDS = importlib.import_module("r1jax.rl.rewards.words")
_S = r"(?:\\[,:;! ]|~| |\u00a0|\u2009|\u202f)"
_TERM = r"(?:\d{1,4}|\d?[a-zA-Z])"
# (label, module, attribute or None for a pattern written inline, the OLD pattern and flags, how the code applies it)
REGEXES = [
    ("math_answer._SEPARATOR", M + "math_answer", "_SEPARATOR", r"\{,\}|,\\!|" + _S, 0, "sub"),
    ("math_answer._GROUPED", M + "math_answer", "_GROUPED",
     r"(?<![\d.^_])[1-9]\d{0,2}(?:(?:\{,\}|,\\!|%s)\d{3})+(?!\d)" % _S, 0, "sub"),
    ("math_answer._COMMA_GROUPED", M + "math_answer", "_COMMA_GROUPED",
     r"\s*(?:[a-zA-Z]\s*=\s*)?[-+−]?\s*[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?\s*", 0, "fullmatch"),
    ("math_answer._DECIMAL_COMMA", M + "math_answer", "_DECIMAL_COMMA",
     r"\s*(?P<sign>[-+−]?)\s*0,(?P<digits>\d{3})\s*", 0, "fullmatch"),
    ("math_answer._AMBIGUOUS", M + "math_answer", "_AMBIGUOUS",
     r"\d(?:\s|\\[,;: !]|~|\\q?quad(?![a-zA-Z])|[\u00a0\u2009\u202f])+\d", 0, "search"),
    ("math_answer._BRACKET_AFTER", M + "math_answer", "_BRACKET_AFTER",
     r"(?<=[\d)])\s*(?=\\left\s*\(|\()|(?<=\))\s*(?=\d)", 0, "sub"),
    ("math_answer._FRACTION_BEFORE_BRACKET", M + "math_answer", "_FRACTION_BEFORE_BRACKET",
     r"(\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\})\s*(?=\\left\s*\(|\()", 0, "sub"),
    ("math_answer._INNER_DELIMITER", M + "math_answer", "_INNER_DELIMITER", r"\$|\\[(\[]", 0, "search"),
    ("math_answer._NUMERAL", M + "math_answer", "_NUMERAL", r"\d*\.?\d*", 0, "fullmatch"),
    ("math_answer._TEXT_GROUP", M + "math_answer", "_TEXT_GROUP",
     r"\\(?:text[a-z]*|math[a-z]*|[mh]box|emph|operatorname)\s*\{", 0, "finditer"),
    ("math_answer._CONNECTOR", M + "math_answer", "_CONNECTOR",
     r"\s*,?\s*\\(?:text[a-z]*|mathrm|[mh]box)\s*\{\s*,?\s*(?:or|and)\s*\}\s*", re.I, "sub"),
    ("math_answer._POWER", M + "math_answer", "_POWER", r"[\^_]\s*(?:\d|\{\s*-?\d+\s*\})", 0, "sub"),
    ("math_answer._HEDGE", M + "math_answer", "_HEDGE",
     r"\d|(?<![A-Za-z])(?:or|either|maybe|perhaps|possibly|probably|not|otherwise)(?![A-Za-z])", re.I, "search"),
    ("math_answer._APPROX", M + "math_answer", "_APPROX", r"\\(?:approx|approxeq|thickapprox)(?![a-zA-Z])|\u2248",
     0, "split"),
    ("math_answer._UNIT", M + "math_answer", "_UNIT", r"(?:\s|\\[,;: !]|~)*\\(?:text[a-z]*|mathrm|[mh]box)\s*\{[^{}]*\}"
     r"(?:\s*\^\s*(?:\d|\{\s*\d+\s*\}))?\s*$", 0, "sub"),
    ("math_answer._DECIMAL", M + "math_answer", "_DECIMAL",
     r"\s*(?P<number>[-+]?\d{1,30}\.\d{1,30}|[-+]?\d{1,30}(?=\s*\\?%))\s*(?P<percent>\\?%)?\s*", 0, "fullmatch"),
    ("math_answer._TEXT_WRAPPER", M + "math_answer", "_TEXT_WRAPPER",
     r"\\(?:text|textbf|textit|textrm|mathrm|emph|mbox)\s*\{", 0, "search"),
    ("math_answer._WORDS", M + "math_answer", "_WORDS", r"[A-Za-z]+(?:\s+[A-Za-z]+)*", 0, "fullmatch"),
    ("math_answer (a digit)", M + "math_answer", None, r"\d", 0, "search"),
    ("math_answer (two letters)", M + "math_answer", None, r"[A-Za-z]{2}", 0, "search"),
    ("base._WRAPPERS", M + "base", "_WRAPPERS",
     r"^\\(?:boxed|mathbf|text|textbf|textit|textrm|mathrm|emph|mbox)\s*\{(.*)\}$", re.DOTALL, "match"),
    ("algebra._LEADING_VAR", M + "algebra", "_LEADING_VAR", r"^\s*x\s*=(?!=)", 0, "sub"),
    ("math_screen._FACTORIAL", M + "math_screen", "_FACTORIAL", r"\d{5,}\s*!", 0, "search"),
    ("math_screen._DIGITS", M + "math_screen", "_DIGITS", r"\d+", 0, "findall"),
    ("math_screen._OPERAND", M + "math_screen", "_OPERAND", r"\\[a-zA-Z]+|\d+|.", 0, "match"),
    ("math_screen._REFUSED", M + "math_screen", "_REFUSED",
     r"\\(?:sum|prod|choose|lim(?:inf|sup)?|i{0,3}int|oint)(?![a-zA-Z])", 0, "search"),
    ("math_screen._SMALL_ARGUMENTS", M + "math_screen", "_SMALL_ARGUMENTS", r"\\(?:[dt]?binom|Gamma)(?![a-zA-Z])", 0,
     "finditer"),
    ("math_screen._SUM", M + "math_screen", "_SUM", r"[-+]?{0}(?:[-+]{0})*".format(_TERM), 0, "fullmatch"),
    ("math_screen._WRAPPED", M + "math_screen", "_WRAPPED", r"\((.*)\)|\{(.*)\}", re.DOTALL, "fullmatch"),
    ("math_screen._SPACING", M + "math_screen", "_SPACING",
     r"\\[,;:! ]|\\q?quad(?![a-zA-Z])|~|\\(?:left|right)(?![a-zA-Z])", 0, "sub"),
    ("math_screen._BAR", M + "math_screen", "_BAR", r"(?<!\\)\|", 0, "finditer"),
    ("math_screen._NUMERIC_COMMANDS", M + "math_screen", "_NUMERIC_COMMANDS",
     r"\\(?:[dt]?frac|sqrt|left|right|cdot|times|div|[,;:! ])", 0, "sub"),
    ("math_screen (a command before)", M + "math_screen", None, r"\\[a-zA-Z]+\s*$", 0, "search"),
    ("math_screen._PLAIN_BEFORE", M + "math_screen", "_PLAIN_BEFORE", r"(?:\d+|[a-zA-Z])\s*$", 0, "search"),
    ("math_screen._NUMBER_BEFORE", M + "math_screen", "_NUMBER_BEFORE", r"\d+\s*!?\s*$", 0, "search"),
    ("math_screen (number, factorial)", M + "math_screen", None, r"(\d+)(\s*!)?", 0, "finditer"),
    ("math_screen (a bang)", M + "math_screen", None, r"(?<!\\)!", 0, "finditer"),
    ("math_screen (a caret)", M + "math_screen", None, r"\^", 0, "finditer"),
    ("math_screen (a letter)", M + "math_screen", None, r"[a-zA-Z]", 0, "search"),
    ("math_screen (spaces)", M + "math_screen", None, r"\s+", 0, "sub"),
    ("math_screen (signs)", M + "math_screen", None, r"[-+]", 0, "split"),
    ("safe_math._TOKEN", M + "safe_math", "_TOKEN",
     r"\s*(?:(?P<num>\d+(?:\.\d+)?|\.\d+)|(?P<name>[a-zA-Z])|(?P<frac>\\frac)|(?P<op>[-+*/^()]))", 0, "match"),
    # (no rewrite for speed: their meaning changed on purpose, styled letters and zero-width characters in a word,
    # \begin{...} names, operator names and index groups as notation; the OLD column is the code's own pattern,
    # timed, never different)
    ("words._WORD", "r1jax.rl.rewards.words", "_WORD", _WORDS._WORD.pattern, 0, "findall"),
    ("words._LATEX_COMMAND", "r1jax.rl.rewards.words", "_LATEX_COMMAND", _WORDS._LATEX_COMMAND.pattern,
     0, "sub"),
    ("words._NOTATION", "r1jax.rl.rewards.words", "_NOTATION", _WORDS._NOTATION.pattern, 0, "sub"),
    ("functions._TAG", "r1jax.rl.rewards.functions", "_TAG", r"<think>|</think>|<answer>|</answer>", 0, "sub"),
    ("sandbox_values._HEX_INT", "r1jax.rl.rewards.sandbox_values", "_HEX_INT", r"-?[0-9a-f]+", 0, "fullmatch"),
    ("sandbox_values._HEX_FLOAT", "r1jax.rl.rewards.sandbox_values", "_HEX_FLOAT",
     r"-?(0x[0-9a-f]+(\.[0-9a-f]*)?p[+-][0-9]+|inf|nan)", 0, "fullmatch"),
    ("sandbox_values._HEX_BYTES", "r1jax.rl.rewards.sandbox_values", "_HEX_BYTES", r"(?:[0-9a-f]{2})*", 0,
     "fullmatch"),
]


def _found(match):
    return None if match is None else (match.span(), match.groups())


def apply(kind: str, regex, text: str):
    """The regex applied as the code applies it, in a form that shows every match (span and groups)."""
    if kind == "sub":
        return regex.sub(lambda m: f"<{m.span()}{m.groups()}>", text)
    if kind == "finditer":
        return [_found(m) for m in regex.finditer(text)]
    if kind in ("findall", "split"):
        return getattr(regex, kind)(text)
    return _found(getattr(regex, kind)(text))


def old_regex(entry):
    return re.compile(entry[3], entry[4])


def new_regex(entry):
    module = importlib.import_module(entry[1])
    return getattr(module, entry[2]) if entry[2] and hasattr(module, entry[2]) else old_regex(entry)


@contextlib.contextmanager
def old_patterns():
    """The modules' regexes swapped for the OLD ones (inline patterns stay as the code writes them)."""
    saved = []
    for entry in REGEXES:
        module = importlib.import_module(entry[1])
        if entry[2] and hasattr(module, entry[2]):
            saved.append((module, entry[2], getattr(module, entry[2])))
            setattr(module, entry[2], old_regex(entry))
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


# Degenerate runs: what an early policy emits.
RUNS = [" ", "\t\n", "1", "1,", ",", ".", "\\", "{", "}", "(", "\\frac{", "=", "x =", "a", " cm", "\\text{ cm}",
        "\\,", "~", "^", "!", "|", "\\text{or}", "1 ", "x^2+"]
SHAPES = ["{run}a", "{run}1234", "1{run}a", "x ={run}", "{run}\\text{{ or }}", "1,{run}000", "0.5{run}a"]


def adversarial(size: int):
    for run in RUNS:
        for shape in SHAPES:
            body = (run * (size // len(run) + 1))[:size]
            yield f"{run!r} x {size} in {shape.replace('{{', '{').replace('}}', '}')!r}", shape.format(run=body)


def _paths():
    from r1jax.rl.rewards.config import RewardsConfig
    from r1jax.rl.rewards.extract import extract_answer
    from r1jax.rl.rewards.functions import REWARDS, ScoreItem
    from r1jax.rl.tasks import get_task

    tasks = {name: get_task(name) for name in ("math", "arithmetic", "algebra", "countdown")}
    config = RewardsConfig()
    prompt = "Make 16 from 2, 3, 5 (+-*/, each at most once)"

    def reward(name):
        def run(text):
            item = ScoreItem(prompt="", completion=f"<think>{text}</think> <answer>{text}</answer>", reference="1234")
            return REWARDS[name](item, config)
        return run

    return {
        "math.verify": lambda s: tasks["math"].verify(s, "1234"),
        "math.verify (as reference)": lambda s: tasks["math"].verify("1234", s),
        "arithmetic.verify": lambda s: tasks["arithmetic"].verify(s, "1234"),
        "algebra.verify": lambda s: tasks["algebra"].verify(s, "5"),
        "countdown.verify": lambda s: tasks["countdown"].verify(s, "(3+5)*2", prompt),
        "extract_answer": lambda s: extract_answer(f"<think>{s}</think> \\boxed{{{s}}}", 10 ** 9),
        **{f"reward {name}": reward(name) for name in ("accuracy", "format", "language")},
    }


def timed(fn, text: str, budget: float) -> float | None:
    """Seconds one call takes, in a forked child (None: killed after `budget` seconds)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        start = time.perf_counter()
        try:
            fn(text)
        except Exception:  # noqa: BLE001 - a raise is a result too (the caller's business)
            pass
        os.write(write, repr(time.perf_counter() - start).encode())
        os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], budget)
    if ready:
        value = os.read(read, 64)
        os.close(read)
        os.waitpid(pid, 0)
        return float(value) if value else None
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read)
    return None


def timing(sizes, budget: float, with_old: bool, only: str | None) -> None:
    paths = _paths()
    for name, fn in paths.items():  # warm (imports, math-verify's grammar) before forking
        fn("1234")
    targets = [(e[0], (lambda e: lambda s: apply(e[5], new_regex(e), s))(e),
                (lambda e: lambda s: apply(e[5], old_regex(e), s))(e)) for e in REGEXES]
    targets += [(name, fn, fn) for name, fn in paths.items()]
    print(f"{'target':44s} {'code':4s} {'size':>7s} {'worst s':>9s}  worst input")
    for name, new, old in targets:
        if only and only not in name:
            continue
        for label, fn, patched in [("new", new, False)] + ([("old", old, True)] if with_old else []):
            skip, worst = set(), {}
            for size in sizes:
                for what, text in adversarial(size):
                    key = what.split(" x ")[0] + what.split(" in ")[1]
                    if key in skip:
                        worst[size] = max(worst.get(size, (0, "")), (float("inf"), what))
                        continue
                    with old_patterns() if patched else contextlib.nullcontext():
                        seconds = timed(fn, text, budget)
                    if seconds is None:
                        skip.add(key)
                        seconds = float("inf")
                    worst[size] = max(worst.get(size, (0, "")), (seconds, what))
            for size, (seconds, what) in worst.items():
                shown = f"> {budget:g}" if seconds == float("inf") else f"{seconds:.4f}"
                print(f"{name:44s} {label:4s} {size:7d} {shown:>9s}  {what}", flush=True)


# Short strings for the differential check: the runs above and the pieces of real answers.
PIECES = [" ", "  ", "\t", "\n", "0", "1", "2", "5", "12", "123", "1234", "000", "1,", ",", ", ", ".", "-", "+", "−",
          "\\", "{", "}", "(", ")", "[", "]", "\\frac{", "\\frac{1}{2}", "\\dfrac{3}{4}", "=", "x", "x =", "x=", "a",
          "b", "ab", "or", "and", "cm", " cm", "\\text{", "\\text{ cm}", "\\text{or}", "\\text{ or }", "\\mathrm{m}",
          "\\mbox{, and}", "\\textbf{", "\\,", "\\;", "\\!", "\\ ", "~", "{,}", ",\\!", "\\quad", "\\qquad", "^", "^2",
          "^{2}", "_", "!", "|", "%", "\\%", "$", "\\(", "\\)", "\\approx", "≈", "\\left(", "\\right)", "\\boxed{",
          "\\sqrt{", "\\pi", "\\cdot", "\\binom{5}{2}", "\\Gamma(3)", "\\sum", "0,", "0,111", "1,234", "10\\,000",
          "\u00a0", "\u2009", "No", "\\text{No}", "e", "<think>", "</answer>", "0x1p+0", "-0x1.8p-1", "ff", "inf"]
# and fewer, the pieces of the patterns made linear, so that random strings often match them
FOCUSED = [" ", "  ", "\t", ",", ", ", "x", "x =", "=", "-", "+", "−", "0", "1", "12", "234", ",234", ".5", "0,",
           "\\text{or}", "\\mathrm{ and }", "\\text{, or}", "\\text", "{", "}", "\\,", "\\ ", "~", "\\text{cm}",
           "\\mbox{ m}", "^2", "^{2}", "^{ 3 }", "%", "\\%", "!", "a", "\n"]
NUMERIC = [" ", "\t", "x", "y =", "=", "-", "+", "−", "0", "1", "12", "123", "1234", "12345", ",", ",123", ",000",
           ".", ".5", "%", "\\%", "!", "0,", "a", "^2"]


def random_text(rng: random.Random) -> str:
    pieces = rng.choice((FOCUSED, PIECES, NUMERIC))
    text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 8)))
    wrap = rng.random()
    return f"${text}$" if wrap < 0.1 else f"\\boxed{{{text}}}" if wrap < 0.15 else text


def number_text(rng: random.Random) -> str:
    """A whole answer that is a number, often with thousands commas, a sign, "x =" or spaces, then maybe mangled."""
    pick = lambda *options: rng.choice(options)  # noqa: E731
    text = (pick("", " ", "  ", "\t") + pick("", "", "x = ", "y=", "x  =  ") + pick("", "", "-", "+ ", "−")
            + pick("", " ", "  ") + pick("0", "1", "12", "123", "1234") + "".join(pick(",000", ",123", ",12", "{,}000")
            for _ in range(rng.randint(0, 3))) + pick("", "", ".5", ".", "\\%", "%", " \\%", "!", " !", "12345!")
            + pick("", " ", "  ", "\n"))
    for _ in range(rng.randint(0, 2)):  # a character inserted or dropped
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice(NUMERIC) + text[at:] if rng.random() < 0.5 else text[:at] + text[at + 1:]
    return text


def test_literals() -> list[str]:
    """Every short string literal of the answer and reward tests."""
    found = set()
    for path in sorted((ROOT / "tests" / "rl").glob("test_*.py")):
        if not any(word in path.name for word in ("answer", "task", "reward", "math", "extract")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) <= 300:
                found.add(node.value)
    return sorted(found)


REFERENCES = ["1234", "1234.5", "10000", "0.5", "\\frac{1}{2}", "-0.111", "3.33", "50\\%", "2, 3", "x=2", "\\text{No}",
              "5", "16", "(3+5)*2", "x^2-1", "2x+7", "\\frac{1}{3} \\approx 0.333", "3.33 \\text{ cm}", "\\sqrt{2}",
              "\\{1, 2\\}", "(1, 2)", "[0, 1)", "120", "6"]


def diff(count: int, pair_count: int, seed: int) -> None:
    rng = random.Random(seed)
    texts = test_literals() + [random_text(rng) for _ in range(count)] + [number_text(rng) for _ in range(count // 4)]
    print(f"regex level: {len(texts)} strings ({len(test_literals())} test literals)")
    differing = 0
    for entry in REGEXES:
        old, new = old_regex(entry), new_regex(entry)
        if old.pattern == new.pattern and old.flags == new.flags:
            continue
        bad = [t for t in texts if apply(entry[5], old, t) != apply(entry[5], new, t)]
        matched = sum(apply(entry[5], old, t) not in (None, [], t, [t]) for t in texts)
        differing += bool(bad)
        print(f"  {entry[0]:44s} {'same' if not bad else f'{len(bad)} DIFFER, e.g. {bad[:3]!r}'} "
              f"(the old pattern matched in {matched})", flush=True)
    from r1jax.rl.tasks import get_task

    prompt = "Make 16 from 2, 3, 5 (+-*/, each at most once)"
    start, mismatches, runs = time.perf_counter(), [], 0
    for name in ("arithmetic", "algebra", "countdown", "math"):
        task = get_task(name)
        pairs = [(t, r) for r in REFERENCES[:4] for t in test_literals() if len(t) <= 60]
        pairs += [(random_text(rng), rng.choice(REFERENCES + texts[:200])) for _ in range(pair_count)]
        pairs += [(r.replace(" ", rng.choice(PIECES)), r) for r in REFERENCES for _ in range(20)]
        for candidate, reference in pairs:
            new = task.verify(candidate, reference, prompt)
            with old_patterns():
                old = task.verify(candidate, reference, prompt)
            runs += 1
            if old != new:
                mismatches.append((name, candidate, reference, old, new))
        print(f"  verify {name:10s} {len(pairs)} pairs, {sum(m[0] == name for m in mismatches)} mismatches "
              f"({time.perf_counter() - start:.0f} s so far)", flush=True)
    for mismatch in mismatches[:20]:
        print("  MISMATCH", mismatch)
    print(f"{differing} regexes differ; {len(mismatches)} of {runs} scores differ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("timing", "diff"))
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds before a call is killed (timing)")
    parser.add_argument("--old", action="store_true", help="time the old patterns too (timing)")
    parser.add_argument("--only", help="targets whose name holds this (timing)")
    parser.add_argument("--n", type=int, default=20000, help="random strings (diff)")
    parser.add_argument("--pairs", type=int, default=20000, help="random (answer, reference) pairs per task (diff)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.mode == "timing":
        timing([int(s) for s in args.sizes.split(",")], args.budget, args.old, args.only)
    else:
        diff(args.n, args.pairs, args.seed)


if __name__ == "__main__":
    main()
