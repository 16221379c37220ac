"""Programs that forge or bend the assert mode's conversation with its judge (rl/rewards/sandbox_judge.py,
sandbox_runner.py, sandbox_values.py), each compared with the same program and test in plain Python: before its
fix each crashed the judge or passed a test that Python fails."""

import json
import shutil

import pytest

from r1jax.rl.rewards import CodeConfig, ScoreItem, sandbox_values
from r1jax.rl.rewards.code import code_outcome

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
