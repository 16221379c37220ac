"""Tests that check which exception the program raises (the sandbox's assert mode, rl/rewards/sandbox_raises.py):
the tests run in the judge against stubs of the program's functions, and a program's raise of a builtin exception
class comes back as that class, so `except ValueError` catches it as it would in the program's own interpreter.
Until 2026-12-05 every raise came back as the judge's ProgramRaised, and a correct program scored 0 on them."""

import builtins
import importlib
import json
import os
import shutil

import pytest

from r1jax.rl.rewards import sandbox_values
from tests.rl.test_code_assert_values import MODES, outcome

EXPECT_VALUE_ERROR = "try:\n    candidate(-1)\n    assert False\nexcept ValueError:\n    pass"
EXPECT_ANY = "try:\n    candidate(-1)\n    assert False\nexcept Exception:\n    pass"
ASSERT_RAISES = ("def assert_raises(kind, function, *args):\n    try:\n        function(*args)\n    except kind:\n"
                 "        return\n    raise AssertionError('nothing raised')\nassert_raises(ValueError, candidate, -1)")
MESSAGE = "try:\n    candidate(-1)\nexcept ValueError as e:\n    assert isinstance(e, ValueError) and str(e) == 'neg'"
NO_RAISE = ["assert candidate(3) == 3", "assert abs(candidate(2) - 2) < 1e-9"]  # split, and judged whole
RAISING = "def f(x):\n    if x < 0:\n        raise %s\n    return x"


@pytest.mark.parametrize("mode", MODES)
def test_a_builtin_exception_is_caught_by_its_class_and_its_bases(mode):
    tests = [EXPECT_VALUE_ERROR, EXPECT_ANY, ASSERT_RAISES, MESSAGE, *NO_RAISE]
    assert outcome(RAISING % "ValueError('neg')", tests, mode) == (6, 6, "passed")
    # TypeError is no ValueError (only `except Exception` and the tests that expect no raise pass); a program
    # raising on every input fails the tests that expect none
    assert outcome(RAISING % "TypeError('neg')", tests, mode) == (3, 6, "failed")
    assert outcome("def f(x): raise ValueError('neg')", tests, mode) == (4, 6, "failed")
    # KeyError is a LookupError and an Exception, not a ValueError; its argument crosses as a value
    lookup = ["try:\n    candidate(-1)\nexcept LookupError as e:\n    assert isinstance(e, KeyError) and e.args == "
              "('k', 2)\nelse:\n    assert False", EXPECT_ANY, EXPECT_VALUE_ERROR]
    assert outcome(RAISING % "KeyError('k', 2)", lookup, mode) == (2, 3, "failed")
    # an attribute the program's object lacks is an AttributeError: hasattr and getattr's default read it
    attributes = "class S:\n    k = 1\ndef f(): return S()"
    tests = ["assert not hasattr(f(), 'missing') and hasattr(f(), 'k')", "assert getattr(f(), 'missing', 5) == 5"]
    assert outcome(attributes, tests, mode, entry_point=None) == (2, 2, "passed")


@pytest.mark.parametrize("mode", MODES)
def test_the_programs_own_exception_crosses_as_its_nearest_builtin_class(mode):
    own = "class Invalid(%s):\n    pass\n" + RAISING % "Invalid('neg')"
    tests = [EXPECT_VALUE_ERROR, EXPECT_ANY, MESSAGE]
    assert outcome(own % "ValueError", tests, mode) == (3, 3, "passed")  # as `except ValueError` catches it
    assert outcome(own % "Exception", tests, mode) == (1, 3, "failed")
    # the test naming the program's class (a stub, no class in the judge) fails, as it did
    assert outcome(own % "ValueError", ["try:\n    candidate(-1)\nexcept Invalid:\n    pass"], mode) == (0, 1, "failed")
    # sys.exit and KeyboardInterrupt (BaseException only) are plain raises: no `except SystemExit` catches them
    for raised in ("SystemExit(0)", "KeyboardInterrupt()"):
        name = raised[:raised.index("(")]
        tests = [f"try:\n    candidate(-1)\nexcept {name}:\n    pass", EXPECT_ANY]
        assert outcome(RAISING % raised, tests, mode) == (1, 2, "failed"), raised



