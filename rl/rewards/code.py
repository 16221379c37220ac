"""The `code` reward: the completion's program run against the item's tests in the sandbox.

Tests (a code item's `tests`, stored on the ScoreItem as JSON) come in two forms, never mixed:
- assertions around a named function (HumanEval/MBPP): `["assert f(2) == 4", ...]`, with an optional
  `entry_point` ("f"), which must then be defined and callable, and is also bound to `candidate`. All
  assertions of an item run in one sandboxed run, in order, in a judge's namespace where the program's
  functions and classes are stubs of the program's process (sandbox_runner: the program is defined there as a
  module that is not `__main__`, so a main guard does not run; values cross between the two as builtin
  values, sandbox_values). An assertion `assert EXPR == LITERAL` (or `LITERAL == EXPR`; LITERAL: what
  `ast.literal_eval` reads) is split here: only EXPR goes to the sandbox, which sends back its value, and it
  passes when that value == LITERAL, compared here. A value that is not of a builtin type (a custom object, a
  numpy array), one whose encoding would be longer than sandbox_values.MAX_VALUE_CHARS (2**18 characters:
  ~18k small ints, a 128k-character ASCII string; encoding stops there), or an EXPR that raises fails that
  assertion only (the values of all of them together still count in the run's `output_bytes`); a subclass of
  a builtin type compares as its builtin value (a namedtuple as a tuple; its own __eq__ is not called). Any
  other assertion (`assert abs(f(x) - y) < 1e-6`, `def check(candidate): ...`, several statements) runs
  whole in the judge and passes when it raises nothing (or ends by sys.exit(0), as unittest.main() does).
- standard input/output pairs (competitive programming): `[{"input": "3\\n", "output": "6\\n"}, ...]`. Each
  pair is one sandboxed run of the program as `__main__`; it passes when it exits 0 and its output equals
  the expected one up to trailing whitespace on each line and trailing blank lines.

The program is the completion's last fenced ```python (or ```py) block, else the content of its final
`<answer>` (rl.rewards.extract), itself unwrapped when it is one ``` block. The reward is 1 when every test
passes, else 0; with `rewards.code.partial` the passed fraction. Items of other tasks score 0.

Every item gets a status (CODE_STATUSES, counted by the pool): passed, failed (ran, a test failed), syntax_error
(does not compile, or no program found), timeout, memory, crashed (exited abnormally or printed past the
output limit), sandbox_error (the sandbox failed: nothing is known about the program). Without `partial`,
stdio tests stop at the first failure.

Only the sandbox runs model text. Assertion results come back as a line marked with a random nonce, which
reaches the judge by a pipe after the program's process was forked (a file in the sandbox could be read
again: a program read it and forged a passing line), as do the tests, and the line comes back by a pipe of the
judge's own (not stdio, which bwrap's pid 1 holds: sandbox.run_python); the judge runs no program code and is
not dumpable, so neither its frames, its objects nor its memory are within the program's reach, and what the
program returns arrives as builtin values (an object whose `__eq__` is always true arrives as a reference
equal only to itself; until 2026-12-04 the assertions judged whole ran in the program's own interpreter,
where such an object, or a harness rewritten through the garbage collector, passed them). A split
assertion's expected value never enters the sandbox and equality is decided here. Stdio verdicts are decided
here, on the program's output, and cannot be forged.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import functools
import json
import secrets
import symtable

from r1jax.errors import UserError
from r1jax.rl.rewards.config import CodeConfig, RewardsConfig
from r1jax.rl.rewards.extract import ANSWER, END_ANSWER, split_completion
from r1jax.rl.rewards.functions import ScoreItem, register_reward
from r1jax.rl.rewards.sandbox import RunResult, run_python
from r1jax.rl.rewards.sandbox_values import decode as decode_value

CODE_STATUSES = ("passed", "failed", "syntax_error", "timeout", "memory", "crashed", "sandbox_error")
FENCES = ("```python", "```py", "```Python")
_BUILTIN_NAMES = frozenset(dir(builtins))  # (sandbox_judge's, which shadow the program's)
_IN_SANDBOX = object()  # the expected value of an assertion judged whole in the sandbox
_RUN_TO_CODE = {"exit": "crashed", "output_limit": "crashed", "syntax_error": "syntax_error",
                "timeout": "timeout", "memory": "memory", "sandbox_error": "sandbox_error"}


@dataclasses.dataclass(frozen=True)
class CodeOutcome:
    status: str  # one of CODE_STATUSES
    passed: int
    total: int
    detail: str = ""


def extract_program(completion: str) -> str | None:
    """The program the completion answers with: after the thought (`</think>`), its last ```python block, else
    its final <answer>'s content; with neither there, the thought's last ```python block. A sketch in the
    thought was graded in place of the answer's program (it passed where the answer failed)."""
    thought, tail = split_completion(completion)
    program = _last_block(tail)
    if program is not None:
        return program
    start = tail.rfind(ANSWER)
    end = tail.find(END_ANSWER, start) if start >= 0 else -1
    if end >= 0:
        answer = tail[start + len(ANSWER):end].strip()
        if answer.startswith("```") and answer.endswith("```") and len(answer) > 6:
            answer = answer[answer.find("\n") + 1 if "\n" in answer else 3:-3]
        if answer.strip():
            return answer
    return _last_block(thought) if thought is not None else None


