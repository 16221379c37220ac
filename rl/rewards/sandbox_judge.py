"""The judge of the sandbox's assert mode (copied in beside sandbox_runner.py, which forks the program's
process and then calls `judge_tests`; never imported by the trainer): the tests run here, in a namespace of
this process's own, against stubs of the program's functions and classes whose calls go through a pipe to the
program's process (sandbox_runner.serve) and come back as values of builtin types (sandbox_values) or as
references to the program's objects (a raise, as an exception of its nearest builtin classes:
sandbox_raises). Everything read from the program's process is parsed strictly; this
process runs no program code. sandbox_runner's docstring says the whole design.
"""

import builtins
import json
import operator
import os
import signal
import sys
import types

import sandbox_values as values  # (sandbox_runner put its directory on the path for this import)
from sandbox_raises import ProgramRaised, program_error  # (likewise)

_BUILTIN_NAMES = frozenset(dir(builtins))  # never a program's name in the tests: its `abs` would judge them
_UNIMPORTED = frozenset({"antigravity", "this"})  # standard modules whose import does something
MAX_REPLY_CHARS = values.MAX_VALUE_CHARS + 64  # a reply line of the program's process, its frame included


def judge_tests(pid: int, requests_fd: int, replies_fd: int, judge_fd: int, verdict_fd: int) -> None:
    """Read the nonce and the tests (`judge_fd`: read only now, after the program's process `pid` was forked and
    closed it), run them against the program through the pipes, write the verdict line (to `verdict_fd`), end the
    program's process and exit."""
    with os.fdopen(judge_fd, "rb") as given:  # read only now: the program's process never held them
        nonce = given.readline().decode().strip()
        tests, entry_point = json.loads(given.readline())
    channel = Channel(pid, requests_fd, replies_fd)
    namespace = channel.program_names()
    results = [0 if test[:4] == "exec" else '"raised"' for test in tests]  # also without the entry point
    if namespace is not None and (not entry_point or isinstance(namespace.get(entry_point), Stub)):
        if entry_point:
            namespace["candidate"] = namespace[entry_point]  # HumanEval's check(candidate) convention
        for index, test in enumerate(tests):
            channel.unsent = ""
            results[index] = run_test(test, index, namespace)
            if channel.unsent:  # (a test's `except Exception` caught it: what Python had was never here)
                results[index] = 0 if test[:4] == "exec" else f'"{channel.unsent}"'
    line = "\n" + nonce + " [" + ", ".join([r if type(r) is str else "1" if r else "0" for r in results]) + "]\n"
    write_all(verdict_fd, line.encode("ascii"))  # (not stdout, which bwrap's pid 1 holds: sandbox.run_python)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    os._exit(0)


class LineReader:
    """Lines of a pipe, each at most MAX_REPLY_CHARS long (None at the end, and for a longer one: `too_long`)."""

    def __init__(self, fd: int):
        self.fd, self.buffer, self.too_long = fd, b"", False

    def next(self):
        while b"\n" not in self.buffer:
            self.too_long = len(self.buffer) > MAX_REPLY_CHARS
            chunk = b"" if self.too_long else os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