@pytest.mark.parametrize("mode", MODES)
def test_an_exception_with_several_builtin_bases_is_caught_by_each(mode):
    # until 2026-12-05 `class E(KeyError, ValueError)` crossed as KeyError only: `except ValueError` missed it
    program = "class E(KeyError, ValueError):\n    pass\n" + RAISING % "E('neg')"
    tests = [EXPECT_VALUE_ERROR, EXPECT_ANY, "try:\n    candidate(-1)\nexcept LookupError as e:\n    assert "
             "isinstance(e, KeyError) and isinstance(e, ValueError) and e.args == ('neg',)\nelse:\n    assert False",
             "try:\n    candidate(-1)\nexcept TypeError:\n    pass\nexcept Exception:\n    assert False", *NO_RAISE]
    assert outcome(program, tests, mode) == (5, 6, "failed")  # (not a TypeError: that test's raise escapes)
    # a builtin class with a builtin subclass among the bases crosses as the subclass alone, as before
    tests = [EXPECT_VALUE_ERROR, "try:\n    candidate(-1)\nexcept UnicodeError:\n    pass"]
    assert outcome("class E(UnicodeError, ValueError):\n    pass\n" + RAISING % "E('neg')", tests, mode) \
        == (2, 2, "passed")

# the program's process writes its own replies (its module code, before serve runs): "ready", then one reply per
# test's call, each naming a class the judge must not raise (or arguments it must not carry), then blocks
def forging(replies: list[bytes]) -> str:
    lines = b'["ready", [["call", "f"]]]\n' + b"".join(r + b"\n" for r in replies)
    return ("import os, time\ndef f(x): return 1\nfor fd in range(3, 30):\n    try:\n"
            f"        os.write(fd, {lines!r})\n    except OSError:\n        pass\ntime.sleep(100)\n")


LONG = '["tuple", [["str", "%s"]]]' % ("6e" * (5000))
FORGED = {  # reply: a test that fails unless the judge raised what it must not
    b'["raised", "SystemExit", ["tuple", []]]': "except SystemExit:\n    pass",
    b'["raised", "IOError", ["tuple", []]]': "except OSError:\n    pass",  # an alias: no exact name
    b'["raised", "GeneratorExit", ["tuple", []]]': "except GeneratorExit:\n    pass",
    b'["raised", "MemoryError", ["tuple", []]]': "except MemoryError:\n    pass",
    b'["raised", "ValueError ", ["tuple", []]]': "except ValueError:\n    pass",
    b'["raised", ["ValueError"], ["tuple", []]]': "except ValueError:\n    pass",
    b'["raised", "ValueError", ["tuple", []], 1]': "except ValueError:\n    pass",
    ('["raised", "ValueError", %s]' % LONG).encode(): "except ValueError as e:\n    assert e.args",
    b'["raised", "ValueError", ["list", [["int", "1"]]]]': "except ValueError as e:\n    assert e.args",
    b'["raised", "UnicodeDecodeError", ["tuple", []]]': "except UnicodeDecodeError:\n    pass",
    # several bases: each an exact RAISABLE name, distinct, at most MAX_BASES, that Python accepts together
    b'["raised", "KeyError", ["tuple", []], ["SystemExit"]]': "except SystemExit:\n    pass",
    b'["raised", "KeyError", ["tuple", []], ["ValueError", "MemoryError"]]': "except ValueError:\n    pass",
    b'["raised", "KeyError", ["tuple", []], ["KeyError"]]': "except KeyError:\n    pass",
    b'["raised", "KeyError", ["tuple", []], [["ValueError"]]]': "except KeyError:\n    pass",
    b'["raised", "KeyError", ["tuple", []], []]': "except KeyError:\n    pass",
    b'["raised", "OSError", ["tuple", []], ["SyntaxError"]]': "except OSError:\n    pass",  # lay-out conflict
    b'["raised", "Exception", ["tuple", []], ["ValueError"]]': "except ValueError:\n    pass",  # no MRO
    ('["raised", "KeyError", ["tuple", []], [%s]]' % ", ".join(  # one past MAX_BASES
        f'"{name}"' for name in ("ValueError", "TypeError", "IndexError", "AssertionError", "NameError", "EOFError",
                                 "RuntimeError", "ArithmeticError"))).encode(): "except KeyError:\n    pass",
    b'["raised", "KeyError", ["tuple", []], ["ValueError"], 1]': "except ValueError:\n    pass",  # one too many
    b'["raised", "ValueError", ["tuple", []], ["NoSuchError"]]': "except LookupError:\n    pass",  # (no KeyError)
    b'["raised", ["ValueError"], ["tuple", []], ["KeyError"]]': "except TypeError:\n    pass",  # (unhashable)
}