def _last_block(text: str) -> str | None:
    """The body of the last closed ```python block of `text`, or None."""
    start = max(text.rfind(fence) for fence in FENCES)
    if start < 0:
        return None
    body = text.find("\n", start)
    end = text.find("```", body + 1) if body >= 0 else -1
    return text[body + 1:end] if end >= 0 else None


def parse_tests(tests, where: str) -> tuple[str, list]:
    """("assert", [statement, ...]) or ("stdio", [(input, output), ...]); UserError naming `where`."""
    if not isinstance(tests, (list, tuple)) or not tests:
        got = "an empty list" if isinstance(tests, (list, tuple)) else type(tests).__name__
        raise UserError(f"{where}: field 'tests' must be a non-empty list (assertion strings or "
                        f"{{input, output}} objects), got {got}")
    if all(isinstance(t, str) for t in tests):
        if not all(t.strip() for t in tests):
            raise UserError(f"{where}: field 'tests' holds an empty assertion")
        for number, test in enumerate(tests):  # a test that does not compile would fail every program
            try:  # compiled as sandbox_judge compiles it: ast.parse alone passed `return f(1) == 1`, `break`
                compile(test, f"tests[{number}]", "exec", dont_inherit=True)
            except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
                raise UserError(f"{where}: tests[{number}] is not valid Python ({type(err).__name__}: "
                                f"{getattr(err, 'msg', err)}): {test!r:.80}") from None
        return "assert", list(tests)
    if any(isinstance(t, str) for t in tests):  # the first test that is no string is the culprit, not tests[0]
        number, test = next((n, t) for n, t in enumerate(tests) if not isinstance(t, str))
        if isinstance(test, dict):
            raise UserError(f"{where}: field 'tests' mixes assertion strings and {{input, output}} objects "
                            f"(one form per row)")
        raise UserError(f"{where}: tests[{number}] must be an assertion string, as the row's others are, got "
                        f"{test!r:.80}")
    pairs = []
    for number, test in enumerate(tests):
        if not (isinstance(test, dict) and isinstance(test.get("input"), str)
                and isinstance(test.get("output"), str)):
            raise UserError(f"{where}: tests[{number}] must be an assertion string or an object with string "
                            f"'input' and 'output' (one form per row), got {test!r:.80}")
        pairs.append((test["input"], test["output"]))
    return "stdio", pairs


def check_entry_point(entry_point, where: str) -> str | None:
    if entry_point is None:
        return None
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise UserError(f"{where}: field 'entry_point' must be a Python identifier, got {entry_point!r}")
    if entry_point in _BUILTIN_NAMES:  # (the judge never lets a program shadow one)
        raise UserError(f"{where}: field 'entry_point' {entry_point!r} is a builtin's name: the tests would call the "
                        f"builtin, not the program (rename the function)")
    return entry_point


