"""Runs INSIDE the sandbox (copied in as a file, never imported by the trainer): set the limits, drop root,
then compile and run the untrusted program.

    python -I -B runner.py LIMITS_JSON MODE UID

LIMITS_JSON: {"cpu_s", "memory_mb", "processes", "file_mb", "open_files"} applied with setrlimit before
anything untrusted runs (after bwrap created the namespaces, so the process count is counted inside them).
UID >= 0 (the trainer runs as root): drop to that user id, so that the kernel enforces RLIMIT_NPROC (root
is exempt from it). MODE `stdio`: run program.py as __main__ on this process's stdin. MODE `assert`: the first
stdin line is a nonce; define the program (as module `__solution__`, so a main guard does not run), run
each test of tests.json against it and print `NONCE [1, 0, ...]` (one flag per test) as the last line.
Exit codes other than the program's own: SYNTAX_EXIT (the program does not compile), MEMORY_EXIT.
"""

import json
import os
import resource
import signal
import sys
import traceback

SYNTAX_EXIT, MEMORY_EXIT = 65, 66
HERE = os.path.dirname(os.path.abspath(__file__))


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
    prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the setting took: nobody waits for this run
        os._exit(1)


def main() -> None:
    parent, prctl = os.getppid(), libc_prctl()
    limits, mode, uid = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    limit(limits)
    drop_root(uid)
    die_with_parent(prctl, parent)
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
    namespace = run(code, "__solution__", exit_on_error=False)
    flags = [0] * len(tests)
    if namespace is not None and (not entry_point or callable(namespace.get(entry_point))):
        if entry_point:
            namespace["candidate"] = namespace[entry_point]  # HumanEval's check(candidate) convention
        for index, test in enumerate(tests):
            try:
                exec(compile(test, f"test_{index}", "exec"), namespace)
                flags[index] = 1
            except MemoryError:
                os._exit(MEMORY_EXIT)
            except BaseException:  # a failed assertion, an exception, sys.exit: this test fails
                pass
    sys.stdout.write(f"\n{nonce} {json.dumps(flags)}\n")
    sys.stdout.flush()


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