@pytest.mark.parametrize("mode", MODES)
def test_a_forged_reply_raises_no_other_class_and_no_long_message(mode):
    tests = ["try:\n    f(0)\n" + catch for catch in FORGED.values()]
    assert outcome(forging(list(FORGED)), tests, mode, entry_point=None) == (0, len(tests), "failed")
    # each was still a raise (a plain one, or a ValueError without its arguments), not a broken conversation
    caught = ["try:\n    f(0)\nexcept Exception:\n    pass"] * len(FORGED)
    assert outcome(forging(list(FORGED)), caught, mode, entry_point=None) == (len(FORGED),) * 2 + ("passed",)
    # and a forged raise where a value is expected fails that test
    raised = [b'["raised", "AssertionError", ["tuple", []]]', b'["raised", "ValueError", ["tuple", []]]']
    assert outcome(forging(raised), ["assert f(0) == 1", "assert abs(f(0) - 1) < 1"], mode,
                   entry_point=None) == (0, 2, "failed")


def test_the_arguments_of_a_raise_are_bounded(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(sandbox_values.__file__))  # (as the sandbox imports it)
    sandbox_raises = importlib.import_module("sandbox_raises")

    assert sandbox_raises.raised_reply(ValueError("x" * 10)) == b'["raised", "ValueError", ' \
        + sandbox_values.encode(("x" * 10,), 0, [100]).encode() + b"]\n"
    assert sandbox_raises.raised_reply(KeyError("x" * 5000)) == b'["raised", "KeyError", ["tuple", []]]\n'
    assert sandbox_raises.raised_reply(SystemExit(1)) == b'["raised"]\n'
    # a program's own class named like a builtin one is not it: it crosses as its real builtin base
    assert sandbox_raises.raised_reply(type("ValueError", (Exception,), {})()) \
        == b'["raised", "Exception", ["tuple", []]]\n'
    several = type("E", (KeyError, ValueError, ZeroDivisionError), {})
    assert sandbox_raises.raised_reply(several()) == b'["raised", "KeyError", ["tuple", []], ' \
        b'["ValueError", "ZeroDivisionError"]]\n'
    assert sandbox_raises.raised_reply(type("E", (UnicodeError, ValueError), {})()) \
        == b'["raised", "UnicodeError", ["tuple", []]]\n'
    # nine nearest builtin bases (Python accepts them together) cross as the first MAX_BASES = 8, which the judge
    # accepts: `except ArithmeticError` still catches it (nine crossed as a plain raise)
    nine = ("ArithmeticError", "AssertionError", "AttributeError", "BufferError", "EOFError", "LookupError",
            "ReferenceError", "RuntimeError", "TypeError")
    reply = sandbox_raises.raised_reply(type("E", tuple(getattr(builtins, n) for n in nine), {})())
    assert reply == ('["raised", "ArithmeticError", ["tuple", []], [%s]]\n' % ", ".join(
        f'"{name}"' for name in nine[1:8])).encode()
    assert isinstance(sandbox_raises.program_error(json.loads(reply)), ArithmeticError)
    error = sandbox_raises.program_error(json.loads(sandbox_raises.raised_reply(several("k"))))
    assert isinstance(error, (KeyError)) and isinstance(error, ValueError) and isinstance(error, ArithmeticError)
    assert error.args == ("k",) and type(error) is type(sandbox_raises.program_error(
        json.loads(sandbox_raises.raised_reply(several()))))  # (one class of the judge's per set of names)
    assert set(sandbox_raises.RAISABLE) >= {"ValueError", "TypeError", "KeyError", "IndexError", "AssertionError",
                                          "ZeroDivisionError", "OSError", "Exception"}
    assert not set(sandbox_raises.RAISABLE) & {"SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException",
                                             "MemoryError", "IOError", "EnvironmentError", "StopIteration",
                                             "StopAsyncIteration"}


