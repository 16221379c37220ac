"""encode_tests' static checks (rl/rewards/code.py) at their edges: what each refuses, and what it must let
through (a refused good test silently drops a dataset's row; a let-through bad one pays every program)."""

import json

import pytest

from r1jax.errors import UserError
from r1jax.rl.rewards.code import encode_tests


@pytest.mark.parametrize("test,entry_point", [
    ("if ANSWER != 42:\n    raise AssertionError", None),  # a raise without a call: it checks the program's value
    ("def h(*, x=f(2)):\n    pass", "f"),  # a keyword-only default runs at definition: f(2) is called
    ("def h(x=f(2)):\n    pass", "f"),  # a positional default too
    ("async def g(**k):\n    pass\ng(k=f(2))", "f"),  # an un-awaited coroutine's keyword arguments still run
    ("assert globals()['f'](2) == 4", None),  # the program's name reached through globals()
    ("def check():\n    assert f(2) == 4\ncheck()", None),  # the program's name read in a function of the test's
    ("import unittest\nclass T(unittest.TestCase):\n    def test(self):\n        self.assertEqual(f(2), 4)\n"
     "unittest.main(exit=True)", None),  # (only exit=False records failures without raising)
])
def test_a_test_that_checks_the_program_is_kept(test, entry_point):
    assert json.loads(encode_tests([test], "w", entry_point)) == [test]


def test_a_blank_expected_output_beside_others_is_kept_but_all_blank_is_refused():
    # a program that must print nothing for one input is a fair test; only every output blank pays `pass`
    pairs = [{"input": "0\n", "output": ""}, {"input": "2\n", "output": "4\n"}]
    assert json.loads(encode_tests(pairs, "w", None)) == pairs
    with pytest.raises(UserError, match=r"^w: every test's 'output' is blank"):
        encode_tests([{**pair, "output": " \n"} for pair in pairs], "w", None)


def test_a_lambda_never_called_checks_nothing():
    # a lambda's body runs only when called (its defaults at once): `g = lambda: f(2)` passed every program
    with pytest.raises(UserError, match=r"^w: tests\[0\] checks nothing"):
        encode_tests(["g = lambda: f(2)"], "w", "f")
    assert json.loads(encode_tests(["g = lambda x=f(2): x"], "w", "f")) == ["g = lambda x=f(2): x"]


@pytest.mark.parametrize("test", ["import math\nassert math.sqrt(4) == 2", "from math import sqrt\nassert sqrt(4) == 2",
                                  "def g(x):\n    return x\nassert g(2) == 2",
                                  "def g():\n    global Y\n    Y = 1\ng()\nassert len([1]) == 1"])  # Y: only written
def test_a_test_using_only_its_imports_and_builtins_is_refused(test):
    with pytest.raises(UserError, match=r"^w: tests\[0\] names nothing of the program"):
        encode_tests([test], "w", None)


def test_candidate_read_inside_a_tests_function_needs_an_entry_point():
    test = "def check():\n    assert candidate(2) == 4\ncheck()"  # (no parameter: `candidate` is the global)
    with pytest.raises(UserError, match=r"^w: tests\[0\] calls `candidate`, which only the row's 'entry_point'"):
        encode_tests([test], "w", None)
    assert json.loads(encode_tests([test], "w", "f")) == [test]
