"""Runs INSIDE the sandbox (copied in as a file, never imported by the trainer): set the limits, drop root,
load the seccomp filter, then compile and run the untrusted program.

    python -I -B runner.py LIMITS_JSON MODE UID SECCOMP_FD

LIMITS_JSON: {"cpu_s", "memory_mb", "processes", "file_mb", "open_files"} applied with setrlimit before
anything untrusted runs (after bwrap created the namespaces, so the process count is counted inside them).
UID >= 0 (the trainer runs as root): drop to that user id, so that the kernel enforces RLIMIT_NPROC (root
is exempt from it). SECCOMP_FD >= 0 (`rlimits_only`): a descriptor holding the seccomp filter
(rl.rewards.seccomp), loaded before the program runs (-1: none; bwrap loads it itself).

MODE `stdio`: run program.py as __main__ on this process's stdin.

MODE `assert`: two processes. This one, the judge, forks the program's process first, then reads the nonce
and the tests from stdin (a pipe: never in the program's memory or files), and runs each test in a namespace
of its own, where the program's functions and classes are stubs: a call sends its arguments (values of builtin
types, or references to the program's objects) to the program's process, which defines the program as module
`__solution__` (a main guard does not run) and calls the real function; the value comes back encoded
(sandbox_values) and is rebuilt here of builtin types, so an object whose `__eq__` is always true arrives as
a reference, equal to nothing but itself. An object that is no builtin value (an instance of the program's
class) arrives as a reference whose attributes and calls go back to the program; it has no other operation.
No program code runs in this process, which is not dumpable (its memory and descriptors out of the program's
reach), so the frames, the garbage collector, the nonce and the verdict are out of its reach too. The verdict,
`NONCE [result, ...]` on this process's stdout (the program's is /dev/null), has one result per test:
- `eval EXPR` (an `assert EXPR == LITERAL` the trainer split; the LITERAL never comes here): the value of
  EXPR as `["value", ENCODED]`, or "unencodable", "too_large" (longer than MAX_VALUE_CHARS) or "raised" (the
  trainer compares the value; any but a value fails);
- `exec STATEMENTS` (any other assertion): 1 when it raises nothing, else 0.
A test's arguments do not come back: a function that changes a list in place changes the program's copy.
Exit codes other than the program's own: SYNTAX_EXIT (the program does not compile), MEMORY_EXIT, SECCOMP_EXIT
(the filter could not be loaded: the program never ran); the program's process ended by a signal (its CPU
limit) ends the judge by the same one.
"""

import json
import os
import resource
import signal
import sys
import traceback
import types

SYNTAX_EXIT, MEMORY_EXIT, SECCOMP_EXIT = 65, 66, 67
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, SECCOMP_MODE_FILTER = 1, 22, 38, 2
PR_SET_DUMPABLE = 4
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # (-I left the script's directory out)
import sandbox_values as values  # noqa: E402  (copied in beside this file)
del sys.path[0]  # a test's `import math` must not find a math.py the program wrote there (rlimits_only)
_BUILTIN_NAMES = frozenset(dir(__builtins__))  # never a program's name in the tests: its `abs` would judge them
_UNIMPORTED = frozenset({"antigravity", "this"})  # standard modules whose import does something

MAX_REPLY_CHARS = values.MAX_VALUE_CHARS + 64  # a reply line of the program's process, its frame included


def limit(limits: dict) -> None:
    mb = 1024 * 1024
    cpu = limits["cpu_s"]
    for kind, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1),
                             (resource.RLIMIT_AS, limits["memory_mb"] * mb, limits["memory_mb"] * mb),
                             (resource.RLIMIT_NPROC, limits["processes"], limits["processes"]),
                             (resource.RLIMIT_FSIZE, limits["file_mb"] * mb, limits["file_mb"] * mb),
                             (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
                             (resource.RLIMIT_CORE, 0, 0)):
        resource.setrlimit(kind, (soft, hard))


# Standard modules a program commonly imports, imported before the user id drops: an interpreter installed
# under /root (0700) imports nothing more once it runs as the sandbox's user (rlimits_only as root: a correct
# program importing heapq or fractions scored 0).
PRELOADED = ("array", "bisect", "cmath", "collections", "copy", "dataclasses", "datetime", "decimal", "enum",
             "fractions", "functools", "heapq", "itertools", "math", "numbers", "operator", "queue", "random", "re",
             "statistics", "string", "textwrap", "typing", "unicodedata")


