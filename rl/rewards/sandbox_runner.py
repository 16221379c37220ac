"""Runs INSIDE the sandbox (copied in as a file, never imported by the trainer): set the limits, drop root,
load the seccomp filter, then compile and run the untrusted program.

    python -I -B runner.py LIMITS_JSON MODE UID SECCOMP_FD

LIMITS_JSON: {"cpu_s", "memory_mb", "processes", "file_mb", "open_files"} applied with setrlimit before
anything untrusted runs (after bwrap created the namespaces, so the process count is counted inside them).
UID >= 0 (the trainer runs as root): drop to that user id, so that the kernel enforces RLIMIT_NPROC (root
is exempt from it). SECCOMP_FD >= 0 (`rlimits_only`): a descriptor holding the seccomp filter
(rl.rewards.seccomp), loaded before the program runs (-1: none; bwrap loads it itself). MODE `stdio`: run
program.py as __main__ on this process's stdin. MODE `assert`: the first stdin line is a nonce; define the
program (as module `__solution__`, so a main guard does not run), run each test of tests.json against it, in
order, in the program's namespace, and write `NONCE [result, ...]` as the last line, one result per test:
- `eval EXPR` (an `assert EXPR == LITERAL` the trainer split; the LITERAL never comes here): the value of
  EXPR as `["value", ENCODED]` (encode()), or "unencodable", "too_large" (ENCODED would be longer than
  MAX_VALUE_CHARS; encoding stops there) or "raised" (the trainer compares the value; any but a value fails);
- `exec STATEMENTS` (any other assertion, judged here): 1 when it raises nothing, else 0.
What the harness uses after the program started (exec, eval, compile, the encoder's builtins, os.write and a
private duplicate of stdout) is bound before it runs, and `__main__` no longer names this module then, so a
program that replaces builtins, `json`, `sys.stdout` or fd 1 does not change the verdicts; one that walks the
frames or the garbage collector to this module's objects still can (the `exec` results: an `eval` value is
judged outside).
Exit codes other than the program's own: SYNTAX_EXIT (the program does not compile), MEMORY_EXIT, SECCOMP_EXIT
(the filter could not be loaded: the program never ran).
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
MAX_DEPTH = 100  # nesting of an encoded value; deeper (or self-containing) is "unencodable"
MAX_VALUE_CHARS = 1 << 18  # length of one encoded value; longer is "too_large" (~18k small ints, a 128k-char str)
HERE = os.path.dirname(os.path.abspath(__file__))
# Bound now, before any program runs: it can then replace the builtins and modules' names, not these.
_exec, _eval, _compile, _write, _exit = exec, eval, compile, os.write, os._exit
_type, _isinstance, _enumerate, _BaseException, _MemoryError = (type, isinstance, enumerate, BaseException,
                                                                MemoryError)
_int_hex, _int_bits, _float_hex, _complex_parts = int.__format__, int.bit_length, float.hex, complex.__getnewargs__
_len, _str_len, _bytes_len, _bytearray_len = len, str.__len__, bytes.__len__, bytearray.__len__
_str_bytes, _bytes_hex, _bytearray_hex = str.encode, bytes.hex, bytearray.hex
_list_iter, _tuple_iter, _set_iter, _dict_items = list.__iter__, tuple.__iter__, set.__iter__, dict.items
_frozenset_iter, _join = frozenset.__iter__, str.join
_CONTAINERS = ((list, "list", _list_iter), (tuple, "tuple", _tuple_iter), (set, "set", _set_iter),
               (frozenset, "frozenset", _frozenset_iter))
_int, _float, _complex, _str, _bytes, _bytearray, _dict, _callable = (int, float, complex, str, bytes, bytearray,
                                                                       dict, callable)


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


def drop_root(uid: int) -> None:
    if uid >= 0:
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
    nonce = sys.stdin.readline().strip() if mode == "assert" else ""
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
    with open(os.path.join(HERE, "tests.json"), encoding="utf-8") as handle:
        tests, entry_point = json.load(handle)
    verdict_fd = os.dup(1)  # the program may replace sys.stdout or fd 1: the verdict goes here
    sys.modules["__main__"] = types.ModuleType("__main__")  # `import __main__` no longer reaches these names
    namespace = run(code, "__solution__", exit_on_error=False)
    results = [0 if test[:4] == "exec" else '"raised"' for test in tests]  # also without the entry point
    if namespace is not None and (not entry_point or _callable(namespace.get(entry_point))):
        if entry_point:
            namespace["candidate"] = namespace[entry_point]  # HumanEval's check(candidate) convention
        for index, test in _enumerate(tests):
            results[index] = run_test(test, index, namespace)
    line = "\n" + nonce + " [" + _join(", ", [r if _type(r) is str else "1" if r else "0" for r in results]) + "]\n"
    write_all(verdict_fd, _str_bytes(line, "ascii"))
    _exit(0)  # no atexit handler, finalizer or buffered output of the program runs after the verdict


def run_test(test: str, index: int, namespace: dict):
    """1 or 0 for an `exec` test; the encoded value (a JSON string), "unencodable", "too_large" or "raised" for
    `eval`."""
    kind, source = test[:4], test[5:]
    try:
        if kind == "exec":
            _exec(_compile(source, f"test_{index}", "exec"), namespace)
            return 1
        value = _eval(_compile(source, f"test_{index}", "eval"), namespace)
    except _MemoryError:
        _exit(MEMORY_EXIT)
    except _BaseException:  # a failed assertion, an exception, sys.exit: this test fails
        return 0 if kind == "exec" else '"raised"'
    try:
        return '["value", ' + encode(value, 0, [MAX_VALUE_CHARS]) + "]"
    except _MemoryError:
        _exit(MEMORY_EXIT)
    except ValueTooLarge:
        return '"too_large"'
    except _BaseException:
        return '"unencodable"'


class ValueTooLarge(Exception):
    """The encoded value would be longer than MAX_VALUE_CHARS."""


def encode(value, depth: int, room: list) -> str:
    """A value of a builtin type as JSON `[tag, ...]` whose leaves are ASCII strings, so that the trainer
    rebuilds an equal value: tags none, bool, int (hex), float (float.hex: nan and inf exact), complex, str
    (UTF-8 hex), bytes (also bytearray), list, tuple, set, frozenset, dict. A subclass of one of them is
    encoded as its builtin value, read with the builtin's own methods (its __eq__ is never called); anything
    else (a custom object, a numpy array) raises TypeError: "unencodable". `room`: [characters left], of
    MAX_VALUE_CHARS; each value takes its text and a separator's 2, a container its tag and brackets before its
    items; ValueTooLarge as soon as none is left (a str, bytes or int before its text is built)."""
    if depth > MAX_DEPTH:
        raise ValueError("nested too deeply")
    if value is None:
        return _taken('["none"]', room)
    if value is True or value is False:
        return _taken('["bool", "1"]' if value else '["bool", "0"]', room)
    leaf = _leaf(value, room)
    if leaf is not None:
        return _taken(leaf, room)
    for base, tag, items in _CONTAINERS:
        if _isinstance(value, base):
            _take(_len(tag) + 12, room)
            return '["' + tag + '", [' + _join(", ", [encode(v, depth + 1, room) for v in items(value)]) + "]]"
    if _isinstance(value, _dict):
        _take(16, room)
        return '["dict", [' + _join(", ", [_pair(k, v, depth + 1, room) for k, v in _dict_items(value)]) + "]]"
    raise TypeError(f"cannot encode {_type(value).__name__}")


def _pair(key, value, depth: int, room: list) -> str:
    _take(2, room)  # its brackets
    return "[" + encode(key, depth, room) + ", " + encode(value, depth, room) + "]"


def _take(chars: int, room: list) -> None:
    room[0] -= chars
    if room[0] < 0:
        raise ValueTooLarge()


def _taken(text: str, room: list) -> str:
    _take(_len(text) + 2, room)
    return text


def _fits(chars: int, room: list) -> None:
    """ValueTooLarge when a leaf's text, at least `chars` long, cannot fit: before it is built."""
    if chars > room[0]:
        raise ValueTooLarge()


def _leaf(value, room: list):
    if _isinstance(value, _int):
        _fits(_int_bits(value) // 4, room)
        return '["int", "' + _int_hex(value, "x") + '"]'
    if _isinstance(value, _float):
        return '["float", "' + _float_hex(value) + '"]'
    if _isinstance(value, _complex):
        real, imag = _complex_parts(value)
        return '["complex", "' + _float_hex(real) + '", "' + _float_hex(imag) + '"]'
    if _isinstance(value, _str):  # (its UTF-8: at least a byte, two hex digits, a character)
        _fits(2 * _str_len(value), room)
        return '["str", "' + _bytes_hex(_str_bytes(value, "utf-8", "surrogatepass")) + '"]'
    if _isinstance(value, _bytes):
        _fits(2 * _bytes_len(value), room)
        return '["bytes", "' + _bytes_hex(value) + '"]'
    if _isinstance(value, _bytearray):  # bytearray(b"a") == b"a"
        _fits(2 * _bytearray_len(value), room)
        return '["bytes", "' + _bytearray_hex(value) + '"]'
    return None


def write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[_write(fd, data):]


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
