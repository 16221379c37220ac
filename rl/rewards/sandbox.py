"""Running untrusted Python programs: one isolated process tree per run, limited, killed as a whole.

    limits = SandboxLimits(wall_s=3, cpu_s=2, memory_mb=512)
    run = run_python(program_source, stdin=b"3\\n", mode="bwrap", limits=limits)
    run.status, run.stdout          # ("ok", b"6\\n"); statuses: see RUN_STATUSES

Modes (`rewards.code.sandbox`):
- `bwrap` (default): bubblewrap namespaces. No network (--unshare-net: only a down loopback), no view of
  other processes (--unshare-pid: the program's tree is pid 1's, and the kernel kills all of it when bwrap
  exits), own IPC and hostname, a new session (no terminal), an empty environment but PATH, a read-only
  /usr (+ the /lib, /bin links) and the host Python's install directories, a private size-capped tmpfs at
  /tmp (the only writable place; the working directory), a fresh /proc and minimal read-only /dev, the
  seccomp filter, nothing else: no home directory, no /etc beyond the dynamic linker's cache, no project or
  data files.
- `rlimits_only`: the same limits, environment, process group and seccomp filter, without namespaces: the
  program can read what the user can, reach the network and escape the process group with setsid. Only for
  hosts without bubblewrap or user namespaces, and only when the config says so explicitly.

The seccomp filter (rl.rewards.seccomp: no namespaces, mounts or memfds) is loaded by bwrap (--seccomp) or,
in `rlimits_only`, by the runner before the program runs; it is written for x86_64 only: elsewhere programs
run without it (a warning in the log, and check_sandbox's description, say so).

In both modes the runner (sandbox_runner.py) sets RLIMIT_CPU, _AS (memory), _NPROC (processes), _FSIZE
(each file), _NOFILE and _CORE before the program runs, and as root it first drops to an unprivileged user
id (`sandbox_uid`): root is exempt from RLIMIT_NPROC. As another user, bwrap's --unshare-user makes the
limit count the sandbox's own processes only (kernel >= 5.14; checked on 6.18: 13 threads and 1 fork under
a limit of 16, beside a parent of 40 threads), while `rlimits_only` counts all of that user's, the trainer's
threads included, so there a program can start no thread or process of its own. The trainer side enforces wall time
(SIGKILL to the whole process group at the limit) and reads at most `output_bytes` of stdout (the run is killed when
it prints more). The interpreter is the host's own (sys.executable), started with -I (no PYTHON* variables, no user
site) and -B.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from r1jax.errors import UserError
from r1jax.rl.rewards.sandbox_dirs import get_run_root, remove_tree, remove_user_files
from r1jax.rl.rewards.sandbox_values import MEMORY_EXIT, STARTED, SYNTAX_EXIT
from r1jax.rl.rewards.seccomp import filter_pipe, seccomp_filter

MODES = ("bwrap", "rlimits_only")
# ok: exited 0; exit: another exit code; syntax_error: does not compile; timeout: wall or CPU limit;
# memory: the address-space limit; output_limit: printed more than output_bytes; sandbox_error: the sandbox
# itself failed (bwrap missing or refused, the seccomp filter not loaded), which says nothing about the program.
RUN_STATUSES = ("ok", "exit", "syntax_error", "timeout", "memory", "output_limit", "sandbox_error")
RUNNER = pathlib.Path(__file__).with_name("sandbox_runner.py")
VALUES = pathlib.Path(__file__).with_name("sandbox_values.py")  # the runner's codec, copied in beside it
JUDGE = pathlib.Path(__file__).with_name("sandbox_judge.py")  # the assert mode's judge, copied in beside it
RAISES = pathlib.Path(__file__).with_name("sandbox_raises.py")  # how a raise crosses to the judge, likewise
CPU_SIGNALS = (signal.SIGXCPU, signal.SIGKILL)  # the soft and the hard RLIMIT_CPU
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LC_CTYPE": "C.UTF-8"}
LINKER_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")
SANDBOX_UID_BASE = 2_000_000  # as root, programs run as uid BASE + the pid of the scoring process
# check_sandbox's program: 42, the oom_score_adj its runner set, then its value after a program's try to lower it
# (dumpable again, its /proc/self files are its own: without CAP_SYS_RESOURCE where the runner set it, it can)
PROBE = ("import ctypes\nprint(6 * 7)\ntry:\n    print(open('/proc/self/oom_score_adj').read())\n"
         "    ctypes.CDLL(None).prctl(4, *map(ctypes.c_ulong, (1, 0, 0, 0)))\n"
         "    open('/proc/self/oom_score_adj', 'w').write('0')\n    print(open('/proc/self/oom_score_adj').read())\n"
         "except (OSError, AttributeError):\n    pass\n")
SHM_BYTES = 1 << 20  # bwrap's /dev/shm: multiprocessing's locks and queues (a page per semaphore) need one
STDERR_KEEP = 4096  # bytes of the program's stderr kept for diagnostics


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 3.0  # wall-clock time, from start to the SIGKILL of the whole process group
    cpu_s: int = 2  # RLIMIT_CPU (soft; SIGKILL one second later)
    memory_mb: int = 512  # RLIMIT_AS of every process
    processes: int = 16  # RLIMIT_NPROC: processes and threads of the sandbox's user
    file_mb: int = 16  # RLIMIT_FSIZE: the largest file it can write
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 1 << 20  # stdout read at most; more ends the run (output_limit)
    tmp_mb: int = 64  # size of the private /tmp (bwrap mode)

    def runner_limits(self) -> str:
        return json.dumps({"cpu_s": self.cpu_s, "memory_mb": self.memory_mb, "processes": self.processes,
                           "file_mb": self.file_mb, "open_files": self.open_files})


@dataclasses.dataclass(frozen=True)
class RunResult:
    status: str  # one of RUN_STATUSES
    stdout: bytes
    returncode: int | None
    detail: str = ""  # for logs: the end of stderr, or what the sandbox reported


def _python_dirs() -> list[str]:
    """The host interpreter's install directories (venv and base), bound read-only in the sandbox."""
    dirs = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.realpath(sys.executable))}
    kept = sorted(d for d in dirs if d and not d.startswith("/usr/") and d != "/usr")
    return [d for d in kept if not any(d != o and d.startswith(o + "/") for o in kept)]


