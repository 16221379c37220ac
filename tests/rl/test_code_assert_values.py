"""Assertion tests `assert EXPR == LITERAL` are judged outside the sandbox (rl/rewards/code.py): the sandbox
only sends EXPR's value back, so a program that rewrites the harness inside its interpreter gains nothing."""

import json
import shutil

import pytest

from r1jax.rl.rewards import CodeConfig, PoolConfig, RewardPool, RewardsConfig, ScoreItem, sandbox_values
from r1jax.rl.rewards import code as code_module
from r1jax.rl.rewards.code import code_outcome, decode_value, split_assertion

LIMITS = dict(wall_s=3.0, cpu_s=2, memory_mb=256, processes=16, file_mb=1, output_bytes=65536, tmp_mb=16)
MODES = [pytest.param("bwrap", marks=pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bwrap")),
         "rlimits_only"]
DOUBLE = ["assert f(2) == 4", "assert f(5) == 10"]
# The reviewer's programs: each returned x (wrong) and passed 2/2 when the runner judged `f(2) == 4` inside.
SPOOFS = {
    "builtins_exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef f(x): return x",
    "builtins_compile": "import builtins\n_c = builtins.compile\nbuiltins.compile = "
                        "lambda src, name, mode, *a, **k: _c('pass', name, mode)\ndef f(x): return x",
    "json_dumps": "import json\n_d = json.dumps\njson.dumps = lambda o, *a, **k: _d([1] * len(o)) "
                  "if isinstance(o, list) else _d(o, *a, **k)\ndef f(x): return x",
    "stdout_wrap": "import sys, re\nclass W:\n    def __init__(s, r): s.r = r\n    def write(s, t):\n"
                   "        t = re.sub(r'(\\n[0-9a-f]{32} )\\[([01, ]*)\\]', lambda m: m.group(1) + '[' + "
                   "', '.join('1' for _ in m.group(2).split(',')) + ']', t)\n        return s.r.write(t)\n"
                   "    def __getattr__(s, n): return getattr(s.r, n)\nsys.stdout = W(sys.stdout)\ndef f(x): return x",
    "read_tests_file": "import json, os\n"  # (no ast: rlimits_only's user may not import more of a /root Python)
                       "_tests, _ = json.load(open(next(q for q in ('/sandbox/tests.json', '../tests.json') "
                       "if os.path.exists(q))))\n_table = {}\nfor t in _tests:\n"
                       "    x, want = t[len('assert f'):].split(' == ')\n    _table[eval(x)] = eval(want)\n"
                       "def f(x): return _table[x]",
}


def outcome(program: str, tests: list[str], mode: str = "bwrap", entry_point: str | None = "f"):
    item = ScoreItem("", f"```python\n{program}\n```", "", "code", tests=json.dumps(tests), entry_point=entry_point)
    result = code_outcome(item, CodeConfig(**LIMITS, sandbox=mode, partial=True))
    return result.passed, result.total, result.status


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", SPOOFS)
def test_a_program_that_rewrites_the_harness_scores_zero(name, mode):
    assert outcome(SPOOFS[name], DOUBLE, mode) == (0, 2, "failed")
    assert outcome("def f(x): return 2 * x", DOUBLE, mode) == (2, 2, "passed")


@pytest.mark.parametrize("mode", MODES)
def test_patching_builtins_no_longer_forges_an_assertion_judged_in_the_sandbox(mode):
    tolerance = ["assert abs(f(2) - 4) < 1e-9"]
    for name in ("builtins_exec", "builtins_compile", "json_dumps", "stdout_wrap"):
        assert outcome(SPOOFS[name], tolerance, mode) == (0, 1, "failed"), name
    assert outcome("def f(x): return 2 * x + 1e-12", tolerance, mode) == (1, 1, "passed")


def test_spoofs_score_zero_through_the_reward_pool():
    config = RewardsConfig(names=("code",), weights=(1.0,), code=CodeConfig(**LIMITS))
    items = [ScoreItem("", f"```python\n{p}\n```", "", "code", tests=json.dumps(DOUBLE), entry_point="f")
             for p in [*SPOOFS.values(), "def f(x): return 2 * x"]]
    with RewardPool(config, PoolConfig(workers=2, timeout_s=20, memory_mb=0)) as pool:
        rewards = [r.rewards["code"] for r in pool.score_batch(items)]
    assert rewards == [0.0] * len(SPOOFS) + [1.0]


@pytest.mark.parametrize("program,tests,passed", [
    ("def f(): return [1, 2]", ["assert f() == (1, 2)", "assert f() == [1, 2]", "assert (1, 2) == tuple(f())"], 2),
    ("def f(): return float('nan')", ["assert f() == 1.5", "assert str(f()) == 'nan'", "assert f() != f()"], 2),
    ("def f(): return float('-inf'), 0.1 + 0.2, 2.0", ["assert f() == (-1e999, 0.30000000000000004, 2)",
                                                       "assert f() == (-1e999, 0.3, 2)"], 1),
    ("def f(): return {'a': [1, (2, 3.5)], 2: {None, True}, 'b': b'x\\xff', 'c': 'é\\ud800', 'd': -3+1j, "
     "'e': frozenset({1}), 'n': -2**100}",
     ["assert f() == {'a': [1, (2, 3.5)], 2: {None, 1}, 'b': b'x\\xff', 'c': 'é\\ud800', 'd': -3+1j, "
      "'e': {1}, 'n': -1267650600228229401496703205376}", "assert f()['a'] == [1, (2, 3.5000001)]",
      "assert f()['n'] == -2 ** 100"], 2),  # the last one is no literal: judged whole in the sandbox
    ("def f(x): return 2 * x", ["assert f(2) == 4, 'message'", "x = f(5)\nassert x == 10",
                                "def check(candidate):\n    assert candidate(1) == 2\ncheck(f)", "assert f(-1) == -2",
                                "assert 8 == f(4)", "assert f(3) == 7"], 5),
    ("import collections\ndef f(): return collections.OrderedDict(a=1)", ["assert f() == {'a': 1}"], 1),
    ("class A:\n    def __eq__(self, other): return True\ndef f(): return A()", ["assert f() == 4"], 0),
    ("class I(int):\n    def __eq__(self, other): return True\ndef f(): return I(3)", ["assert f() == 4"], 0),
    ("def f(): raise SystemExit(0)", ["assert f() == 4", "assert 1 == 1"], 1),
])
def test_values_compare_as_python_compares_them(program, tests, passed):
    assert outcome(program, tests, "rlimits_only") == (passed, len(tests), "passed" if passed == len(tests)
                                                       else "failed")


def test_split_keeps_the_expected_value_outside_and_decoding_is_strict():
    assert split_assertion("assert f(2, 'x') == (-1, [None])") == ("eval f(2, 'x')", (-1, [None]))
    assert split_assertion("assert {1: 2} == g()") == ("eval g()", {1: 2})
    for whole in ("assert f(2) == 4 == g(2)", "assert f(2) != 4", "assert f(2) == float('inf')", "f(2) == 4"):
        assert split_assertion(whole)[0] == "exec " + whole
    assert decode_value(["tuple", [["float", "nan"], ["str", "c3a9"]]])[1] == "é"
    assert decode_value(["list", [["range", "1", "-a", "-2"], ["slice", [["none"], ["int", "3"], ["none"]]]]]) == \
        [range(1, -10, -2), slice(None, 3)]  # (a range, and the key of `x[:3]`: a program's class's)
    for bad in (["int", "0x10"], ["eval", "1"], ["list", "ab"], ["set", [["list", []]]], ["float", "1e3"],
                ["range", "0", "1", "0"], ["range", "0", "1"], ["slice", [["none"]]], ["slice", "1", "2", "3"]):
        with pytest.raises((ValueError, TypeError)):
            decode_value(bad)
    nested = ["none"]  # slices within slices count toward MAX_DEPTH (100) as any container does
    for _ in range(101):
        nested = ["slice", [nested, ["none"], ["none"]]]
    with pytest.raises(ValueError, match="not an encoded value"):
        decode_value(nested)


@pytest.mark.parametrize("mode", MODES)
def test_a_value_too_large_to_send_back_fails_that_assertion_only(mode):
    """An 80 MB list, a 50 MB string: their encodings stop at MAX_VALUE_CHARS (no memory blowup in the sandbox,
    no huge verdict line), those two assertions fail and the others are judged."""
    program = "def f(n): return [0] * n\ndef g(n): return 'x' * n"
    tests = ["assert f(10**7) == [0]", "assert g(50 << 20) == 'x'", "assert f(1) == [0]", "assert g(3) == 'xxx'"]
    assert outcome(program, tests, mode, entry_point=None) == (2, 4, "failed")


def test_an_encoded_value_never_exceeds_the_cap():
    cap = sandbox_values.MAX_VALUE_CHARS

    def encoded(value):
        try:
            return sandbox_values.encode(value, 0, [cap])
        except sandbox_values.ValueTooLarge:
            return None

    shapes = {"ints": lambda n: list(range(n)), "dict": lambda n: {i: None for i in range(n)},
              "str": lambda n: "é" * n, "bytes": lambda n: bytearray(n), "nested": lambda n: [[(), {""}]] * n,
              "int": lambda n: 16 ** n, "range": lambda n: range(-(16 ** n), 16 ** n, 16 ** n),
              "slices": lambda n: [slice(n, None, ())] * n}
    for name, make in shapes.items():
        fits, over = 0, 1 << 20  # the largest n known to fit, the smallest known not to
        while over - fits > 1:
            middle = (fits + over) // 2
            fits, over = (middle, over) if encoded(make(middle)) is not None else (fits, middle)
        largest = encoded(make(fits))
        assert cap // 2 < len(largest) <= cap and decode_value(json.loads(largest)) == make(fits), name


ALWAYS_EQUAL = "class A:\n    __eq__ = lambda *a: True\n    __ne__ = lambda *a: False\n    __bool__ = lambda s: True\n" \
               "    __lt__ = lambda *a: True\n    __sub__ = lambda *a: 0\n    __abs__ = lambda s: 0\n"
JUDGED_WHOLE = ["def check(candidate):\n    assert candidate(3) == 6\ncheck(f)", "assert f(5) == 2*5",
                "assert abs(f(2) - 4.0) < 1e-6", "assert f(2) in [4]", "assert (f(2) == 4) == True",
                "x = f(5)\nassert x == 10"]
# A reviewer's programs (session 42), each scoring every assertion judged whole in the sandbox before: those ran
# in the program's own interpreter, where an object could equal anything and the harness could be rewritten.
HACKS = {
    "always_equal": ALWAYS_EQUAL + "def f(x): return A()",
    "gc_patch_harness": "import gc\nfor o in gc.get_objects():\n    if isinstance(o, dict) and 'run_test' in o:\n"
                        "        o['_exec'] = lambda *a, **k: None\ndef f(x): return x",
    "frame_forge": "import os, sys\nf = sys._getframe()\nwhile f is not None and 'verdict_fd' not in f.f_locals:\n"
                   "    f = f.f_back\nL = f.f_locals\nos.write(L['verdict_fd'], ('\\n' + L['nonce'] + ' ' + "
                   "str([1] * len(L['tests'])) + '\\n').encode())\nos._exit(0)",
    "shadow_builtins": "def abs(x): return 0\ndef isinstance(*a): return True\ndef f(x): return x",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", HACKS)
def test_assertions_judged_whole_cannot_be_passed_without_the_values(name, mode):
    assert outcome(HACKS[name], JUDGED_WHOLE, mode) == (0, len(JUDGED_WHOLE), "failed")  # frame_forge: no frame
    assert outcome("def f(x): return 2 * x", JUDGED_WHOLE, mode) == (len(JUDGED_WHOLE),) * 2 + ("passed",)


@pytest.mark.parametrize("mode", MODES)
def test_the_programs_classes_and_standard_modules_reach_the_tests(mode):
    program = ("import math\nclass Solution:\n    def __init__(self, k): self.k = k\n"
               "    def scale(self, xs): return [self.k * x for x in xs]\n    def pair(self): return Solution(2 * self.k)\n"
               "def f(x): return math.sqrt(x)\nLIMIT = (3, 'x')")
    tests = ["assert Solution(3).scale([1, 2]) == [3, 6]", "s = Solution(2).pair()\nassert s.scale([1]) == [4]",
             "assert s.k == 4", "assert math.isclose(f(16), 4)", "assert LIMIT == (3, 'x')",
             "assert Solution(1) != Solution(1)", "assert Solution(1) == 1"]  # objects equal only themselves
    assert outcome(program, tests, mode, entry_point=None) == (6, 7, "failed")


ITERATING = ["assert list(f(3)) == [0, 1, 2]", "assert next(f(3), 9) == 0", "assert next(f(0), 9) == 9",
             "assert sum(f(4)) == 6", "assert sorted(f(3), reverse=True) == [2, 1, 0]", "assert tuple(f(2)) == (0, 1)",
             "it = f(2)\nassert next(it) == 0 and list(it) == [1] and iter(it) is it", "assert 2 in f(3)",
             "assert [x for x in f(3)] == [0, 1, 2] and list(zip(f(2), f(3))) == [(0, 0), (1, 1)]",
             "assert list(map(list, f(3, nested=True))) == [[], [0], [0, 1]]", "assert list(f(3)) == [0, 1]"]
RETURNING = {"generator": "def f(n, nested=False):\n    for i in range(n):\n        yield range(i) if nested else i",
             "map": "def f(n, nested=False): return map(range if nested else int, range(n))",
             "range": "def f(n, nested=False): return (range(i) for i in range(n)) if nested else range(n)",
             "empty": "def f(n, nested=False): return iter([])",
             "class": "class It:\n    def __init__(self, n): self.i, self.n = -1, n\n"
                      "    def __iter__(self): return self\n    def __next__(self):\n        self.i += 1\n"
                      "        if self.i == self.n: raise StopIteration\n"
                      "        return self.i\ndef f(n, nested=False): return It(n)",
             "sequence": "class Seq:\n    def __init__(self, n): self.n = n\n    def __getitem__(self, i):\n"
                         "        if i >= self.n: raise IndexError(i)\n        return i\n"
                         "def f(n, nested=False): return Seq(n)"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", RETURNING)
def test_a_returned_iterator_is_read_by_the_tests_as_in_python(name, mode):
    # until 2026-12-05 it crossed as a reference with no __iter__: `list(f(3))` raised, a correct program scored 0
    expected = _passes_in_python(RETURNING[name], ITERATING)  # the reference: this interpreter
    assert expected == {"generator": [1] * 10 + [0], "map": [1] * 10 + [0], "class": [1] * 9 + [0, 0],
                        "range": [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0],
                        "sequence": [1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0], "empty": [0, 0, 1] + [0] * 8}[name]
    passed = sum(expected)
    assert outcome(RETURNING[name], ITERATING, mode, entry_point=None) == (passed, len(ITERATING), "failed")


@pytest.mark.parametrize("mode", MODES)
def test_in_asks_the_programs_own_contains(mode):
    # a class's __contains__ decides `in`, as in Python (an iterable's items did: `1 in Bag()` was true)
    program = ("class Bag:\n    def __iter__(self): return iter([1, 2])\n    def __contains__(self, x): return x == 7\n"
               "def f(n): return Bag() if n else (i for i in range(3))")
    tests = ["assert 7 in f(1) and 1 not in f(1)", "assert list(f(1)) == [1, 2]", "assert 2 in f(0) and 5 not in f(0)",
             "assert (7 in f(1)) is True", "assert 1 in f(1)"]
    namespace = {}
    exec(program, namespace)
    assert [bool(eval(test[7:], namespace)) for test in tests] == [True] * 4 + [False]  # Python's own reading
    assert outcome(program, tests, mode, entry_point=None) == (4, 5, "failed")


SEQUENCES = {  # a program returning a range, or its own class of sequence operations, and one without them
    "range": "def f(n): return range(n)",
    "box": "class Box:\n    def __init__(self, n): self.items = list(range(n))\n"
           "    def __len__(self): return len(self.items)\n    def __getitem__(self, i): return self.items[i]\n"
           "    def __contains__(self, x): return x == 7\ndef f(n): return Box(n)",
    "backwards": "class B:\n    def __len__(self): return 3\n    def __getitem__(self, i): return [0, 1, 2][i]\n"
                 "    def __reversed__(self): return iter('no')\n    def __bool__(self): return False\n"
                 "def f(n): return B()",
    "plain": "class P:\n    pass\ndef f(n): return P()"}
SEQUENCE_TESTS = ["assert len(f(5)) == 5", "assert f(5)[2] == 2", "assert f(5) == range(5)",
                  "assert f(5)[1:3] == [1, 2]", "assert f(5)[1:3] == range(1, 3)", "assert f(5)[-1] == 4",
                  "assert 7 in f(5)", "assert 3 in f(5)",
                  "assert not f(0)", "assert f(2)", "assert list(f(3)) == [0, 1, 2]",
                  "assert list(reversed(f(3))) == [2, 1, 0]", "assert list(reversed(f(3))) == ['n', 'o']",
                  "try:\n    f(2)[5]\nexcept IndexError:\n    pass\nelse:\n    assert False",
                  "try:\n    len(f(2))\nexcept TypeError:\n    pass\nelse:\n    assert False"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", SEQUENCES)
def test_len_indexing_slices_in_and_truth_of_a_returned_object_are_as_in_python(name, mode, monkeypatch):
    # until 2026-12-05 a range and a program's sequence crossed as references without len, [i], == or truth (all
    # true: `assert not f(0)` failed, a falsy object passed `assert f(2)`); its class's operations are now marked
    # at crossing (sandbox_judge.OPERATIONS), each asked of the program, and a range crosses as a value
    expected = _passes_in_python(SEQUENCES[name], SEQUENCE_TESTS)  # the reference: this interpreter
    assert expected == {"range": [1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0],
                        "box": [1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 0],
                        "backwards": [0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 0],
                        "plain": [0] * 9 + [1] + [0] * 4 + [1]}[name]
    # each test's own verdict, not the count (a pass where Python fails cannot hide a miss), from one run of the
    # 15 (one run each took ~1.7 s of CPU a case: 15 sandboxes)
    verdicts, judge = [], code_module._judge
    monkeypatch.setattr(code_module, "_judge",
                        lambda result, want: verdicts.append(judge(result, want)) or verdicts[-1])
    passed, total, _ = outcome(SEQUENCES[name], SEQUENCE_TESTS, mode, entry_point=None)
    assert (passed, total) == (sum(expected), len(SEQUENCE_TESTS))
    assert [int(v) for v in verdicts] == expected, [t for t, v, e in zip(SEQUENCE_TESTS, verdicts, expected) if v != e]


@pytest.mark.parametrize("mode", MODES)
def test_str_and_repr_of_a_returned_object_are_the_programs(mode):
    # until 2026-12-05 every reference's str was "<an object of the program>": a correct __str__ or dataclass repr
    # failed; the judge now asks the program's own str() and repr() (a str crosses back, nothing runs here)
    program = ("import dataclasses\n@dataclasses.dataclass\nclass P:\n    x: int\nclass S:\n"
               "    def __str__(self): return 'S!'\ndef f(n): return P(n)\ndef g(): return S()\n"
               "def h(): return (i for i in range(2))")
    tests = ["assert repr(f(1)) == 'P(x=1)' and str(f(2)) == 'P(x=2)'", "assert str(g()) == 'S!' and f'{g()}' == 'S!'",
             "assert repr(g()).startswith('<__solution__.S object at ')", "assert str(h()).startswith('<generator')",
             "assert str(g()) == 'P'", "assert repr(f(1)) == 'P(1)'"]
    namespace = _defined(program.replace("import dataclasses", "import dataclasses\n__name__ = '__solution__'"))
    assert [not _raises(test, namespace) for test in tests] == [True] * 4 + [False] * 2  # Python's own reading
    assert outcome(program, tests, mode, entry_point=None) == (4, 6, "failed")


def _raises(test: str, namespace: dict) -> bool:
    try:
        exec(test, namespace)
    except Exception:
        return True
    return False


def _defined(program: str) -> dict:
    namespace = {}
    exec(program, namespace)  # (the tests' own programs, never a model's)
    return namespace


def _passes_in_python(program: str, tests: list[str]) -> list[int]:
    """1 or 0 for each test run against the program's `f` in this interpreter (a fresh program for each test)."""
    passes = []
    for test in tests:
        try:
            exec(test, {"f": _defined(program)["f"]})
            passes.append(1)
        except Exception:
            passes.append(0)
    return passes


@pytest.mark.parametrize("mode", MODES)
def test_a_keyring_entry_does_not_carry_data_to_the_next_run(mode):
    add = ("import ctypes\nr = ctypes.CDLL(None, use_errno=True).syscall(248, b'user', b'r1jax-probe', b'left', 4, -4)\n"
           "def f(x): return r")
    assert outcome(add, ["assert f(0) == -1"], mode) == (1, 1, "passed")  # add_key refused (EPERM)


# the judge (the program's parent) holds the nonce in its memory and the verdict's pipe among its descriptors: each
# probe that reached either could forge a passing verdict line
PROBE_THE_JUDGE = """import ctypes, os
libc, judge, reached = ctypes.CDLL(None, use_errno=True), os.getppid(), []
for name, read in (("mem", lambda: open(f"/proc/{judge}/mem", "rb")), ("fds", lambda: os.listdir(f"/proc/{judge}/fd")),
                   ("environ", lambda: open(f"/proc/{judge}/environ", "rb").read()),
                   ("pid1_environ", lambda: open("/proc/1/environ", "rb").read())):
    try:
        read()
        reached.append(name)
    except OSError:
        pass
pidfd = libc.syscall(434, judge, 0)  # pidfd_open, then pidfd_getfd of each descriptor
reached += [f"getfd{n}" for n in range(12) if pidfd >= 0 and libc.syscall(438, pidfd, n, 0) >= 0]
if libc.ptrace(16, judge, None, None) == 0:  # PTRACE_ATTACH
    reached.append("ptrace")
def f(x): return reached
"""


@pytest.mark.parametrize("mode", MODES)
def test_the_program_reaches_neither_the_judges_memory_nor_its_descriptors(mode):
    assert outcome(PROBE_THE_JUDGE, ["assert f(0) == []"], mode) == (1, 1, "passed")


def test_rlimits_only_as_root_imports_the_common_standard_modules():
    # an interpreter under /root (0700) imported nothing more once the runner dropped to the sandbox's user:
    # a correct program importing heapq scored 0 as "crashed" (ModuleNotFoundError)
    program = "import heapq, fractions, decimal, statistics, bisect\ndef f(xs): return heapq.nsmallest(2, xs)"
    for mode in ("rlimits_only", *(["bwrap"] if shutil.which("bwrap") else [])):
        assert outcome(program, ["assert f([3, 1, 2]) == [1, 2]"], mode) == (1, 1, "passed"), mode


@pytest.mark.parametrize("mode", MODES)
def test_a_large_constant_table_beside_the_functions_is_no_crash_and_a_self_kill_no_pass(mode):
    # the program's names and values share one reply line, each with half its room: a table near the value cap
    # beside several functions stays within the line's limit
    table = ("TABLE = 'x' * 131000  # its encoding just under the value cap\n"
             + "".join(f"def helper_with_a_long_descriptive_name_{i}(): pass\n" for i in range(8))
             + "def f(x): return len(TABLE[:x])")
    assert outcome(table, ["assert f(5) == 5", "assert abs(f(7) - 7) < 1"], mode) == (2, 2, "passed")
    # killed by SIGKILL (as the hard CPU limit kills) mid-test: the judge ends the same way (its try to restore
    # SIGKILL's default raised before, and the run read as failed tests)
    killed = "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGKILL)"
    assert outcome(killed, ["assert f(5) == 5", "assert abs(f(7) - 7) < 1"], mode) == (0, 2, "timeout")


# the program's process writes the judge's "ready" line itself, naming `__builtins__` (a dict of its data), then its
# reply to the call, and blocks: the tests' builtin names were then the program's values
FORGED_BUILTINS = """import os, time
def f(x): return 1
forged = (b'["ready", [["call", "f"], ["value", "__builtins__", ["dict", [[["str", "%s"], ["int", "1"]]]]]]]\\n'
          b'["value", ["int", "1"]]\\n')
for fd in range(3, 30):
    try:
        os.write(fd, forged)
    except OSError:
        pass
time.sleep(100)
""" % "Ellipsis".encode().hex()


@pytest.mark.parametrize("mode", MODES)
def test_a_program_cannot_name_the_tests_builtins(mode):
    assert outcome(FORGED_BUILTINS, ["assert f(0) == Ellipsis"], mode) == (0, 1, "failed")


@pytest.mark.parametrize("mode", MODES)
def test_a_tests_main_guard_runs(mode):
    """A test written as a script (`if __name__ == "__main__": check(f)`) ran in a namespace named `__tests__`: its
    guard skipped every check and a program `return 0` passed it."""
    tests = ["def check(candidate):\n    assert candidate(2) == 4\nif __name__ == '__main__':\n    check(f)"]
    assert outcome("def f(x): return 0", tests, mode) == (0, 1, "failed")
    assert outcome("def f(x): return 2 * x", tests, mode) == (1, 1, "passed")


SCRIPT_TESTS = [  # each failed every program, a correct one too: sys.modules' __main__ was the runner's module
    "import pickle\nclass P:\n    def __init__(self, v): self.v = v\nassert pickle.loads(pickle.dumps(P(f(2)))).v == 4",
    "import typing\nclass P:\n    v: 'Q'\nclass Q: pass\nassert typing.get_type_hints(P)['v'] is Q and f(2) == 4",
    "import __main__\nX = f(2)\nassert __main__.X == 4",
    "import unittest\nclass T(unittest.TestCase):\n    def test_f(self):\n        self.assertEqual(f(2), 4)\n"
    "if __name__ == '__main__':\n    unittest.main()",  # (its sys.exit(False) failed the test too)
    "import sys\nsys.exit(f(2) - 4)",
]


@pytest.mark.parametrize("test", SCRIPT_TESTS)
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bwrap")  # (rlimits_only's user imports no pickle)
def test_a_test_is_the_main_module_as_a_script_is(test):
    assert outcome("def f(x): return 2 * x", [test]) == (1, 1, "passed")
    assert outcome("def f(x): return 0", [test]) == (0, 1, "failed")
    assert outcome("def f(x): raise ValueError(x)", [test]) == (0, 1, "failed")
