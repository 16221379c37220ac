"""Runs INSIDE the sandbox (copied in as a file, never imported by the trainer): set the limits, drop root,
load the seccomp filter, then compile and run the untrusted program.

    python -I -B runner.py LIMITS_JSON MODE UID SECCOMP_FD JUDGE_FD,VERDICT_FD

LIMITS_JSON: {"cpu_s", "memory_mb", "processes", "file_mb", "open_files"} applied with setrlimit before
anything untrusted runs (after bwrap created the namespaces, so the process count is counted inside them).
UID >= 0 (the trainer runs as root): drop to that user id, so that the kernel enforces RLIMIT_NPROC (root
is exempt from it). SECCOMP_FD >= 0 (`rlimits_only`): a descriptor holding the seccomp filter
(rl.rewards.seccomp), loaded before the program runs (-1: none; bwrap loads it itself). JUDGE_FD and VERDICT_FD
(`assert`): pipes holding the nonce and the tests, and taking the verdict, which the program's process closes
at once (-1 in `stdio`).

MODE `stdio`: run program.py as __main__ on this process's stdin.

MODE `assert`: two processes. This one, the judge, forks the program's process first, then reads the nonce
and the tests from JUDGE_FD (a pipe: never in the program's memory, files or descriptors; not stdin, which
bwrap's pid 1 holds), and runs each test in a namespace of its own (module `__main__`, in sys.modules too: a
test's main guard runs, pickle finds its classes, and its sys.exit(0) passes it, as a script's would),
where the program's functions and classes are stubs: a call sends its arguments (values of builtin
types, or references to the program's objects) to the program's process, which defines the program as module
`__solution__` (a main guard does not run) and calls the real function; the value comes back encoded
(sandbox_values) and is rebuilt here of builtin types, so an object whose `__eq__` is always true arrives as
a reference, equal to nothing but itself. An object that is no builtin value (an instance of the program's
class) arrives as a reference whose attributes and calls go back to the program; its only other operations are
those of sandbox_judge.OPERATIONS its class defines (iter, next, len, bool, x[i], in, reversed, str, repr: each
goes back to the program, sandbox_judge.reference_class).
A raise arrives as an exception of its nearest builtin class (sandbox_raises.RAISABLE: the builtins' Exception
subclasses but MemoryError, StopIteration and StopAsyncIteration, which cross as Exception; a program's
`class Invalid(ValueError)` as ValueError, its `class E(KeyError, ValueError)` as a class deriving from both)
with its arguments when they are builtin values, so that a test's `except ValueError` catches it; any other
(sys.exit) as sandbox_raises.ProgramRaised.
No program code runs in this process, which is not dumpable (its memory and descriptors out of the program's
reach), so the frames, the garbage collector, the nonce and the verdict are out of its reach too. The verdict,
`NONCE [result, ...]` on VERDICT_FD (the program's stdout is /dev/null), has one result per test:
- `eval EXPR` (an `assert EXPR == LITERAL` the trainer split; the LITERAL never comes here): the value of
  EXPR as `["value", ENCODED]`, or "unencodable", "too_large" (longer than MAX_VALUE_CHARS) or "raised" (the
  trainer compares the value; any but a value fails);
- `exec STATEMENTS` (any other assertion): 1 when it raises nothing, else 0.
A call's arguments are the program's copies, and those of type list, dict or set (or a tuple holding one) that
the call changed come back (`changed`) and are written into the test's own (a function that sorts its argument in
place sorts the test's).
Its first byte on stderr, once the sandbox is whole and before the program runs, is sandbox_values.STARTED (a
run without it failed in the sandbox, not in the program). Exit codes other than the program's own
(sandbox_values): SYNTAX_EXIT (the program does not compile),
MEMORY_EXIT, SECCOMP_EXIT (the filter could not be loaded: the program never ran); the program's process ended
by a signal (its CPU limit) ends the judge by the same one.
"""

import copy
import json
import os
import resource
import signal
import sys
import traceback
import types

PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS, SECCOMP_MODE_FILTER = 1, 22, 38, 2
PR_SET_DUMPABLE = 4
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # (-I left the script's directory out)
import sandbox_values as values  # noqa: E402  (copied in beside this file, as is the judge)
import sandbox_judge as judging  # noqa: E402
import sandbox_raises as raises  # noqa: E402
from sandbox_values import MEMORY_EXIT, SECCOMP_EXIT, SYNTAX_EXIT  # noqa: E402
del sys.path[0]  # a test's `import math` must not find a math.py the program wrote there (rlimits_only)


