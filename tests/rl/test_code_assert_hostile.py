"""Programs that forge or bend the assert mode's conversation with its judge (rl/rewards/sandbox_judge.py,
sandbox_runner.py, sandbox_values.py), each compared with the same program and test in plain Python: before its
fix each crashed the judge or passed a test that Python fails."""

import json
import shutil

import pytest

from r1jax.rl.rewards import CodeConfig, ScoreItem, sandbox_values
from r1jax.rl.rewards.code import code_outcome
from tests.rl.test_code_assert_raises import forging

LIMITS = dict(wall_s=3.0, cpu_s=2, memory_mb=256, processes=16, file_mb=1, output_bytes=65536, tmp_mb=16)
MODES = [pytest.param("bwrap", marks=pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bwrap")),
         "rlimits_only"]


def outcome(program: str, tests: list[str], mode: str):
    item = ScoreItem("", f"```python\n{program}\n```", "", "code", tests=json.dumps(tests), entry_point="f")
    result = code_outcome(item, CodeConfig(**LIMITS, sandbox=mode, partial=True))
    return result.passed, result.total, result.status


# The program's process rewrites its own copy of the runner's write_all to add a name to its "ready" line whose
# float.hex is past a float's range (float.hex never writes one; any program can write any line to its pipe).
FORGED_READY = ("import sys\n_judging = sys.modules['sandbox_judge']\n_write = _judging.write_all\n"
                "def _forge(fd, data):\n    head = b'[\"ready\", ['\n    if data.startswith(head):\n"
                "        data = head + b'[\"value\", \"x\", [\"float\", \"0x1p+99999\"]], ' + data[len(head):]\n"
                "    _write(fd, data)\n_judging.write_all = _forge\ndef f(x):\n    return 2 * x\n")


@pytest.mark.parametrize("mode", MODES)
def test_a_float_past_a_floats_range_in_the_programs_names_is_skipped_not_a_judges_traceback(mode):
    """decode raised OverflowError, which the judge reading the program's names did not catch: a traceback, and
    the run 'crashed' before its tests; the name is now skipped as any unreadable one is and the tests run."""
    with pytest.raises(ValueError, match="past a float's range"):
        sandbox_values.decode(["float", "0x1p+99999"])
    with pytest.raises(ValueError, match="past a float's range"):
        sandbox_values.decode(["complex", "0x0p+0", "-0x1p+99999"])
    assert sandbox_values.decode(["float", "0x1p+1023"]) == 2.0 ** 1023
    assert outcome(FORGED_READY, ["assert f(2) == 4", "assert f(3) == 5"], mode) == (1, 2, "failed")


# An iterator class whose __iter__ gives another object: Python's list() reads that one ([9, 9]).
OTHER_ITER = ("class It:\n    def __init__(self):\n        self.i = 0\n    def __iter__(self):\n"
              "        return iter([9, 9])\n    def __next__(self):\n        self.i += 1\n        if self.i > 3:\n"
              "            raise StopIteration\n"
              "        return self.i - 1\ndef f(n):\n    return It()\n")
SAME = "class P:\n    pass\n_p = P()\ndef f(n):\n    return _p\n"
GENERATOR = "def f(n):\n    return (i for i in range(n))\n"


def python_passes(program: str, test: str) -> bool:
    namespace = {}
    exec(program, namespace)
    try:
        exec(test, namespace)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("mode", MODES)
def test_an_iterators_iter_is_its_classs_and_one_object_is_one_reference(mode):
    """The judge took an iterator's iter to be itself without asking: list() read its __next__, so a class whose
    __iter__ gives [9, 9] passed `list(f(3)) == [0, 1, 2]`, which Python fails; each crossing of one object was
    a new reference (f(1) is f(2) false for one object, iter(g) is g false for a generator)."""
    cases = [(OTHER_ITER, "assert list(f(3)) == [0, 1, 2]"), (OTHER_ITER, "assert list(f(3)) == [9, 9]"),
             (SAME, "assert f(1) is f(2)"), (GENERATOR, "g = f(3)\nassert iter(g) is g\nassert list(g) == [0, 1, 2]"),
             (GENERATOR, "g = f(4)\nassert list(zip(g, g)) == [(0, 1), (2, 3)]")]
    for program, test in cases:
        want = python_passes(program, test)
        assert outcome(program, [test], mode) == (int(want), 1, "passed" if want else "failed"), (program, test)
    assert [python_passes(p, t) for p, t in cases] == [False, True, True, True, True]


SORTS_IN_PLACE = "def f(a):\n    a.sort()\n    return a\n"
KEEPS = "def f(a):\n    return sorted(a)\n"
FILLS = "def f(d, s=None):\n    d['k'] = 1\n    s.add(2)\n    raise ValueError('after')\n"
KEPT = "a = [3, 1, 2]\nassert f(a) == [1, 2, 3]\nassert a == [3, 1, 2]"  # the argument must not change
SORTED = "a = [3, 1, 2]\nf(a)\nassert a == [1, 2, 3]"  # the function sorts it in place
FILLED = "d, s = {}, set()\ntry:\n    f(d, s=s)\nexcept ValueError:\n    pass\nassert d == {'k': 1} and s == {2}"


@pytest.mark.parametrize("mode", MODES)
def test_a_calls_changes_to_its_arguments_reach_the_tests_own_as_in_python(mode):
    """The program changed only its copy of an argument: a program sorting the test's list in place passed a test
    that the list is kept ([3, 1, 2]), which Python fails, and a correct one sorting in place failed; a list, dict
    or set the call changed (also before a raise, by keyword) is now written into the test's own."""
    for program, test in ((SORTS_IN_PLACE, KEPT), (KEEPS, KEPT), (SORTS_IN_PLACE, SORTED), (KEEPS, SORTED),
                          (FILLS, FILLED)):
        want = python_passes(program, test)
        assert outcome(program, [test], mode) == (int(want), 1, "passed" if want else "failed"), (program, test)
    assert [python_passes(p, t) for p, t in ((SORTS_IN_PLACE, KEPT), (KEEPS, KEPT))] == [False, True]
    # a list of the program's own, passed back as a reference, is the program's: its changes stay there, as they do
    stack = "class P:\n    pass\ndef make():\n    return [P()]\ndef f(s, x):\n    s.append(x)\n    return len(s)\n"
    pushes = "s = make()\nassert f(s, 3) == 2 and f(s, 4) == 3 and len(s) == 3"
    assert outcome(stack, [pushes], mode) == (1, 1, "passed")
    # an argument as large as a value may be (12,000 ints, ~200k characters) comes back sorted
    large = "a = list(range(12000, 0, -1))\nf(a)\nassert a == list(range(1, 12001))"
    assert outcome(SORTS_IN_PLACE, [large], mode) == (1, 1, "passed")
    # a change that cannot come back (past the value limit, or holding an object of the program's) fails the call
    # rather than leave the test's argument as it was
    grows = "class P:\n    pass\ndef f(a, n):\n    a.extend([P()] if n < 0 else range(n))\n    return 1\n"
    assert outcome(grows, ["a = [3]\nassert f(a, 2) == 1 and a == [3, 0, 1]", "assert f([3], 10 ** 5) == 1",
                           "assert f([3], -1) == 1"], mode) == (1, 3, "failed")


@pytest.mark.parametrize("mode", MODES)
def test_a_forged_change_of_an_argument_gains_nothing(mode):
    """A `changed` line naming no argument of the call's, changing an argument's type, or malformed breaks the
    conversation (the test fails); a well-formed one is a change the program's function could have made itself."""
    test = "a = [3]\nf(a)\nassert a == [3]"
    for line in (b'["changed", [[1, ["list", []]]]]', b'["changed", [[0, ["dict", []]]]]', b'["changed", [[-1, '
                 b'["list", []]]]]', b'["changed", [["x", ["list", []]]]]', b'["changed", 0]', b'["changed"]'):
        assert outcome(forging([line, b'["value", ["none"]]']), [test], mode) == (0, 1, "failed"), line
    changed = [b'["changed", [[0, ["list", [["int", "1"]]]]]]', b'["value", ["none"]]']
    assert outcome(forging(changed), ["a = [3]\nf(a)\nassert a == [1]"], mode) == (1, 1, "passed")
    assert outcome(forging([b'["value", ["none"]]']), [test], mode) == (1, 1, "passed")


@pytest.mark.parametrize("mode", MODES)
def test_what_did_not_come_back_fails_the_test_that_catches_it(mode):
    """A value or a change to an argument that could not come back raised Unsent, an Exception the test's own
    `except Exception` caught: the test went on with what Python never had (the argument unchanged, no value) and
    passed where Python fails; it now fails the test whatever the test catches."""
    catching = "a = [3]\ntry:\n    r = f(a)\nexcept Exception:\n    r = None\nassert a == [3] and r is None"
    programs = ["class P:\n    pass\ndef f(a):\n    a.append(P())\n",  # a change holding the program's object
                "def f(a):\n    a.extend(range(10 ** 5))\n",  # a change past the value's limit
                "def f(a):\n    return list(range(10 ** 5))\n"]  # a value past it
    for program in programs:
        assert not python_passes(program, catching)
        assert outcome(program, [catching], mode) == (0, 1, "failed"), program
    # the next test starts afresh; one that catches what came back passes
    assert outcome(programs[2], [catching, "assert len([3]) == 1"], mode) == (1, 2, "failed")
    assert outcome("def f(a):\n    return None\n", [catching], mode) == (1, 1, "passed")


ROTATES = "def f(m):\n    m[:] = [list(r) for r in zip(*m[::-1])]\n    m[0][0] += 0\n"
SHARED = [("def f(d):\n    d['k'].append(2)\n", "inner = [1]\nd = {'k': inner}\nf(d)\nassert inner == [1]"),
          ("def f(m):\n    m[0].append(2)\n", "row = [1]\nm = [row]\nf(m)\nassert row == [1] and m == [[1, 2]]"),
          ("def f(x, y):\n    x.append(1)\n    y.append(2)\n", "a = []\nf(a, a)\nassert a == [2]"),
          ("def f(x, y):\n    x.append(1)\n    return len(y)\n", "a = []\nassert f(a, a) == 0"),
          ("def f(x, y):\n    y.append(1)\n", "a = [[]]\nf(a, y=a[0])\nassert a == [[]]")]


@pytest.mark.parametrize("mode", MODES)
def test_a_change_to_an_object_the_test_shares_fails_rather_than_pass_where_python_fails(mode):
    """The program's process changes its own copies, one for each place an object sits: the judge wrote a changed
    dict into the test's own but left a list nested in it that the test also held (inner) as it was, and wrote
    f(a, a)'s two copies into a one after the other, so each of these passed where Python fails. A change to an
    argument holding an object the test shares (by a variable, another argument, twice) now fails the call; a
    change to nested lists that only their argument holds (a matrix rotated in place) still comes back."""
    for program, test in SHARED:
        assert not python_passes(program, test), (program, test)
        assert outcome(program, [test], mode) == (0, 1, "failed"), (program, test)
    rotated = "m = [[1, 2], [3, 4]]\nf(m)\nassert m == [[3, 1], [4, 2]]"
    built = "m = [[1, 2] for _ in range(2)]\nd = {'m': m}\nf(m)\nassert m == [[1, 1], [2, 2]] and d['m'] is m"
    unchanged = "inner = [1]\nd = {'k': inner}\nassert f(d, d) is None and d == {'k': [1]}"
    assert all(python_passes(p, t) for p, t in ((ROTATES, rotated), (ROTATES, built)))
    assert outcome(ROTATES, [rotated, built], mode) == (2, 2, "passed")
    assert outcome("def f(x, y):\n    return None\n", [unchanged], mode) == (1, 1, "passed")


@pytest.mark.parametrize("mode", MODES)
def test_a_change_to_a_list_inside_a_tuple_argument_reaches_the_tests_own(mode):
    """A tuple argument never came back, so a program sorting the list inside it (t[0].sort()) left the test's
    as it was and passed a test that it is kept, which Python fails; the tuple's lists, dicts and sets come back."""
    sorts = "def f(t):\n    t[0].sort()\n    t[1]['k'] = 1\n"
    kept, held = "t = ([3, 1], {})\nf(t)\nassert t == ([3, 1], {})", "a = [3, 1]\nf((a, {}))\nassert a == [3, 1]"
    both = "t = ([3, 1], {})\nf(t)\nassert t == ([1, 3], {'k': 1})"
    assert [python_passes(sorts, t) for t in (kept, held, both)] == [False, False, True]
    assert outcome(sorts, [kept, held, both], mode) == (1, 3, "failed")
    # a forged change of a tuple's other item, or of its length, gains nothing
    for line in (b'["changed", [[0, ["tuple", [["int", "1"]]]]]]', b'["changed", [[0, ["list", []]]]]'):
        assert outcome(forging([line, b'["value", ["none"]]']), ["t = ([3],)\nf(t)\nassert t == ([3],)"],
                       mode) == (0, 1, "failed"), line
    changed = b'["changed", [[0, ["tuple", [["list", []], ["int", "9"]]]]]]'
    assert outcome(forging([changed, b'["value", ["none"]]']), ["t = ([3], 1)\nf(t)\nassert t == ([], 1)"],
                   mode) == (1, 1, "passed")


@pytest.mark.parametrize("mode", MODES)
def test_a_shared_list_inside_a_tests_dict_subclass_is_seen(mode):
    """A defaultdict (or a list subclass) crosses as a dict, but the check for a list the test holds elsewhere too
    walked exact dicts and lists only: inner = d['k'] stayed [] while Python appended to it, and the test passed."""
    program = "def f(d):\n    d['k'].append(1)\n"
    test = "from collections import defaultdict\nd = defaultdict(list)\ninner = d['k']\nf(d)\nassert inner == []"
    alone = "from collections import defaultdict\nd = defaultdict(list, k=[])\nf(d)\nassert d == {'k': [1]}"
    assert [python_passes(program, t) for t in (test, alone)] == [False, True]
    assert outcome(program, [test, alone], mode) == (1, 2, "failed")