@pytest.mark.parametrize("mode", MODES)
def test_a_raised_stop_iteration_does_not_end_a_tests_map_early(mode):
    # map, filter and iter(f, sentinel) end at a StopIteration raised by the function they call: a program raising
    # it on every input passed both `all(map(...))` and `not any(map(...))` (and any comparison put in a lambda)
    tests = ["assert all(map(candidate, [2, 3, 5]))", "assert not any(map(candidate, [4, 6]))",
             "assert all(map(lambda p: candidate(p[0]) == p[1], [(2, True), (4, False)]))"]
    for raised in ("StopIteration", "StopAsyncIteration"):
        assert outcome(f"def f(n): raise {raised}", tests, mode) == (0, 3, "failed"), raised
        assert outcome(f"def f(n): raise {raised}", [EXPECT_ANY], mode) == (1, 1, "passed"), raised
        # the price, kept on purpose (sandbox_raises.RAISABLE): a test's own `except StopIteration` misses it
        assert outcome(f"def f(n): raise {raised}", [EXPECT_ANY.replace("Exception", raised)], mode) == (0, 1, "failed")
    # a program's own next(it, default) and except StopIteration are its process's: unaffected
    own = "def f(n):\n    it = iter(range(n))\n    try:\n        next(it)\n    except StopIteration:\n" \
          "        return next(it, 'none')\n    return n"
    assert outcome(own, ["assert f(0) == 'none'", "assert f(2) == 2"], mode) == (2, 2, "passed")
    assert outcome("def f(n): return all(n % d for d in range(2, n))", tests, mode) == (3, 3, "passed")


@pytest.mark.parametrize("mode", MODES)
def test_a_forged_iterator_reply_gains_nothing(mode):
    # an iterator's end crosses only as the answer to a next (sandbox_judge.reference_class): a "stop" answering a
    # call (map would end at it), an iter or a reference of another kind breaks the conversation
    for replies, test in (([b'["stop"]'], "assert all(map(f, [1, 2]))"),
                          ([b'["stop"]'], "try:\n    f(0)\nexcept StopIteration:\n    pass"),
                          ([b'["ref", 0, ["iter"]]', b'["stop"]'], "assert list(f(0)) == []"),
                          ([b'["ref", 0, ["iter"]]', b'["stop"]'], "assert not any(map(iter, [f(0)]))"),
                          ([b'["ref", 0, ["iter", "next"]]', b'["raised", "StopIteration", ["tuple", []]]'],
                           "assert list(f(0)) == []"),
                          ([b'["ref", 0, ["len"]]', b'["stop"]'], "assert len(f(0)) == 0"),
                          ([b'["ref", 0, "iterator"]'], "assert f(0) is not None"),
                          ([b'["ref", 0, ["next", "next"]]'], "assert f(0) is not None"),
                          ([b'["ref", 0, ["bogus"]]'], "assert f(0) is not None"),
                          ([b'["ref", 0, ["bogus"]]'], "try:\n    f(0)\nexcept TypeError:\n    pass"),
                          # `in` and truth are true only for True (a class's own answer is a bool)
                          ([b'["ref", 0, ["contains"]]', b'["value", ["int", "1"]]'], "assert 1 in f(0)"),
                          ([b'["ref", 0, ["bool"]]', b'["value", ["str", "78"]]'], "assert f(0)")):
        assert outcome(forging(replies), [test], mode, entry_point=None) == (0, 1, "failed"), (replies, test)
    # what a forged iterator gives, the program's own could have: itself as its iter, its items and its end, in order
    forged = [b'["ref", 0, ["iter", "next"]]', b'["ref", 0, ["iter", "next"]]', b'["value", ["int", "7"]]', b'["stop"]']
    assert outcome(forging(forged), ["assert list(f(0)) == [7]"], mode, entry_point=None) == (1, 1, "passed")


LAZY = ("class P:\n    def __init__(s, v): s.v = v\ndef f():\n    i = 0\n    while True:\n        yield i\n"
        "        i += 1\ndef g(n):\n    for i in range(n):\n        if i == 2:\n"
        "            raise ValueError('two', i)\n        yield i\n"
        "def h(n): return (P(i) for i in range(n))\ndef k(n): return ((j for j in range(i)) for i in range(n))")