def encode_tests(tests, where: str, entry_point: str | None, column: str = "tests") -> str:
    """The tests as the JSON a ScoreItem carries (rows' dicts keep only input and output); a string is read as
    the list's JSON text (datasets that store it so), in data files and `r1jax score`'s input alike. `column`:
    the row's field holding them, named in errors; `entry_point`: the row's (checked), which binds `candidate`."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: field {column!r} is a string but not a JSON list ({err.msg})") from None
        except (ValueError, RecursionError) as err:  # an integer past 4,300 digits, nesting too deep
            raise UserError(f"{where}: field {column!r} is a string but not readable JSON "
                            f"({type(err).__name__})") from None
    where += f" (column {column!r})" if column != "tests" else ""
    kind, parsed = parse_tests(tests, where)
    if kind == "stdio":
        if not any(output.strip() for _, output in parsed):
            raise UserError(f"{where}: every test's 'output' is blank, so a program that prints nothing passes them "
                            f"all")
        return json.dumps([{"input": i, "output": o} for i, o in parsed])
    for number, test in enumerate(parsed):
        flaw = _never_fails(test)
        if flaw:
            raise UserError(f"{where}: tests[{number}] {flaw}")
        if _checks_nothing(test):
            raise UserError(f"{where}: tests[{number}] checks nothing (outside its functions no call or raise "
                            f"runs, nor an assert but `assert True`), so every program passes it: HumanEval's `def "
                            f"check(candidate): ...` needs the `check(candidate)` its harness adds, and an import "
                            f"belongs in the tests that use it")
        if entry_point is None and _uses_candidate(test):
            raise UserError(f"{where}: tests[{number}] calls `candidate`, which only the row's 'entry_point' binds "
                            f"(HumanEval's check(candidate)): without it every program fails; give the function's "
                            f"name as entry_point")
        if not _names_the_program(test):
            raise UserError(f"{where}: tests[{number}] names nothing of the program (each name it uses is a builtin "
                            f"or its own), so every program scores the same on it; a function named like a builtin "
                            f"(`max`) is never the program's: rename it")
    return json.dumps(parsed)


def _checks_nothing(test: str) -> bool:
    """Whether an assertion test passes whatever the program does: outside function bodies (which a definition
    does not run) it holds no call, raise or assert but of a true constant. HumanEval's test field defines
    `check(candidate)` and leaves the call to its harness: loaded as it is, every program defining the entry point
    scored 1."""
    try:
        pending = list(ast.parse(test).body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False  # (it fails for every program)
    coroutines = {node.name for node in pending if isinstance(node, ast.AsyncFunctionDef)}
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in coroutines:
            pending += [*node.args, *(keyword.value for keyword in node.keywords)]  # its body never runs un-awaited
            continue
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Constant) and node.test.value:
            continue  # HumanEval's `assert True, "This prints if this assert fails 1"`, made a test of its own
        if isinstance(node, (ast.Assert, ast.Call, ast.Raise)) or getattr(node, "decorator_list", None):
            return False  # (a decorator is a call)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):  # its defaults run, its body not
            pending += [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]
            continue
        pending += ast.iter_child_nodes(node)
    return True


_DYNAMIC = frozenset({"globals", "vars", "locals", "dir", "eval", "exec", "__import__"})  # reach names unnamed


def _names_the_program(test: str) -> bool:
    """Whether the test uses a name it neither binds at its top level nor finds among the builtins (which the
    judge never lets a program shadow): a name of the program's, or `candidate`. A row without entry_point whose
    tests call `max` ran the builtin, and `def max(xs): return 0` passed `assert max([1, 3]) == 3`."""
    try:
        table = symtable.symtable(test, "test", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return True  # (it fails for every program)
    own = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    pending = [table]
    while pending:
        scope = pending.pop()
        pending += scope.get_children()
        for symbol in scope.get_symbols():
            name = symbol.get_name()
            if symbol.is_referenced() and (scope is table or symbol.is_global()) and (
                    name in _DYNAMIC or name not in own and name not in _BUILTIN_NAMES):
                return True
    return "__main__" in own  # (import __main__: the judge's namespace, the program's names in it)


def _uses_candidate(test: str) -> bool:
    """Whether the test reads `candidate` without binding it at its top level (a parameter of its own `check` is
    its own): the judge binds it to the entry point, so a row without one failed every program."""
    try:
        table = symtable.symtable(test, "test", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False  # (it fails for every program)
    if any(s.get_name() == "candidate" and (s.is_assigned() or s.is_imported()) for s in table.get_symbols()):
        return False
    pending = [table]
    while pending:
        scope = pending.pop()
        pending += scope.get_children()
        if any(s.get_name() == "candidate" and s.is_referenced() and (scope is table or s.is_global())
               for s in scope.get_symbols()):
            return True
    return False


def _never_fails(test: str) -> str | None:
    """What in the test passes every program that does not raise, or None: `assert (CONDITION, MESSAGE)` (a
    non-empty tuple is always true; Python warns) or `unittest.main(exit=False)` (failures recorded, never
    raised: `def f(x): return 0` passed either)."""
    try:
        nodes = list(ast.walk(ast.parse(test)))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # (it fails for every program)
    for node in nodes:
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Tuple) and node.test.elts:
            return ("asserts a tuple, which is always true: write `assert f(2) == 4, 'msg'`, not `assert (f(2) "
                    "== 4, 'msg')`")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "main" and any(
                k.arg == "exit" and isinstance(k.value, ast.Constant) and not k.value.value for k in node.keywords):
            return "calls main(exit=False), whose failed tests raise nothing: drop exit=False (sys.exit(0) passes)"
    return None


def same_output(got: bytes, expected: str) -> bool:
    def lines(text: str) -> list[str]:
        rows = [line.rstrip() for line in text.splitlines()]
        while rows and not rows[-1]:
            rows.pop()
        return rows
    return lines(got.decode("utf-8", "replace")) == lines(expected)


@functools.lru_cache(maxsize=8)  # the reward and the pool's status read one outcome: run the tests once
def code_outcome(item: ScoreItem, config: CodeConfig) -> CodeOutcome:
    kind, tests = parse_tests(json.loads(item.tests), "item")
    program = extract_program(item.completion)
    if program is None:
        return CodeOutcome("syntax_error", 0, len(tests), "no ```python block or <answer> in the completion")
    if len(program) > config.max_program_chars:
        return CodeOutcome("failed", 0, len(tests), f"program longer than {config.max_program_chars} chars")
    if kind == "assert":
        return _assertions(program, tests, item.entry_point, config)
    return _stdio(program, tests, config)


def _assertions(program: str, tests: list[str], entry_point: str | None, config: CodeConfig) -> CodeOutcome:
    nonce = secrets.token_hex(16)
    sent, expected = zip(*map(split_assertion, tests))
    run = run_python(program, stdin=f"{nonce}\n".encode(), mode=config.sandbox, limits=config.limits(),
                     kind="assert", tests=list(sent), entry_point=entry_point)
    if run.status != "ok":
        return CodeOutcome(_RUN_TO_CODE[run.status], 0, len(tests), run.detail)
    marker = f"\n{nonce} ".encode()
    at = run.stdout.rfind(marker)
    line = run.stdout[at + len(marker):].split(b"\n", 1)[0] if at >= 0 else b""
    try:
        results = json.loads(line.decode())
        if not isinstance(results, list):
            raise ValueError("not a list")
        verdicts = [_judge(r, e) for r, e in zip(results, expected, strict=True)]
    except (ValueError, TypeError, RecursionError, OverflowError):  # no line (or a malformed one, such as a
        # float.hex past a float's range): the run ended early
        return CodeOutcome("crashed", 0, len(tests), "the program ended before its tests ran")
    passed = sum(verdicts)
    return CodeOutcome("passed" if passed == len(tests) else "failed", passed, len(tests))


def split_assertion(test: str) -> tuple[str, object]:
    """("eval EXPR", LITERAL's value) for `assert EXPR == LITERAL` or `assert LITERAL == EXPR` (one statement,
    an optional message), the form sandbox_runner reads; else ("exec TEST", _IN_SANDBOX)."""
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "exec " + test, _IN_SANDBOX
    compare = tree.body[0].test if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert) else None
    if isinstance(compare, ast.Compare) and len(compare.ops) == 1 and isinstance(compare.ops[0], ast.Eq):
        for expr, literal in ((compare.left, compare.comparators[0]), (compare.comparators[0], compare.left)):
            try:
                return "eval " + ast.unparse(expr), ast.literal_eval(literal)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                continue
    return "exec " + test, _IN_SANDBOX


def _judge(result, expected) -> bool:
    """Whether one test passed; ValueError when `result` is not what the runner sends for it."""
    if expected is _IN_SANDBOX:
        if type(result) is not int or result not in (0, 1):
            raise ValueError(f"not a flag: {result!r:.80}")
        return result == 1
    if result in ("raised", "unencodable", "too_large"):
        return False
    if not (isinstance(result, list) and len(result) == 2 and result[0] == "value"):
        raise ValueError(f"not a value: {result!r:.80}")
    return bool(decode_value(result[1]) == expected)


def _stdio(program: str, tests: list[tuple[str, str]], config: CodeConfig) -> CodeOutcome:
    passed, status, detail = 0, "passed", ""
    for stdin, expected in tests:
        run = run_python(program, stdin=stdin.encode(), mode=config.sandbox, limits=config.limits())
        if run.status == "ok" and same_output(run.stdout, expected):
            passed += 1
            continue
        if status == "passed":
            status, detail = _run_status(run), run.detail
        if status == "syntax_error" or not config.partial:
            break  # the rest cannot change a 0 (or a program that does not compile)
    return CodeOutcome(status, passed, len(tests), detail)


def _run_status(run: RunResult) -> str:
    return "failed" if run.status == "ok" else _RUN_TO_CODE[run.status]


@register_reward("code")
def code_reward(item: ScoreItem, config: RewardsConfig) -> float:
    if item.tests is None:
        return 0.0
    outcome = code_outcome(item, config.code)
    if config.code.partial:
        return outcome.passed / outcome.total
    return float(outcome.passed == outcome.total)
