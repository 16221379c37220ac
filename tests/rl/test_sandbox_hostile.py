"""Hostile programs against the sandbox's host side (rl/rewards/sandbox.py, sandbox_dirs.py, sandbox_runner.py): a
tree too deep to remove, a tree of processes out of memory, a program posing as a sandbox failure. Each let a
program harm the host or mislead the trainer before its fix."""

import ctypes
import os
import pathlib
import platform
import shutil
import subprocess
import sys

import pytest

from r1jax.rl.rewards import sandbox, sandbox_dirs, sandbox_values

LIMITS = sandbox.SandboxLimits(wall_s=10, cpu_s=5, memory_mb=256, tmp_mb=16)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="rlimits_only drops to a sandbox uid only as root")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bwrap")


DEEP = "import os\nfor _ in range(3000):\n    os.mkdir('d')\n    os.chdir('d')\nprint('deep')\n"


def test_a_tree_deeper_than_the_recursion_limit_is_removed_and_never_raises():
    """An rlimits_only program nested 3,000 directories in its working directory: shutil.rmtree's RecursionError
    came out of run_python (the item an error), left the tree behind, and came out of every later sweep of that
    stale run root: no sandbox and no reward pool could start on the host again until someone removed it."""
    run = sandbox.run_python(DEEP, mode="rlimits_only", limits=LIMITS)
    assert (run.status, run.stdout) == ("ok", b"deep\n"), run.detail
    assert os.listdir(sandbox_dirs.get_run_root()) == []
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = pathlib.Path(f"/tmp/{sandbox_dirs.RUN_ROOT_PREFIX}{dead.pid}-deep")
    stale.mkdir()
    here = os.getcwd()
    try:
        os.chdir(stale)
        for _ in range(3000):
            os.mkdir("d")
            os.chdir("d")
        os.chdir(here)
        os.rmdir(sandbox_dirs.make_run_root())
        assert not stale.exists()
    finally:
        os.chdir(here)
        subprocess.run(["rm", "-rf", "--", str(stale)], check=False)


OOM_ADJ = ("import os\nadj = open('/proc/self/oom_score_adj').read().strip()\nif os.fork() == 0:\n    try:\n"
           "        open('/proc/self/oom_score_adj', 'w').write('0')\n    except OSError:\n        pass\n"
           "    print(adj, open('/proc/self/oom_score_adj').read().strip(), flush=True)\n    os._exit(0)\nos.wait()\n")


@needs_root
@pytest.mark.parametrize("mode", ["bwrap", "rlimits_only"])
def test_the_out_of_memory_killer_takes_the_programs_first_and_they_cannot_change_that(mode):
    """RLIMIT_AS bounds each process, not the tree: 15 forks of memory_mb each (16 x 512 MB by default, per
    worker) could drive the host out of memory, and the kernel's OOM killer then chose the largest process, the
    trainer. Every process of a run now has oom_score_adj 1000 (the first to go), which a program cannot lower by
    writing it (made dumpable again, it can where the runner lacked CAP_SYS_RESOURCE: the next test)."""
    if mode == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("no bwrap")
    run = sandbox.run_python(OOM_ADJ, mode=mode, limits=LIMITS)
    assert (run.status, run.stdout) == ("ok", b"1000 1000\n"), run.detail


LOWER_OOM_ADJ = ("import ctypes\nctypes.CDLL(None).prctl(4, *map(ctypes.c_ulong, (1, 0, 0, 0)))\ntry:\n"
                 "    open('/proc/self/oom_score_adj', 'w').write('0')\nexcept OSError:\n    pass\n"
                 "print(open('/proc/self/oom_score_adj').read().strip())\n")