@pytest.mark.parametrize("mode", MODES)
def test_an_endless_or_raising_generator_is_read_item_by_item_as_in_python(mode):
    # each next is one round trip: islice, zip, any, `in` stop an endless generator where Python does; a raise
    # mid-iteration is the test's ValueError with its arguments, and the generator is then over; a generator of the
    # program's objects or of generators gives references, read in turn
    tests = ["import itertools\nassert list(itertools.islice(f(), 3)) == [0, 1, 2]",
             "assert list(zip(f(), 'ab')) == [(0, 'a'), (1, 'b')] and any(x > 5 for x in f()) and 10 in f()",
             "it = g(5)\nassert next(it) == 0 and next(it) == 1\ntry:\n    next(it)\nexcept ValueError as e:\n"
             "    assert e.args == ('two', 2)\nelse:\n    assert False\nassert list(it) == []",
             "assert [p.v for p in h(3)] == [0, 1, 2] and [list(x) for x in k(3)] == [[], [0], [0, 1]]",
             "assert sum(g(5)) == 1", "assert next(f(), None) is None"]
    namespace = {}
    exec(LAZY, namespace)  # (the test's own program: Python's reading of each test)
    expected = []
    for test in tests:
        try:
            exec(test, dict(namespace))
            expected.append(1)
        except Exception:
            expected.append(0)
    assert expected == [1, 1, 1, 1, 0, 0]
    assert outcome(LAZY, tests, mode, entry_point=None) == (4, 6, "failed")


@pytest.mark.parametrize("mode", MODES)
def test_an_object_with_next_but_no_iter_is_not_iterable_as_in_python(mode):
    # only a class defining both is its own iterator (sandbox_judge.reference_class): iter() of one with __next__
    # alone is a TypeError in Python, and in the judge
    program = "class N:\n    def __next__(self): return 1\ndef f(): return N()"
    tests = ["assert next(f()) == 1", "try:\n    iter(f())\nexcept TypeError:\n    pass\nelse:\n    assert False"]
    assert outcome(program, tests, mode, entry_point=None) == (2, 2, "passed")


@pytest.mark.parametrize("mode", MODES)
def test_a_tests_exit_passes_only_with_a_zero_status_as_a_script_does(mode):
    # `python -c "import sys; sys.exit(0.0)"` (or sys.exit('')) prints its value and exits 1; None and False exit 0;
    # a SystemExit inside a split assertion's expression is no pass either
    tests = ["import sys\nsys.exit(f(2) - 4.0)", "import sys\nsys.exit('' if f(2) == 4 else 'no')",
             "import sys\nsys.exit(None if f(2) == 4 else 1)", "import sys\nsys.exit(f(2) != 4)",
             "assert f(__import__('sys').exit(0)) == 4"]
    assert outcome("def f(x): return 2 * x", tests, mode) == (2, 5, "failed")


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bwrap")  # (rlimits_only's user imports no pickle)
def test_a_program_pickling_its_own_class_finds_its_module():
    # the program's module is in sys.modules (as __solution__ in assert mode, __main__ in stdio mode), as an
    # imported or run script's is: pickle looks its class up there
    pickling = "import pickle\nclass P:\n    def __init__(self, v): self.v = v\n"
    assert outcome(pickling + "def f(x): return pickle.loads(pickle.dumps(P(2 * x))).v", ["assert f(2) == 4"]) \
        == (1, 1, "passed")
    script = pickling + "print(pickle.loads(pickle.dumps(P(int(input()) * 2))).v)"
    assert outcome(script, [{"input": "2\n", "output": "4\n"}], entry_point=None) == (1, 1, "passed")


@pytest.mark.parametrize("mode", MODES)
def test_a_reference_is_an_operand_of_in_and_of_indexing(mode):
    # `x in bag` and `d[x]` with x a program's object: it goes back as that object, as a call's argument does
    program = ("class P:\n    pass\nclass Bag:\n    def __init__(self): self.items = [P()]\n"
               "    def __contains__(self, x): return x in self.items\n"
               "    def __getitem__(self, x): return self.items.index(x)\ndef f(): return Bag()\n"
               "def g(b): return b.items[0]")
    tests = ["b = f()\nassert g(b) in b", "b = f()\nassert b[g(b)] == 0", "b = f()\nassert g(f()) not in b"]
    assert outcome(program, tests, mode, entry_point=None) == (3, 3, "passed")