class Unsent(Exception):
    """The program's value, or its change to an argument, did not come back: "too_large" (its encoding past
    MAX_VALUE_CHARS) or "unencodable"; the test fails even where it catches this (Channel.unsent)."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


class Stub:
    """A function or class of the program, in the judge's namespace: a call runs in the program's process."""

    __slots__ = ("_channel", "_name")

    def __init__(self, channel, name: str):
        self._channel, self._name = channel, name

    def __call__(self, *args, **kwargs):
        return self._channel.call("call", self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<the program's {self._name}>"


class Reference:
    """An object of the program that is no builtin value: its attributes and calls go back to the program; it
    equals only itself and has no other operation but those its class defines of OPERATIONS (`reference_class`)."""

    __slots__ = ("_channel", "_handle")

    def __init__(self, channel, handle: int):
        self._channel, self._handle = channel, handle

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._channel.call("getattr", self._handle, name, None)

    def __call__(self, *args, **kwargs):
        return self._channel.call("callref", self._handle, args, kwargs)

    def __repr__(self) -> str:
        return "<an object of the program>"


# The operations a reference has, each where the program's class defines one of the special methods that give it
# in Python (marked at crossing: `operations`; the judge's class for them: `reference_class`): an operation's
# name -> those methods, and what the program's process answers with (Python's own, on its object). No other
# (`==`: a reference equals only itself; `bool` of one with neither __bool__ nor __len__ is true, as in Python).
OPERATIONS = {"iter": (("__iter__", "__getitem__"), iter), "next": (("__next__",), lambda o: next(o, STOP)),
              "len": (("__len__",), len), "bool": (("__bool__", "__len__"), bool),
              "getitem": (("__getitem__",), operator.getitem), "reversed": (("__reversed__",), reversed),
              "contains": (("__contains__", "__iter__", "__getitem__"), operator.contains),
              "str": (("__str__",), str), "repr": (("__repr__",), repr)}  # (every class's: object's at least)
STOP = object()  # (the program's process: what its next() gave at an iterator's end)
_CLASSES = {}  # frozenset of OPERATIONS names -> the judge's Reference subclass with their special methods


def operations(value) -> str:
    """The program's process's mark in the reply `["ref", HANDLE, [NAME, ...]]` for a value that is no builtin
    value: `, [NAME, ...]`, the OPERATIONS its class defines (as Python looks them up: the class's MRO, not
    the instance), or none."""
    try:
        defined = set().union(*(vars(kind) for kind in type(value).__mro__))
        names = [name for name, (given, _) in OPERATIONS.items() if not defined.isdisjoint(given)]
        return ", [" + ", ".join('"' + name + '"' for name in names) + "]" if names else ""
    except BaseException:  # (a class whose MRO or dicts raise: a plain reference)
        return ""


def reference_class(names) -> type:
    """The judge's class of a reference to a program's object whose class defines the OPERATIONS `names` (a
    reply's list; None: a plain Reference): each special method asks the program's process, whose answer
    crosses as any value does (`bool` and `in`: true only for True; `str`, `repr`: a str). An iterator's end
    (`["stop"]`, read only as the answer to a next) is StopIteration here, so `list(f(3))`, `next(f(3), 9)`, `sum`,
    `for`, `len`, `x[1:3]` read it as in the program's interpreter; a forged answer is one the program's own class
    could have given. An iterator's iter asks too (its class's __iter__ may give another object: taken as itself,
    `list(it)` read its __next__ where Python read that one's); one object is one reference (`Channel.references`),
    so `iter(it) is it` where the program's gives itself. None where `names` is not a list of distinct OPERATIONS
    names."""
    if names is None:
        return Reference
    if not (type(names) is list and all(type(n) is str and n in OPERATIONS for n in names)
            and len(set(names)) == len(names)):
        return None
    key = frozenset(names)
    if key not in _CLASSES:
        methods = {"__slots__": ()}
        for name in key:
            methods["__" + name + "__"] = _asking(name)
        _CLASSES[key] = type("Reference", (Reference,), methods)
    return _CLASSES[key]


def _asking(name: str):
    def ask(self, *args):
        answer = self._channel.call(name, self._handle, args, {})
        return answer is True if name in ("bool", "contains") else answer

    return ask


_NESTING = (list, dict, set, tuple)  # (their subclasses too: a test's defaultdict crosses as a dict)
_ATOMS = frozenset((int, float, str, bool, type(None), bytes, complex))  # (skipped at once)


def _held_elsewhere(value, alone: int) -> bool:
    """Whether a list, dict or set nested in `value` is held elsewhere too (by a test's variable, another argument,
    twice in it: its count of references past `alone`): the program's process changed copies of each, so writing
    its change into `value` would leave those as they were, where Python changes them too."""
    for item in value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ():
        if type(item) not in _ATOMS and isinstance(item, _NESTING) and (
                not isinstance(item, tuple) and sys.getrefcount(item) > alone or _held_elsewhere(item, alone)):
            return True
    return False


def _write_into(target, new, check_only: bool = False) -> None:
    """Write the program's change `new` into the test's list, dict or set `target` (into a tuple's ones: its other
    items cannot change); TypeError for a change of another type or length (a forged one)."""
    if isinstance(target, tuple) and type(new) is tuple and len(new) == len(target):
        for old_item, new_item in zip(target, new):
            if isinstance(old_item, _NESTING):
                _write_into(old_item, new_item, check_only)
    elif not (isinstance(target, list) and type(new) is list or isinstance(target, (dict, set))
              and type(new) is (dict if isinstance(target, dict) else set)):
        raise TypeError("not a change of a list, dict or set to its own type")
    elif not check_only and isinstance(target, list):
        target[:] = new
    elif not check_only:
        target.clear()
        target.update(new)


def _alone() -> int:
    """_held_elsewhere's count of references to an item held by its container alone (CPython's count varies)."""
    return min(count for count in range(1, 16) if not _held_elsewhere([[]], count))


def containers(value, found: set | None = None) -> set:
    """The ids of the lists, dicts and sets `value` is or holds."""
    found = set() if found is None else found
    if isinstance(value, (list, dict, set)):
        found.add(id(value))
    for item in value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ():
        if type(item) not in _ATOMS and isinstance(item, _NESTING):
            containers(item, found)
    return found


class Channel:
    """The judge's end of the pipes to the program's process. What comes back is parsed strictly (JSON of
    encoded builtin values; anything else ends the conversation: every later call raises)."""

    def __init__(self, pid: int, requests_fd: int, replies_fd: int):
        self.pid, self.requests_fd, self.replies, self.over = pid, requests_fd, LineReader(replies_fd), False
        self.references = {}  # handle -> its reference (the program's process gives one object one handle)
        self.unsent = ""  # the kind of the current test's last Unsent: it fails the test even when the test caught it

    def program_names(self) -> dict | None:
        """The judge's namespace: the program's functions and classes as stubs, its values of builtin types,
        the standard modules it imported; None when the program raised while it was defined."""
        reply = self._reply(ended_early=True)
        if reply == ["failed"]:
            return None
        if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == "ready" and isinstance(reply[1], list)):
            self._end(True, broken=True)
        # A test is a script: its main guard runs, and it is sys.modules' `__main__` (as a script's module is), so
        # pickle, typing.get_type_hints and unittest.main find its classes (they found the runner's module: every
        # program failed a test pickling its own class or ending `if __name__ == '__main__': unittest.main()`).
        main = sys.modules["__main__"] = types.ModuleType("__main__")
        namespace = vars(main)
        namespace["__builtins__"] = builtins
        for entry in reply[1]:
            if not (isinstance(entry, list) and len(entry) in (2, 3) and isinstance(entry[1], str)
                    and entry[1].isidentifier()) or entry[1] in _BUILTIN_NAMES or entry[1].startswith("__"):
                continue  # (a dunder name is never the program's: serve sends none, a forged line's `__builtins__`
                # made the tests' builtin names the program's values)
            kind, name = entry[0], entry[1]
            try:
                if kind == "call" and len(entry) == 2:
                    namespace[name] = Stub(self, name)
                elif kind == "value" and len(entry) == 3:
                    namespace[name] = values.decode(entry[2])
                elif kind == "module" and len(entry) == 3 and entry[2] == name and name in sys.stdlib_module_names \
                        and name not in _UNIMPORTED:  # `import math` (the judge's own math), no alias
                    namespace[name] = __import__(name)
            except (ValueError, TypeError, RecursionError, ImportError):
                continue
        return namespace

    def call(self, kind: str, target, args, kwargs):
        if self.over:
            raise ProgramRaised("the program's process has ended")
        if kind == "getattr":
            sent = json.dumps(args)
        else:
            sent = "[" + ", ".join(self._argument(a) for a in args) + "], {" + ", ".join(
                json.dumps(k) + ": " + self._argument(v) for k, v in kwargs.items()) + "}"
        message = "[" + json.dumps(kind) + ", " + json.dumps(target) + ", " + sent + ("" if kind != "getattr"
                                                                                    else ", null") + "]\n"
        try:
            write_all(self.requests_fd, message.encode("ascii"))
        except OSError:  # it has ended
            self._end(False)
        reply = self._reply(ended_early=False)
        if isinstance(reply, list) and reply[:1] == ["changed"] and kind != "getattr":
            unsent = self._changed(reply, args, kwargs)
            reply = self._reply(ended_early=False)
            if unsent:
                self.unsent = unsent
                raise Unsent(unsent)
        if isinstance(reply, list) and reply[:1] == ["raised"]:
            raise program_error(reply)
        if reply == ["stop"] and kind == "next":  # (to any other request: broken; a call's crosses as Exception)
            raise StopIteration
        if reply == ["too_large"]:
            self.unsent = "too_large"
            raise Unsent("too_large")
        if isinstance(reply, list) and len(reply) == 2 and reply[0] == "value":
            try:
                return values.decode(reply[1])
            except (ValueError, TypeError, RecursionError):
                self._end(False, broken=True)
        if isinstance(reply, list) and len(reply) in (2, 3) and reply[0] == "ref" and type(reply[1]) is int \
                and reference_class(reply[2] if len(reply) == 3 else None) is not None:
            if reply[1] not in self.references:  # (the same object again: the same reference, as `is` expects)
                self.references[reply[1]] = reference_class(reply[2] if len(reply) == 3 else None)(self, reply[1])
            return self.references[reply[1]]
        self._end(False, broken=True)

    def _changed(self, reply: list, args, kwargs: dict) -> str:
        """Write the program's changes to this call's arguments (sandbox_runner.changed) into the test's own (a
        list sorted in place by the program is sorted here too, as in Python); the Unsent kind of one that could
        not come back, else "". A line naming no argument of the call's, or a change of another type, breaks the
        conversation: any other the program's function could have made itself."""
        unsent = ""
        entries = reply[1] if len(reply) == 2 and type(reply[1]) is list else None
        for entry in entries if entries is not None else [None]:
            try:
                position, node = entry
                target = args[position] if type(position) is int and position >= 0 else kwargs[position]
                if node in ("too_large", "unencodable"):
                    unsent = node
                    continue
                new = values.decode(node)
                _write_into(target, new, check_only=True)
                others = [v for p, v in (*enumerate(args), *kwargs.items()) if p != position]
                if _held_elsewhere(target, _alone()) or any(id(target) in containers(v) for v in others):
                    unsent = "unencodable"  # (the program changed copies, which Python would have shared)
                else:
                    _write_into(target, new)
            except (ValueError, TypeError, KeyError, IndexError, RecursionError):
                self._end(False, broken=True)
        return unsent

    def _argument(self, value) -> str:
        if isinstance(value, Reference) and value._channel is self:
            return f'["ref", {value._handle}]'
        return values.encode(value, 0, [values.MAX_VALUE_CHARS])  # TypeError, ValueTooLarge: this test fails

    def _reply(self, ended_early: bool):
        line = self.replies.next()
        if line is None:
            self._end(ended_early, broken=self.replies.too_long)
        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            self._end(ended_early, broken=True)

    def _end(self, early: bool, broken: bool = False):
        """The program's process ended, or broke the conversation (`broken`: it is killed). Ended by a signal
        (its CPU limit) or out of memory, the judge ends the same way; ended before its tests ran, the judge
        ends with its exit code (1 for 0: it ended before its tests); during them, this and every later call
        raises."""
        self.over = True
        if broken:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
        _, status = os.waitpid(self.pid, 0)
        if not broken and os.WIFSIGNALED(status):
            try:
                signal.signal(os.WTERMSIG(status), signal.SIG_DFL)  # (SIGKILL's cannot be set: it is)
            except (OSError, ValueError):
                pass
            os.kill(os.getpid(), os.WTERMSIG(status))
        if not broken and os.WIFEXITED(status) and os.WEXITSTATUS(status) == values.MEMORY_EXIT:
            os._exit(values.MEMORY_EXIT)
        if early:
            os._exit((os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0) or 1)
        raise ProgramRaised("the program's process has ended")


