"""Code: small programming problems with tests and worked solutions, for the `code` reward.

Two forms, as in user data (rl.rewards.code): a function checked by assertions ("Write f(x) that returns
x+7." with `tests: ["assert f(2) == 9", ...]`, `entry_point: f`) and a script checked on standard
input/output pairs ("Read n and print n*4." with `tests: [{"input": "3\\n", "output": "12\\n"}, ...]`).
Difficulty widens the set of problem templates: 1 arithmetic functions, 2 adds stdin/stdout scripts, 3 and up
add comparisons, strings and lists (4 and 5 with larger constants). Each problem has three tests, which no
listed wrong program (a decoy: `return a` for "the larger") passes all of.

The worked solution is a one-line program in the answer: `<think> add 7 to x. </think> <answer> def f(x):
return x+7 </answer>` (the reward reads the final <answer> when there is no ```python block). The
problem's `answer` is that reference program; the `accuracy` reward scores code problems 0 (`verify` is
always False): only the sandboxed `code` reward can run a program.
"""

from __future__ import annotations

import json

from r1jax.rl.tasks.base import Problem, Task, r1_solution, register_task


FUNCTIONS = (  # (returned expression, thought, program, value of f(x) for constant k); {k}: the constant
    ("x+{k}", "add {k} to x.", "def f(x): return x+{k}", lambda k, x: x + k),
    ("x*{k}", "multiply x by {k}.", "def f(x): return x*{k}", lambda k, x: x * k),
    ("x-{k}", "subtract {k} from x.", "def f(x): return x-{k}", lambda k, x: x - k),
)
# (prompt, thought, program, f, argument kind or arity 2, decoys): functions with more structure (difficulty >= 3).
# A problem's three tests are drawn again until no decoy (a wrong program a policy could write) passes them all:
# `return a` passed 12-16% of the "larger" problems, `return xs[0]` 5-9% of the sums, `return s` 1-2% of reversals.
SHAPED = (
    ("Write f(a, b) that returns the larger.", "compare a and b.", "def f(a, b): return max(a, b)",
     lambda a, b: max(a, b), 2, (lambda a, b: a, lambda a, b: b)),
    ("Write f(s) that returns s reversed.", "slice backwards.", "def f(s): return s[::-1]",
     lambda s: s[::-1], "s", (lambda s: s, lambda s: "".join(sorted(s)))),
    ("Write f(xs) that returns the sum of xs.", "add the items.", "def f(xs): return sum(xs)",
     lambda xs: sum(xs), "xs", (lambda xs: 0, len, lambda xs: xs[0] if xs else 0, lambda xs: xs[-1] if xs else 0)),
    ("Write f(s) that returns s in capitals.", "use upper.", "def f(s): return s.upper()",
     lambda s: s.upper(), "s", (lambda s: s, str.title)),
)
SCRIPTS = (  # (prompt, thought, program, output of the input numbers); {k} is the problem's constant
    ("Read n and print n*{k}.", "read n, multiply by {k}.", "print(int(input())*{k})",
     lambda k, n: n * k, 1),
    ("Read n and print n+{k}.", "read n, add {k}.", "print(int(input())+{k})", lambda k, n: n + k, 1),
    ("Read a b on one line, print a+b.", "split and add.", "a, b = map(int, input().split()); print(a+b)",
     lambda k, a, b: a + b, 2),
)
TESTS = 3


def _argument(rng, kind):
    if kind == "s":
        return "".join(rng.choice("abcdxyz") for _ in range(rng.randint(1, 5)))
    if kind == "xs":
        return [rng.randint(-9, 9) for _ in range(rng.randint(0, 4))]
    return rng.randint(-20, 20)


@register_task
class CodeTask(Task):
    name = "code"
    levels = {
        1: {"forms": "function", "max_constant": 9},
        2: {"forms": "function,stdio", "max_constant": 9},
        3: {"forms": "function,stdio,shaped", "max_constant": 9},
        4: {"forms": "function,stdio,shaped", "max_constant": 99},
        5: {"forms": "function,stdio,shaped", "max_constant": 999},
    }

    def check_knobs(self) -> None:
        self.knob_names("forms", ("function", "stdio", "shaped"))  # an unknown form generated stdio ones
        self.knob_integer("max_constant", 2, 10**6)

    def generate(self, seed: int, index: int) -> Problem:
        rng = self.rng(seed, index)
        form = rng.choice(self.knobs["forms"].split(","))
        k = rng.randint(2, self.knobs["max_constant"])
        if form == "function":
            expression, thought, program, f = rng.choice(FUNCTIONS)
            prompt = f"Write f(x) that returns {expression}."
            tests, entry_point = [f"assert f({x}) == {f(k, x)}" for x in rng.sample(range(-20, 21), TESTS)], "f"
        elif form == "shaped":
            prompt, thought, program, f, kind, decoys = rng.choice(SHAPED)
            args = []
            while not args or any(all(d(*a) == f(*a) for a in args) for d in decoys):  # (module comment at SHAPED)
                args = [[_argument(rng, "x"), _argument(rng, "x")] if kind == 2 else [_argument(rng, kind)]
                        for _ in range(TESTS)]
            tests = [f"assert f({', '.join(map(repr, a))}) == {f(*a)!r}" for a in args]
            entry_point = "f"
        else:
            prompt, thought, program, f, arity = rng.choice(SCRIPTS)
            rows = [[rng.randint(0, 99) for _ in range(arity)] for _ in range(TESTS)]
            tests = [{"input": " ".join(map(str, r)) + "\n", "output": f"{f(k, *r)}\n"} for r in rows]
            entry_point = None
        program, thought, prompt = program.format(k=k), thought.format(k=k), prompt.format(k=k)
        return Problem(task=self.name, prompt=prompt, answer=program, solution=r1_solution([thought], program),
                       difficulty=self.difficulty, tests=json.dumps(tests), entry_point=entry_point)

    def verify(self, candidate: str, reference: str, prompt: str = "") -> bool:
        return False  # a program is only ever judged by running it: the sandboxed `code` reward