@pytest.mark.parametrize("mode", ["bwrap", "rlimits_only"])
def test_the_sandboxs_description_says_when_a_program_can_lower_its_oom_score_adj(mode):
    """Made dumpable again (or by exec), a program owns its /proc/self files and lowers its oom_score_adj to the
    trainer's wherever the runner set it without CAP_SYS_RESOURCE (without root; as root in a container with
    Docker's default capabilities, as on the dev host): the log said the sandbox's processes went first all the same."""
    if mode == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("no bwrap")
    run = sandbox.run_python(LOWER_OOM_ADJ, mode=mode, limits=LIMITS)
    assert run.status == "ok" and run.stdout in (b"0\n", b"1000\n"), run
    assert ("oom_score_adj 1000 is NO floor" in sandbox.check_sandbox.__wrapped__(mode)) == (run.stdout == b"0\n")


@needs_bwrap
def test_a_program_cannot_pass_itself_off_as_a_sandbox_failure(monkeypatch):
    """sandbox_error says the sandbox failed and nothing is known of the program: a program wrote 'bwrap: ...' to
    its stderr and exited 1, or exited with SECCOMP_EXIT, and was counted so (in both test forms). Now only a run
    that failed before its program started is; bubblewrap's own refusal still is."""
    spoofs = ["import os, sys\nsys.stderr.write('bwrap: Creating new namespace failed\\n')\nsys.stderr.flush()\n"
              "os._exit(1)", f"import os\nos._exit({sandbox_values.SECCOMP_EXIT})"]
    for mode in ("bwrap", "rlimits_only"):
        for program in spoofs:
            assert sandbox.run_python(program, mode=mode, limits=LIMITS).status == "exit", (mode, program)
            assert sandbox.run_python(program, mode=mode, limits=LIMITS, kind="assert", tests=["exec pass"],
                                      stdin=b"0\n").status == "exit", (mode, program)
    real = sandbox.bwrap_args
    monkeypatch.setattr(sandbox, "bwrap_args", lambda *args: real(*args)[:1] + ["--no-such-option"] + real(*args)[1:])
    run = sandbox.run_python("print(1)", mode="bwrap", limits=LIMITS)
    assert run.status == "sandbox_error" and "bwrap:" in run.detail, run


def test_removing_a_tree_never_raises_even_where_rm_cannot_run(monkeypatch, tmp_path, caplog):
    """remove_tree's fallback, `rm -rf`, raised itself where it could not run (FileNotFoundError: no `rm` on PATH;
    TimeoutExpired past 60 s), out of run_python, the sweep and the pool's close, which it is there to protect."""
    def too_deep():
        raise RecursionError("too deep")
    monkeypatch.setenv("PATH", str(tmp_path))  # (no rm there)
    sandbox_dirs.remove_tree(str(tmp_path / "tree"), too_deep)
    assert "cannot remove" in caplog.text


@pytest.mark.parametrize("mode", ["bwrap", "rlimits_only"])
def test_a_host_that_refuses_oom_score_adj_is_named_in_the_sandboxs_description(mode, monkeypatch, tmp_path):
    """The runner ignores a refused write of oom_score_adj (a container may forbid it: the sandbox still works), but
    nothing said so, and the trainer's log claimed the protection it lacked."""
    if mode == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("no bwrap")
    assert "oom_score_adj NOT raised" not in sandbox.check_sandbox.__wrapped__(mode)
    refusing = tmp_path / "runner.py"  # (its write goes nowhere: as where /proc/self/oom_score_adj is read-only)
    refusing.write_text(sandbox.RUNNER.read_text().replace('open("/proc/self/oom_score_adj", "w")',
                                                           'open("/nonexistent/oom_score_adj", "w")'))
    monkeypatch.setattr(sandbox, "RUNNER", refusing)
    assert "oom_score_adj NOT raised" in sandbox.check_sandbox.__wrapped__(mode)


@needs_bwrap
def test_multiprocessing_works_in_bwrap_on_a_capped_dev_shm():
    """/dev was read-only in bwrap mode (a writable /dev/shm has no size cap), and a program using multiprocessing's
    Pool, Queue or Lock (a POSIX semaphore in /dev/shm) failed with 'Read-only file system'."""
    program = ("import multiprocessing as mp\nwith mp.get_context('fork').Pool(2) as pool:\n"
               "    print(sum(pool.map(abs, [-1, 2])))")
    run = sandbox.run_python(program, mode="bwrap", limits=LIMITS)  # (filling it: test_sandbox_isolation's escapes)
    assert (run.status, run.stdout) == ("ok", b"3\n"), run.detail