def limit(limits: dict) -> None:
    """Every limit but the process count (`limit_processes`, set after the assert mode's fork: without root the
    count is the trainer's user's, whose own threads can already pass it)."""
    mb = 1024 * 1024
    cpu = limits["cpu_s"]
    for kind, soft, hard in ((resource.RLIMIT_CPU, cpu, cpu + 1),
                             (resource.RLIMIT_AS, limits["memory_mb"] * mb, limits["memory_mb"] * mb),
                             (resource.RLIMIT_FSIZE, limits["file_mb"] * mb, limits["file_mb"] * mb),
                             (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
                             (resource.RLIMIT_CORE, 0, 0)):
        resource.setrlimit(kind, (soft, hard))
    # RLIMIT_AS bounds each process, not the tree (up to `processes` of them): the kernel's out-of-memory killer
    # takes the sandbox's processes first, not the largest process of the host (the trainer). Written with
    # CAP_SYS_RESOURCE (as root: bwrap keeps it for this), it is also their floor (without it, a program made
    # dumpable again lowers it: check_sandbox's description says so)
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("1000")
    except OSError:
        pass


# Standard modules a program commonly imports, imported before the user id drops: an interpreter installed
# under /root (0700) imports nothing more once it runs as the sandbox's user (rlimits_only as root: a correct
# program importing heapq or fractions scored 0).
PRELOADED = ("array", "bisect", "cmath", "collections", "copy", "dataclasses", "datetime", "decimal", "enum",
             "fractions", "functools", "heapq", "itertools", "math", "numbers", "operator", "queue", "random", "re",
             "statistics", "string", "textwrap", "typing", "unicodedata")


def limit_processes(limits: dict) -> None:
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))


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
    judge_fd, verdict_fd = map(int, sys.argv[5].split(","))
    limit(limits)
    drop_root(uid)
    die_with_parent(prctl, parent)
    load_seccomp(prctl, seccomp_fd)
    os.write(2, values.STARTED.encode())  # the sandbox is whole: what fails from here on is the program's
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
        limit_processes(limits)
        run(code, "__main__")
        sys.stdout.flush()
        return
    judge(code, prctl, limits, judge_fd, verdict_fd)