def _bind_with_parents(path: str) -> list[str]:
    """--dir for each missing ancestor (mode 0755, so the dropped user can traverse it) then the bind."""
    args, parts = [], pathlib.PurePosixPath(path).parts[1:-1]
    for depth in range(1, len(parts) + 1):
        args += ["--perms", "0755", "--dir", "/" + "/".join(parts[:depth])]
    return args + ["--ro-bind", path, path]


def bwrap_args(limits: SandboxLimits, run_dir: str, seccomp_fd: int | None = None) -> list[str]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise FileNotFoundError("bwrap")
    args = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
            "--new-session", "--clearenv", *sum((["--setenv", k, v] for k, v in CLEAN_ENV.items()), []),
            "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += sum((["--ro-bind-try", f, f] for f in LINKER_FILES), [])
    args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",  # (a writable /dev/shm has no size cap)
             "--perms", "1777", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",  # a capped one, for semaphores
             "--perms", "1777", "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp"]
    for directory in _python_dirs():  # after /tmp's tmpfs, which hid a Python (a venv) under /tmp
        if directory in ("/", "/tmp") or (run_dir + "/").startswith(directory.rstrip("/") + "/"):
            continue  # (it would lay the host's /tmp, or the run directories, over the private /tmp)
        args += _bind_with_parents(directory)
    args += ["--ro-bind", run_dir, "/sandbox", "--chdir", "/tmp"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    if os.geteuid() == 0:  # no user namespace: the runner needs these two to drop to its own uid, and the third to
        # make oom_score_adj 1000 a floor (sandbox_runner.limit); setuid clears all three before the program runs
        args += ["--cap-drop", "ALL", *sum((["--cap-add", f"CAP_{c}"] for c in ("SETUID", "SETGID", "SYS_RESOURCE")),
                                           [])]
    else:
        args += ["--unshare-user"]
    return args + ["--"]


def sandbox_uid() -> int:
    """-1 (stay) unless root; then a per-process unprivileged uid, so that RLIMIT_NPROC counts only the
    programs of this scoring process, and a run's leftover processes killed by uid are its own. The whole pid
    (under 2^22, the kernel's limit): pid % 10^6 gave two workers one uid where pids pass a million (systemd's
    pid_max is 4,194,304), and each killed the other's running programs."""
    return SANDBOX_UID_BASE + os.getpid() if os.geteuid() == 0 else -1


def run_python(source: str, *, stdin: bytes = b"", mode: str = "bwrap", limits: SandboxLimits = SandboxLimits(),
               kind: str = "stdio", tests: list[str] | None = None, entry_point: str | None = None) -> RunResult:
    """Run `source` in the sandbox: `kind` "stdio" runs it as a script on `stdin`; "assert" runs `tests`
    (assertion statements) against it, `stdin` then holding the nonce line, to which the tests and the entry
    point are added as a JSON line, all sent by a pipe of the judge's own (sandbox_runner.py: read only by its
    judge, never by the program's process, nor from a file or a descriptor the program could read; the run's
    stdin is /dev/null)."""
    if mode not in MODES:
        raise UserError(f"rewards.code.sandbox = {mode!r}: expected one of {', '.join(MODES)}")
    uid, temp = sandbox_uid(), tempfile.TemporaryDirectory(prefix="run-", dir=get_run_root())
    run_dir = temp.name
    try:
        _write_run_files(run_dir, uid, source, stdin if kind == "stdio" else None)
        if mode == "bwrap" and shutil.which("bwrap") is None:
            return RunResult("sandbox_error", b"", None, "bwrap is not installed")
        seccomp = filter_pipe()  # read by bwrap (--seccomp), else by the runner; closed by _run
        if mode == "bwrap":
            prefix, root, cwd, runner_seccomp = bwrap_args(limits, run_dir, seccomp), "/sandbox", "/", -1
        else:
            work = tempfile.mkdtemp(dir=run_dir)
            if uid >= 0:
                os.chown(work, uid, uid)
            prefix, root, cwd, runner_seccomp = [], run_dir, work, -1 if seccomp is None else seccomp
        # the assert mode's nonce and tests, and its verdict, go by pipes of their own, never the run's stdin and
        # stdout: bwrap's pid 1 holds those and, without root, ran as the program's user and was dumpable: a
        # program opened /proc/1/fd/0 and read the nonce and the tests before the judge did (then wrote "pass"
        # tests back), or /proc/1/fd/1 and read the verdict line before the trainer did (then wrote one of 1s):
        # 7 and 10 forged passes in 20-30 runs. bwrap's pid 1 closes every descriptor but stdio (--as-pid-1 would
        # drop it, but the runner then outlived a wall-time kill)
        judge_fd = os.pipe() + os.pipe() if kind != "stdio" else None  # (tests: read, write; verdict: read, write)
        argv = prefix + [sys.executable, "-I", "-B", f"{root}/runner.py", limits.runner_limits(), kind, str(uid),
                         str(runner_seccomp), f"{judge_fd[0]},{judge_fd[3]}" if judge_fd else "-1,-1"]
        try:
            if judge_fd is not None:
                return _run(argv, stdin + json.dumps([tests or [], entry_point]).encode() + b"\n", cwd, limits,
                            seccomp, judge_fd)
            with open(pathlib.Path(run_dir) / "stdin", "rb") as stdin_file:
                return _run(argv, stdin_file, cwd, limits, seccomp)
        finally:
            if mode == "rlimits_only" and uid >= 0:
                kill_user_processes(uid)
                remove_user_files(uid)
    finally:
        remove_tree(run_dir, temp.cleanup)


def _write_run_files(run_dir: str, uid: int, source: str, stdin: bytes | None) -> None:
    """The run directory is 0750, as root owned by the sandbox user and group 0 (bwrap's root reads it without
    CAP_DAC_OVERRIDE as the group): no other scoring process's programs can read it."""
    os.chmod(run_dir, 0o750)
    files = {"program.py": source, "runner.py": RUNNER.read_text(), "sandbox_values.py": VALUES.read_text(),
             "sandbox_judge.py": JUDGE.read_text(), "sandbox_raises.py": RAISES.read_text()}
    for name, text in files.items():
        (pathlib.Path(run_dir) / name).write_text(text, encoding="utf-8")
        os.chmod(pathlib.Path(run_dir) / name, 0o644)
    if stdin is not None:  # a program's input is no secret; the assert mode's nonce goes by a pipe (_run): read
        (pathlib.Path(run_dir) / "stdin").write_bytes(stdin)  # by the runner, it is gone from there
    if uid >= 0:
        os.chown(run_dir, uid, 0)


def kill_user_processes(uid: int) -> None:
    """SIGKILL every process of `uid` (rlimits_only as root: a daemon that left the process group would
    otherwise live on, and kill or spy on the next programs of this scoring process, which share the uid).
    kill(-1) run as that uid reaches exactly its processes (the interpreter starts as root, which can read it
    where the uid may not, then drops to the uid as the runner does)."""
    drop_and_kill = f"import os; os.setgroups([]); os.setgid({uid}); os.setuid({uid}); os.kill(-1, 9)"
    try:
        subprocess.run([sys.executable, "-I", "-S", "-c", drop_and_kill], env=CLEAN_ENV, cwd="/",
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        pass


def _run(argv: list[str], stdin, cwd: str, limits: SandboxLimits, seccomp: int | None = None,
         judge_fd: tuple[int, int, int, int] | None = None) -> RunResult:
    """`stdin`: an open file (the program's input), or, with `judge_fd` (two pipes: the runner gets the first's
    read end and the second's write end, by number in argv), a few bytes written to the first and closed (never a
    file or a descriptor the program could read: the assert mode's nonce; stdin is then /dev/null), and the
    result's stdout is what the judge wrote to the second (the run's own stdout is read and dropped).
    `seccomp`: a descriptor bwrap or the runner reads its filter from. All are closed here."""
    passed = tuple(fd for fd in (seccomp, *(judge_fd[0::3] if judge_fd else ())) if fd is not None)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL if judge_fd else stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=cwd, env=CLEAN_ENV, start_new_session=True,
                                close_fds=True, pass_fds=passed)
    except OSError as err:
        if judge_fd:
            os.close(judge_fd[1])
            os.close(judge_fd[2])
        return RunResult("sandbox_error", b"", None, f"cannot start: {err}")
    finally:
        for fd in passed:
            os.close(fd)
    if judge_fd:  # by a thread: tests past a pipe's buffer wait for the judge, inside the wall time below
        threading.Thread(target=_feed, args=(os.fdopen(judge_fd[1], "wb"), stdin), daemon=True).start()
    deadline = time.monotonic() + limits.wall_s
    out, err, verdict, over, timed_out = bytearray(), bytearray(), bytearray(), False, False
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        if judge_fd:
            selector.register(judge_fd[2], selectors.EVENT_READ, verdict)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in selector.select(timeout=left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = key.data
                room = (STDERR_KEEP if buffer is err else limits.output_bytes) - len(buffer)
                buffer += chunk[:max(room, 0)]
                if buffer is not err and len(chunk) > room:
                    over = True
            if over:
                break
    _kill_group(proc)
    proc.stdout.close()
    proc.stderr.close()
    if judge_fd:
        os.close(judge_fd[2])
    return _classify(proc.returncode, bytes(verdict if judge_fd else out), err.decode("utf-8", "replace"),
                     timed_out, over, limits)


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
    except (BrokenPipeError, ValueError):  # it ended already (its status says how), or the run was cleaned up
        pass
    finally:
        try:
            pipe.close()
        except (BrokenPipeError, ValueError):
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the whole process group (bwrap's own tree dies with it: --die-with-parent, pid namespace)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _classify(code: int, stdout: bytes, stderr: str, timed_out: bool, over: bool,
              limits: SandboxLimits) -> RunResult:
    started = stderr.startswith(STARTED)  # (the runner's mark: the sandbox was whole when the program started)
    tail = stderr[len(STARTED) if started else 0:][-500:]
    if timed_out:
        return RunResult("timeout", stdout, code, f"wall time over {limits.wall_s} s")
    if over:
        return RunResult("output_limit", stdout, code, f"printed more than {limits.output_bytes} bytes")
    if code != 0 and not started:  # bubblewrap's own errors, the filter not loaded (SECCOMP_EXIT): a program's
        # "bwrap: ..." on its stderr, or its exit code SECCOMP_EXIT, passed for one before, and was counted so
        return RunResult("sandbox_error", stdout, code, tail)
    signal_number = -code if code < 0 else code - 128 if code > 128 else 0  # bwrap reports 128 + signal
    if signal_number in CPU_SIGNALS:
        return RunResult("timeout", stdout, code, f"CPU time over {limits.cpu_s} s")
    if code == MEMORY_EXIT:
        return RunResult("memory", stdout, code, f"memory over {limits.memory_mb} MB")
    if code == SYNTAX_EXIT:
        return RunResult("syntax_error", stdout, code, tail)
    return RunResult("ok" if code == 0 else "exit", stdout, code, tail)


@functools.lru_cache(maxsize=4)
def check_sandbox(mode: str) -> str:
    """Run a trivial program in `mode`; UserError saying what the host lacks when it does not work.
    Returns a one-line description of the mode for the run's log."""
    if mode not in MODES:
        raise UserError(f"rewards.code.sandbox = {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "bwrap" and shutil.which("bwrap") is None:
        raise UserError("code rewards run programs in a bubblewrap sandbox, but `bwrap` is not installed "
                        "(apt-get install bubblewrap); or set rewards.code.sandbox=rlimits_only to accept "
                        "running them with resource limits only (no namespaces: see the README)")
    result = run_python(PROBE, mode=mode, limits=SandboxLimits(wall_s=30))
    if result.status != "ok" or result.stdout.split()[:1] != [b"42"]:
        hidden = "execvp" in result.detail and "No such file" in result.detail
        hint = (f"the interpreter {sys.executable} is not visible inside the sandbox (its directories are "
                f"bound read-only: {', '.join(_python_dirs())}); or set rewards.code.sandbox=rlimits_only"
                if mode == "bwrap" and hidden else
                "bubblewrap cannot create its namespaces: unprivileged user namespaces may be disabled "
                "(sysctl kernel.unprivileged_userns_clone=1, or user.max_user_namespaces > 0; inside a "
                "container, allow them); or set rewards.code.sandbox=rlimits_only" if mode == "bwrap" else
                "the host Python could not run a program, or the kernel refused the seccomp filter")
        raise UserError(f"code sandbox ({mode}) does not work: {result.status}: {result.detail.strip()}; {hint}")
    filtered = "seccomp" if seccomp_filter() is not None else "NO seccomp filter (not x86_64)"
    adj = result.stdout.split()[1:]
    if adj[:1] != [b"1000"]:  # (sandbox_runner.limit: the host refused it, and says nothing)
        filtered += (" (oom_score_adj NOT raised: the host refuses /proc/self/oom_score_adj, so the out-of-memory "
                     "killer may take the trainer before a program)")
    elif adj[1:]:
        filtered += (" (oom_score_adj 1000 is NO floor: without CAP_SYS_RESOURCE a program lowers it to the "
                     "trainer's, and the out-of-memory killer may take the trainer before it)")
    if mode == "bwrap":
        return (f"bwrap (namespaces: no network, no other processes, read-only file system, private /tmp) + "
                f"{filtered} + rlimits")
    return (f"rlimits_only (WEAKER: no namespaces; the program can read the file system and reach the network) "
            f"+ {filtered}")