SYSV_IPC = """import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for name, get in (("shm", lambda: libc.shmget(0, 1 << 20, 0o1600)), ("sem", lambda: libc.semget(0, 1, 0o1600)),
                  ("msg", lambda: libc.msgget(0, 0o1600))):
    made = get()  # IPC_PRIVATE, IPC_CREAT | 0600; removed at once where it was made (IPC_RMID)
    if made >= 0:
        getattr(libc, name + "ctl")(made, 0, None)
    print(name, ctypes.get_errno() if made < 0 else 0)
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter is x86_64's")
def test_rlimits_only_programs_cannot_leave_system_v_ipc_objects_behind():
    """rlimits_only shares the host's IPC namespace: a program's shared memory segments (filled, then detached: out
    of RLIMIT_AS) outlived its run and every later one's (128 MB a run measured), held by the host's kernel."""
    run = sandbox.run_python(SYSV_IPC, mode="rlimits_only", limits=LIMITS)
    assert (run.status, run.stdout) == ("ok", b"shm 1\nsem 1\nmsg 1\n"), run.detail  # EPERM, the filter's


POSIX_QUEUE = """import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
made = libc.syscall(240, b"r1jax-left-queue", os.O_CREAT | os.O_RDWR, 0o600, None)  # mq_open
print("mq", ctypes.get_errno() if made < 0 else 0)
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter is x86_64's")
def test_rlimits_only_programs_cannot_leave_posix_message_queues_behind():
    """A POSIX message queue (mq_open, no /dev/mqueue needed) a program made in rlimits_only outlived its run in
    the host's kernel, as System V objects did."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        run = sandbox.run_python(POSIX_QUEUE, mode="rlimits_only", limits=LIMITS)
        assert (run.status, run.stdout) == ("ok", b"mq 1\n"), run.detail  # EPERM, the filter's
        assert libc.syscall(240, b"r1jax-left-queue", os.O_RDWR, 0, None) < 0  # none in the host's kernel
    finally:
        libc.syscall(241, b"r1jax-left-queue")  # mq_unlink


TOPS = tuple(top for top in ("/dev/shm", "/tmp", "/var/tmp", "/run/lock") if os.path.isdir(top))
LEAVES = ("import os\nfor top in %r:\n" % (TOPS,) +
          "    open(f'{top}/r1jax-left-file', 'wb').write(bytes(1 << 20))\n"
          "    os.mkdir(f'{top}/r1jax-left-dir')\n    os.symlink(%r, f'{top}/r1jax-left-dir/link')\n"
          "os.symlink(%r, '/tmp/r1jax-left-link')\nprint('left')\n")


@needs_root
def test_rlimits_only_programs_leave_no_files_in_the_hosts_temporary_directories(tmp_path):
    """rlimits_only as root: a program's files in /dev/shm (the host's memory), /tmp, /var/tmp and /run/lock
    outlived its run (16 MB each, as many as its wall time allowed); now its user's entries there go with it,
    symlinks unfollowed."""
    host = tmp_path / "host-file"
    host.write_text("kept")
    left = [f"{top}/r1jax-left-{kind}" for top in TOPS for kind in ("file", "dir")]
    try:
        run = sandbox.run_python(LEAVES % (str(host), str(host)), mode="rlimits_only", limits=LIMITS)
        assert (run.status, run.stdout) == ("ok", b"left\n"), run.detail
        assert [path for path in left + ["/tmp/r1jax-left-link"] if os.path.lexists(path)] == []
        assert host.read_text() == "kept"
    finally:
        for path in left + ["/tmp/r1jax-left-link"]:
            subprocess.run(["rm", "-rf", "--", path], check=False)