def judge(code, prctl, limits: dict, judge_fd: int, verdict_fd: int) -> None:
    """The assert mode (module docstring): fork the program's process, then judge the tests here."""
    if prctl is not None:
        import ctypes

        prctl(PR_SET_DUMPABLE, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    here = os.getpid()
    pid = os.fork()
    limit_processes(limits)  # in both, after the fork (limit's docstring)
    if pid == 0:
        os.close(requests_w)
        os.close(replies_r)
        os.close(judge_fd)  # the nonce and the tests, and the verdict: the judge's alone
        os.close(verdict_fd)
        die_with_parent(prctl, here)
        serve(code, requests_r, replies_w)
    os.close(requests_r)
    os.close(replies_w)
    judging.judge_tests(pid, requests_w, replies_r, judge_fd, verdict_fd)


def serve(code, requests_fd: int, replies_fd: int) -> None:
    """The program's process: define the program, say what it defines, then call what the judge asks for."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)  # the judge's stdin (nonce, tests) and stdout (the verdict) are not the program's
    os.dup2(null, 1)
    os.close(null)
    namespace = run(code, "__solution__", exit_on_error=False)
    if namespace is None:
        judging.write_all(replies_fd, b'["failed"]\n')
        os._exit(0)
    # the names' entries and the values' encodings take half the reply's room each (a line past it is refused)
    names, name_chars, room = [], 0, [values.MAX_VALUE_CHARS // 2]
    for name, value in list(namespace.items()):
        if name.startswith("__"):
            continue
        if isinstance(value, types.ModuleType) or callable(value):
            entry = (f'["module", {json.dumps(name)}, {json.dumps(value.__name__)}]'
                     if isinstance(value, types.ModuleType) else f'["call", {json.dumps(name)}]')
            name_chars += len(entry) + 2
            if name_chars < values.MAX_VALUE_CHARS // 2:  # past it (thousands of functions): not named
                names.append(entry)
            continue
        try:
            names.append(f'["value", {json.dumps(name)}, {values.encode(value, 0, room)}]')
        except MemoryError:
            os._exit(MEMORY_EXIT)
        except BaseException:  # an object, or past the room: the tests cannot name it
            pass
    judging.write_all(replies_fd, ('["ready", [' + ", ".join(names) + "]]\n").encode("ascii"))
    handles, handled, lines = [], {}, judging.LineReader(requests_fd)  # (handled: id -> handle, one per object)
    while True:
        request = lines.next()
        if request is None:
            os._exit(0)
        kind, target, args, kwargs = json.loads(request)
        unpack = lambda a: handles[a[1]] if a[0] == "ref" else values.decode(a)  # noqa: E731
        sent = {} if kind == "getattr" else {**dict(enumerate(args)), **kwargs}  # position or name -> encoded
        given, before = {}, {}
        try:
            given = {position: unpack(node) for position, node in sent.items()}
            before = copy.deepcopy({p: v for p, v in given.items()  # (a reference's object is the program's own)
                                    if (type(v) in (list, dict, set) or type(v) is tuple and judging.containers(v))
                                    and sent[p][:1] != ["ref"]})
            if kind == "getattr":
                value = getattr(handles[target], args)
            elif kind in judging.OPERATIONS:  # (one the program's class defines: judging.operations marked it)
                value = judging.OPERATIONS[kind][1](handles[target], *[given[i] for i in range(len(args))])
            else:
                function = namespace[target] if kind == "call" else handles[target]
                value = function(*[given[i] for i in range(len(args))], **{k: given[k] for k in kwargs})
        except MemoryError:
            os._exit(MEMORY_EXIT)
        except BaseException as error:  # an exception, sys.exit: that call raised (a builtin class by its name)
            judging.write_all(replies_fd, changed(sent, given, before) + raises.raised_reply(error))
            continue
        changes = changed(sent, given, before)
        if changes:
            judging.write_all(replies_fd, changes)
        if value is judging.STOP:  # the iterator's end (a raise of StopIteration elsewhere crosses as Exception)
            judging.write_all(replies_fd, b'["stop"]\n')
            continue
        try:
            reply = '["value", ' + values.encode(value, 0, [values.MAX_VALUE_CHARS]) + "]"
        except MemoryError:
            os._exit(MEMORY_EXIT)
        except values.ValueTooLarge:
            reply = '["too_large"]'
        except BaseException:  # no builtin value: the judge gets a reference to it (judging.operations)
            if id(value) not in handled:  # (held in handles: its id stays its own)
                handled[id(value)] = len(handles)
                handles.append(value)
            reply = f'["ref", {handled[id(value)]}{judging.operations(value)}]'
        judging.write_all(replies_fd, reply.encode("ascii") + b"\n")





def changed(sent: dict, given: dict, before: dict) -> bytes:
    """The line `["changed", [[POSITION, ENCODED], ...]]` (b"" when none) for the call's arguments of a mutable
    builtin type (list, dict, set) that no longer equal their copy `before` the call and whose encoding differs
    from what the judge sent (a function that sorts or appends to its argument), ENCODED "too_large" or
    "unencodable" where it cannot come back (the judge's call then fails): the judge writes each into its own
    argument, as the function would have changed it in Python. (The copy's == is 4x cheaper than an encoding.)"""
    entries, room = [], [values.MAX_VALUE_CHARS - 48]  # (the line within the judge's MAX_REPLY_CHARS)
    for position, old in before.items():
        value = given[position]
        try:
            if value == old:
                continue
        except MemoryError:
            os._exit(MEMORY_EXIT)
        except BaseException:  # (an object of the program's in it now, whose == raised: encoded below)
            pass
        room[0] -= len(json.dumps(position)) + 4
        try:
            text = values.encode(value, 0, room)
        except MemoryError:
            os._exit(MEMORY_EXIT)
        except values.ValueTooLarge:
            text = '"too_large"'
        except BaseException:  # (it holds an object of the program's now)
            text = '"unencodable"'
        if text != json.dumps(sent[position]):
            entries.append("[" + json.dumps(position) + ", " + text + "]")
    return ('["changed", [' + ", ".join(entries) + "]]\n").encode("ascii") if entries else b""


def run(code, name: str, exit_on_error: bool = True):
    """The program defined as module `name`, which sys.modules holds (as Python's own import would): a program
    pickling its own class, or a dataclass under `from __future__ import annotations`, looks its module up there
    (it found this file's `__main__`, or none for `__solution__`: such a correct program failed every test)."""
    module = sys.modules[name] = types.ModuleType(name)
    namespace = vars(module)
    namespace["__builtins__"] = __builtins__
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