def run_test(test: str, index: int, namespace: dict):
    """1 or 0 for an `exec` test; the encoded value (a JSON string), "unencodable", "too_large" or "raised" for
    `eval`."""
    kind, source = test[:4], test[5:]
    try:
        if kind == "exec":
            exec(compile(source, f"test_{index}", "exec"), namespace)
            return 1
        value = eval(compile(source, f"test_{index}", "eval"), namespace)
    except MemoryError:
        os._exit(values.MEMORY_EXIT)
    except Unsent as err:
        return 0 if kind == "exec" else f'"{err.kind}"'
    except SystemExit as err:  # the test's own (the program's raise is a ProgramRaised): a script's end, as
        # unittest.main()'s, passes with code 0 (None, False) and fails with any other
        if kind != "exec":
            return '"raised"'
        return int(err.code is None or type(err.code) in (int, bool) and err.code == 0)
    except BaseException:  # a failed assertion, an exception: this test fails
        return 0 if kind == "exec" else '"raised"'
    try:
        return '["value", ' + values.encode(value, 0, [values.MAX_VALUE_CHARS]) + "]"
    except MemoryError:
        os._exit(values.MEMORY_EXIT)
    except values.ValueTooLarge:
        return '"too_large"'
    except BaseException:
        return '"unencodable"'


def write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