def drop_root(uid: int) -> None:
    if uid >= 0:
        for name in PRELOADED:
            try:
                __import__(name)
            except ImportError:
                pass
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def libc_prctl():
    """libc's prctl, loaded while the runner may still read the whole Python install (as root, before the
    user id drops); None where there is none."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None


def die_with_parent(prctl, parent: int) -> None:
    """SIGKILL this process when its parent, the scoring worker, dies (Linux's PR_SET_PDEATHSIG): a worker the
    reward pool kills mid-run then leaves no program running. bwrap's --die-with-parent does it for the sandbox;
    this is for `rlimits_only`. Set after dropping root (a change of user id clears it)."""
    if prctl is None:  # not Linux: the process group kill at the deadline remains
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the setting took: nobody waits for this run
        os._exit(1)


def load_seccomp(prctl, fd: int) -> None:
    """Read the filter (struct sock_filter rows) from `fd` to its end, then install it for this process and its
    children: PR_SET_NO_NEW_PRIVS (an unprivileged process may then load one), PR_SET_SECCOMP. No filter given
    (fd -1): nothing. One that cannot be loaded: SECCOMP_EXIT, the program never runs."""
    if fd < 0:
        return
    program = b""
    while chunk := os.read(fd, 4096):
        program += chunk
    os.close(fd)
    try:
        import ctypes  # (imported already by libc_prctl, while the whole Python install was readable)

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

        if prctl is None or not program or len(program) % 8:
            raise OSError(0, "no prctl, or not a filter")
        ulong = ctypes.c_ulong  # prctl is variadic: its arguments are passed as the kernel reads them
        fprog = SockFprog(len(program) // 8, program)
        if prctl(PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
        if prctl(PR_SET_SECCOMP, ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), ulong(0), ulong(0)) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")
    except (ImportError, OSError) as err:
        sys.stderr.write(f"r1jax sandbox: cannot load the seccomp filter: {err}\n")
        sys.stderr.flush()
        os._exit(SECCOMP_EXIT)


def main() -> None:
    parent, prctl = os.getppid(), libc_prctl()
    limits, mode, uid, seccomp_fd = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    limit(limits)
    drop_root(uid)
    die_with_parent(prctl, parent)
    load_seccomp(prctl, seccomp_fd)
    with open(os.path.join(HERE, "program.py"), encoding="utf-8") as handle:
        source = handle.read()
    try:
        code = compile(source, "program.py", "exec")
    except MemoryError:
        os._exit(MEMORY_EXIT)
    except (SyntaxError, ValueError, RecursionError, OverflowError):
        os._exit(SYNTAX_EXIT)
    del sys.argv[1:]
    if mode == "stdio":
        run(code, "__main__")
        sys.stdout.flush()
        return
    judge(code, prctl)


def judge(code, prctl) -> None:
    """The assert mode (module docstring): fork the program's process, then judge the tests here."""
    if prctl is not None:
        import ctypes

        prctl(PR_SET_DUMPABLE, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    here = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(requests_w)
        os.close(replies_r)
        die_with_parent(prctl, here)
        serve(code, requests_r, replies_w)
    os.close(requests_r)
    os.close(replies_w)
    nonce = sys.stdin.readline().strip()  # read only now: the program's process never held them
    tests, entry_point = json.loads(sys.stdin.readline())
    channel = Channel(pid, requests_w, replies_r)
    namespace = channel.program_names()
    results = [0 if test[:4] == "exec" else '"raised"' for test in tests]  # also without the entry point
    if namespace is not None and (not entry_point or isinstance(namespace.get(entry_point), Stub)):
        if entry_point:
            namespace["candidate"] = namespace[entry_point]  # HumanEval's check(candidate) convention
        for index, test in enumerate(tests):
            results[index] = run_test(test, index, namespace)
    line = "\n" + nonce + " [" + ", ".join([r if type(r) is str else "1" if r else "0" for r in results]) + "]\n"
    write_all(1, line.encode("ascii"))
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    os._exit(0)


def serve(code, requests_fd: int, replies_fd: int) -> None:
    """The program's process: define the program, say what it defines, then call what the judge asks for."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # the judge's stdin (nonce, tests) and stdout (the verdict) are not the program's
    os.dup2(null, 1)
    os.close(null)
    namespace = run(code, "__solution__", exit_on_error=False)
    if namespace is None:
        write_all(replies_fd, b'["failed"]\n')
        os._exit(0)
    names, room = [], [values.MAX_VALUE_CHARS]
    for name, value in list(namespace.items()):
        if name.startswith("__"):
            continue
        if isinstance(value, types.ModuleType):
            names.append(f'["module", {json.dumps(name)}, {json.dumps(value.__name__)}]')
        elif callable(value):
            names.append(f'["call", {json.dumps(name)}]')
        else:
            try:
                names.append(f'["value", {json.dumps(name)}, {values.encode(value, 0, room)}]')
            except MemoryError:
                os._exit(MEMORY_EXIT)
            except BaseException:  # an object, or past the room: the tests cannot name it
                pass
    write_all(replies_fd, ('["ready", [' + ", ".join(names) + "]]\n").encode("ascii"))
    handles, lines = [], LineReader(requests_fd)
    while True:
        request = lines.next()
        if request is None:
            os._exit(0)
        kind, target, args, kwargs = json.loads(request)
        try:
            if kind == "getattr":
                value = getattr(handles[target], args)
            else:
                function = namespace[target] if kind == "call" else handles[target]
                unpack = lambda a: handles[a[1]] if a[0] == "ref" else values.decode(a)  # noqa: E731
                value = function(*[unpack(a) for a in args], **{k: unpack(v) for k, v in kwargs.items()})
        except MemoryError:
            os._exit(MEMORY_EXIT)
        except BaseException:  # an exception, sys.exit: that call raised
            write_all(replies_fd, b'["raised"]\n')
            continue
        try:
            reply = '["value", ' + values.encode(value, 0, [values.MAX_VALUE_CHARS]) + "]"
        except MemoryError:
            os._exit(MEMORY_EXIT)
        except values.ValueTooLarge:
            reply = '["too_large"]'
        except BaseException:  # no builtin value: the judge gets a reference to it
            handles.append(value)
            reply = f'["ref", {len(handles) - 1}]'
        write_all(replies_fd, reply.encode("ascii") + b"\n")


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


class ProgramRaised(Exception):
    """The program's function raised (its exception stays in its process)."""


class Unsent(Exception):
    """The program's value did not come back: "too_large" (its encoding past MAX_VALUE_CHARS)."""

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
    equals only itself and has no other operation."""

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


class Channel:
    """The judge's end of the pipes to the program's process. What comes back is parsed strictly (JSON of
    encoded builtin values; anything else ends the conversation: every later call raises)."""

    def __init__(self, pid: int, requests_fd: int, replies_fd: int):
        self.pid, self.requests_fd, self.replies, self.over = pid, requests_fd, LineReader(replies_fd), False

    def program_names(self) -> dict | None:
        """The judge's namespace: the program's functions and classes as stubs, its values of builtin types,
        the standard modules it imported; None when the program raised while it was defined."""
        reply = self._reply(ended_early=True)
        if reply == ["failed"]:
            return None
        if not (isinstance(reply, list) and len(reply) == 2 and reply[0] == "ready" and isinstance(reply[1], list)):
            self._end(True, broken=True)
        namespace = {"__name__": "__tests__", "__builtins__": __builtins__}
        for entry in reply[1]:
            if not (isinstance(entry, list) and len(entry) in (2, 3) and isinstance(entry[1], str)
                    and entry[1].isidentifier()) or entry[1] in _BUILTIN_NAMES:
                continue
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
        if reply == ["raised"]:
            raise ProgramRaised()
        if reply == ["too_large"]:
            raise Unsent("too_large")
        if isinstance(reply, list) and len(reply) == 2 and reply[0] == "value":
            try:
                return values.decode(reply[1])
            except (ValueError, TypeError, RecursionError):
                self._end(False, broken=True)
        if isinstance(reply, list) and len(reply) == 2 and reply[0] == "ref" and type(reply[1]) is int:
            return Reference(self, reply[1])
        self._end(False, broken=True)

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
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
            os.kill(os.getpid(), os.WTERMSIG(status))
        if not broken and os.WIFEXITED(status) and os.WEXITSTATUS(status) == MEMORY_EXIT:
            os._exit(MEMORY_EXIT)
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
        os._exit(MEMORY_EXIT)
    except Unsent as err:
        return 0 if kind == "exec" else f'"{err.kind}"'
    except BaseException:  # a failed assertion, an exception, sys.exit: this test fails
        return 0 if kind == "exec" else '"raised"'
    try:
        return '["value", ' + values.encode(value, 0, [values.MAX_VALUE_CHARS]) + "]"
    except MemoryError:
        os._exit(MEMORY_EXIT)
    except values.ValueTooLarge:
        return '"too_large"'
    except BaseException:
        return '"unencodable"'


def write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def run(code, name: str, exit_on_error: bool = True):
    namespace = {"__name__": name, "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except MemoryError:
        os._exit(MEMORY_EXIT)
    except SystemExit:
        if exit_on_error:
            raise
        return None
    except BaseException:
        if exit_on_error:
            traceback.print_exc(limit=-3)
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(1)
        return None
    return namespace


if __name__ == "__main__":
    main()
