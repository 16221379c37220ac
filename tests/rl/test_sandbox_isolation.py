"""The sandbox's second line: a seccomp filter (no nested namespaces, mounts or memfds) in both modes, a
read-only /dev, private run directories (the roots of killed processes swept, nothing else) and no process
that outlives its run (rl/rewards/sandbox.py, seccomp.py, worker.py, pool.py)."""

import errno
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from r1jax.rl.rewards import CodeConfig, PoolConfig, RewardPool, RewardsConfig, ScoreItem, sandbox, sandbox_dirs

LIMITS = sandbox.SandboxLimits(wall_s=10, cpu_s=5, memory_mb=256, tmp_mb=16)
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None or platform.machine() != "x86_64",
                                 reason="needs bwrap and an x86_64 host (the filter's syscall table)")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="rlimits_only drops to a sandbox uid only as root")
needs_x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="the filter's syscall table is x86_64's")

ESCAPES = """import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(result):
    return ctypes.get_errno() if result != 0 else 0
print("unshare_user", errno_of(libc.unshare(0x10000000)))
print("unshare_mount", errno_of(libc.unshare(0x20000)))
print("mount", errno_of(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)))
try:
    os.memfd_create("x")
    print("memfd", 0)
except OSError as err:
    print("memfd", err.errno)
def errno_if_failed(result):  # a syscall's fd or -1
    return ctypes.get_errno() if result < 0 else 0
print("io_uring", errno_if_failed(libc.syscall(425, 4, ctypes.create_string_buffer(120))))  # io_uring_params
print("userfaultfd", errno_if_failed(libc.syscall(323, 0)))
attr = ctypes.create_string_buffer(128); attr[4] = 128  # perf_event_attr of size 128: a software clock
print("perf_event", errno_if_failed(libc.syscall(298, attr, 0, -1, -1, 0)))
print("bpf", errno_if_failed(libc.syscall(321, 0, ctypes.create_string_buffer(128), 128)))
"""
KERNEL_SURFACE = ("io_uring", "userfaultfd", "perf_event", "bpf")  # unfiltered on the dev host: 0, 1, 13, 22
FILL_DEV_SHM = """try:
    open("/dev/shm/fill", "wb").write(bytes(2 << 20))  # (past its 1 MiB: ENOSPC)
    print("dev_shm", 0)
except OSError as err:
    print("dev_shm", err.errno)
"""
OS_UNSHARE = """if hasattr(os, "unshare"):  # Python 3.12+
    try:
        os.unshare(os.CLONE_NEWUSER)
        print("os_unshare", 0)
    except OSError as err:
        print("os_unshare", err.errno)
"""
ORDINARY = """import os, threading
threads = [threading.Thread(target=lambda: None) for _ in range(3)]
[t.start() for t in threads]; [t.join() for t in threads]
pid = os.fork()
if pid == 0:
    os._exit(7)
print("child", os.waitpid(pid, 0)[1] >> 8)
open("/dev/null", "w").write("x")
open("/tmp/f", "w").write("y")
print("ok", open("/tmp/f").read())
"""


@needs_bwrap
def test_bwrap_programs_cannot_nest_namespaces_mount_use_memfd_or_fill_dev_shm():
    run = sandbox.run_python(ESCAPES + FILL_DEV_SHM, mode="bwrap", limits=LIMITS)
    assert run.status == "ok", run.detail
    results = dict(line.split() for line in run.stdout.decode().splitlines())
    assert {k: int(v) != 0 for k, v in results.items()} == dict.fromkeys(results, True), results
    assert all(int(results[k]) == errno.EPERM for k in KERNEL_SURFACE), results  # the filter's refusal


@needs_x86_64
def test_rlimits_only_programs_cannot_nest_namespaces_mount_or_use_memfd():
    run = sandbox.run_python(ESCAPES + OS_UNSHARE, mode="rlimits_only", limits=LIMITS)
    assert run.status == "ok", run.detail
    results = dict(line.split() for line in run.stdout.decode().splitlines())
    assert {"unshare_user", "unshare_mount", "mount", "memfd", *KERNEL_SURFACE} <= set(results)
    assert {k: int(v) != 0 for k, v in results.items()} == dict.fromkeys(results, True), results
    assert all(int(results[k]) == errno.EPERM for k in KERNEL_SURFACE), results  # the filter's refusal


@needs_root
@needs_x86_64
def test_rlimits_only_ordinary_programs_still_thread_and_fork_under_the_filter():
    run = sandbox.run_python(ORDINARY.replace("/tmp/f", "f"), mode="rlimits_only", limits=LIMITS)
    assert (run.status, run.stdout) == ("ok", b"child 7\nok y\n"), run.detail


def test_rlimits_only_runs_no_program_when_the_filter_cannot_be_loaded(monkeypatch):
    def invalid_filter():  # one row the kernel refuses (an undefined instruction)
        read_end, write_end = os.pipe()
        os.write(write_end, b"\xff\xff" + bytes(6))
        os.close(write_end)
        return read_end
    monkeypatch.setattr(sandbox, "filter_pipe", invalid_filter)
    run = sandbox.run_python("print('ran')", mode="rlimits_only", limits=LIMITS)
    assert (run.status, run.stdout) == ("sandbox_error", b""), run
    assert "seccomp" in run.detail


def test_no_filter_is_built_for_another_architecture_and_a_warning_says_so(monkeypatch, caplog):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    sandbox.seccomp_filter.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert sandbox.seccomp_filter() is None and sandbox.seccomp_filter() is None
        assert len([r for r in caplog.records if "no seccomp filter on aarch64" in r.getMessage()]) == 1
    finally:
        sandbox.seccomp_filter.cache_clear()


@needs_bwrap
def test_bwrap_ordinary_programs_still_thread_fork_and_write_tmp():
    run = sandbox.run_python(ORDINARY, mode="bwrap", limits=LIMITS)
    assert (run.status, run.stdout) == ("ok", b"child 7\nok y\n"), run.detail


@needs_bwrap
def test_the_judge_reads_the_tests_and_writes_the_verdict_by_pipes_of_its_own_not_stdio(monkeypatch):
    """bwrap's pid 1 holds the run's stdin and stdout and, without root, ran as the program's user, dumpable: an
    assert-mode program opened /proc/1/fd/0 and read the nonce and the tests before the judge did (then wrote
    "pass" tests back), or /proc/1/fd/1 and read the verdict before the trainer did (then wrote one of 1s): 7 in
    30 and 10 in 20 runs as nobody passed. The judge's pipes are now extra descriptors, which bwrap's pid 1 closes
    and the program's process closes at once; stdin is /dev/null, and what reaches stdout is dropped."""
    started = []
    popen = subprocess.Popen

    def spy(argv, **kwargs):
        started.append(kwargs)
        return popen(argv, **kwargs)

    monkeypatch.setattr(sandbox.subprocess, "Popen", spy)
    program = ("import os\ndef f():\n    return [os.readlink(f'/proc/self/fd/{fd}')[:4] for fd in (0, 1)]\n"
               "def g():\n    return sorted(os.listdir('/proc/self/fd'))\n")
    run = sandbox.run_python(program, stdin=b"n0nce\n", mode="bwrap", limits=LIMITS, kind="assert",
                             tests=["eval f()", "eval len(g())"], entry_point="f")
    assert started[0]["stdin"] is subprocess.DEVNULL and len(started[0]["pass_fds"]) == 3
    line = run.stdout.split(b"\n")[-2].decode()
    assert run.status == "ok" and line.startswith("n0nce "), run
    # /dev/null twice; the program's process holds stdio, its two pipes to the judge and listdir's own: no more
    assert line.split(" ", 1)[1] == '[["value", ["list", [["str", "2f646576"], ["str", "2f646576"]]]], ' \
                                    '["value", ["int", "6"]]]', line


@needs_bwrap
def test_the_seccomp_filter_is_well_formed():
    program = sandbox.seccomp_filter()
    assert len(program) % 8 == 0 and 0 < len(program) // 8 < 256


@needs_root
def test_rlimits_only_runs_cannot_list_the_run_root_and_their_directory_is_private():
    program = ("import os, stat\nrun = os.path.dirname(os.getcwd())\nst = os.stat(run)\n"
               "print(oct(stat.S_IMODE(st.st_mode)), st.st_uid == os.getuid())\n"
               "try:\n    os.listdir(os.path.dirname(run))\n    print('listed')\n"
               "except PermissionError:\n    print('denied')\n")
    run = sandbox.run_python(program, mode="rlimits_only", limits=LIMITS)
    assert (run.status, run.stdout) == ("ok", b"0o750 True\ndenied\n"), run.detail


@needs_root
def test_rlimits_only_leaves_no_daemon_of_the_sandbox_user_behind():
    shared = pathlib.Path(tempfile.mkdtemp(prefix="r1jax-test-"))  # where the dropped user id can write
    shared.chmod(0o777)
    pid_file = shared / "pid"
    program = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
               f"        [os.close(fd) for fd in (0, 1, 2)]\n"
               f"        open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n        time.sleep(60)\n"
               f"    os._exit(0)\ntime.sleep(0.5)\n")
    run = sandbox.run_python(program, mode="rlimits_only", limits=LIMITS)
    assert run.status == "ok", run.detail
    pid = int(pid_file.read_text())
    try:
        deadline = time.monotonic() + 3
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        if _alive(pid):
            os.kill(pid, 9)
        shutil.rmtree(shared, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_new_run_root_sweeps_those_of_dead_processes():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = pathlib.Path(f"/tmp/{sandbox_dirs.RUN_ROOT_PREFIX}{dead.pid}-stale")
    live = pathlib.Path(f"/tmp/{sandbox_dirs.RUN_ROOT_PREFIX}{os.getpid()}-live")
    for directory in (stale, live):
        (directory / "run-x").mkdir(parents=True, exist_ok=True)
    try:
        root = sandbox_dirs.make_run_root()
        assert not stale.exists() and live.exists()
        assert oct(os.stat(root).st_mode & 0o777) == "0o711"
        os.rmdir(root)
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)


@needs_root
def test_the_sweep_leaves_what_is_not_our_own_directory_and_does_not_stop_at_it():
    """Named like a dead process's root but another user's (one without a name: a program run as a sandbox
    uid in rlimits_only can make it in /tmp), a symlink (to a directory of ours), or not quite our pattern:
    left where they are, and the stale root beside them is still removed."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    named = pathlib.Path(tempfile.gettempdir(), f"{sandbox_dirs.RUN_ROOT_PREFIX}{dead.pid}")
    stale, foreign, link = (pathlib.Path(f"{named}-{suffix}") for suffix in ("stale", "foreign", "link"))
    target = pathlib.Path(tempfile.mkdtemp(prefix="r1jax-test-"))
    (target / "keep").write_text("x")
    (stale / "run-x").mkdir(parents=True)
    foreign.mkdir()
    os.chown(foreign, 2_999_999, 2_999_999)  # no user of that id
    link.symlink_to(target)
    named.mkdir()  # no mkdtemp suffix
    try:
        os.rmdir(sandbox_dirs.make_run_root())
        assert not stale.exists()
        assert foreign.is_dir() and link.is_symlink() and (target / "keep").exists() and named.is_dir()
    finally:
        for path in (stale, foreign, target, named):
            shutil.rmtree(path, ignore_errors=True)
        link.unlink(missing_ok=True)


def test_reward_workers_are_not_dumpable():
    code = ("import ctypes\nfrom r1jax.rl.rewards import worker\nworker.initialize(0, (), ())\n"
            "print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))")  # 3: PR_GET_DUMPABLE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "0", out.stderr[-500:]


def test_the_pool_runs_programs_under_its_run_root_and_removes_it_at_close():
    rewards = RewardsConfig(names=("code",), weights=(1.0,), code=CodeConfig(wall_s=5, sandbox="rlimits_only"))
    item = ScoreItem("", "```python\nimport os\nprint(os.path.dirname(os.path.dirname(os.getcwd())))\n```", "",
                     task="code", tests='[{"input": "", "output": "x\\n"}]')
    with RewardPool(rewards, PoolConfig(workers=1, timeout_s=30)) as pool:
        root = pool.run_root
        assert os.path.isdir(root) and pool.score_batch([item])[0].status == "ok"
    assert not os.path.exists(root)


@pytest.mark.parametrize("stopped_in", ["_start", "_warm_up"])
def test_a_pool_stopped_while_it_starts_removes_its_run_root_and_stops_its_workers(monkeypatch, stopped_in):
    """A SIGTERM (raised as an exception by r1jax score and eval) or Ctrl-C while the workers started: the pool was
    never made, so no `with` closed it, and its run root stayed in /tmp (and its pebble pool ran on)."""
    from r1jax.errors import Interrupted

    made, real = [], getattr(RewardPool, stopped_in)

    def stop(self):
        made.append(self)
        if stopped_in == "_warm_up":
            real(self)  # _warm_up: the workers started, then the stop
        raise Interrupted(15)

    monkeypatch.setattr(RewardPool, stopped_in, stop)
    rewards = RewardsConfig(names=("code",), weights=(1.0,), code=CodeConfig(wall_s=5, sandbox="rlimits_only"))
    with pytest.raises(Interrupted):
        RewardPool(rewards, PoolConfig(workers=1, timeout_s=30), tasks=["code"])
    (pool,) = made
    assert not os.path.exists(pool.run_root)
    if stopped_in == "_warm_up":
        assert not pool._pool.active  # pebble's pool stopped


def test_a_pool_stopped_again_while_it_closes_still_removes_its_run_root():
    """A second SIGTERM (r1jax score and eval raise it in the main thread) or Ctrl-C as the pool closed raised out
    of close before the run root was removed: it stayed in /tmp until a later pool swept it."""
    from r1jax.errors import Interrupted

    rewards = RewardsConfig(names=("code",), weights=(1.0,), code=CodeConfig(wall_s=5, sandbox="rlimits_only"))
    pool = RewardPool(rewards, PoolConfig(workers=1, timeout_s=30), tasks=["code"])
    stop = pool._pool.stop

    def stopped_again():
        raise Interrupted(15)

    pool._pool.stop = stopped_again
    try:
        with pytest.raises(Interrupted):
            pool.close()
        assert not os.path.exists(pool.run_root)
    finally:
        stop()
        pool._pool.join(timeout=10)


@needs_bwrap
def test_bwrap_runs_programs_with_a_python_of_a_virtual_environment_under_tmp(tmp_path):
    """A venv under /tmp: its directory was bound before /tmp's tmpfs, which hid it (every code reward a
    sandbox_error, and the check blamed user namespaces)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    probe = ("from r1jax.rl.rewards import sandbox\n"
             "run = sandbox.run_python('import os; open(\"/tmp/x\", \"w\").write(\"1\"); print(6 * 7)', mode='bwrap',"
             " limits=sandbox.SandboxLimits(wall_s=30))\n"
             "print(run.status, run.stdout.strip().decode(), sandbox.check_sandbox('bwrap').split(' ')[0])")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert str(tmp_path).startswith("/tmp/") and out.stdout.split() == ["ok", "42", "bwrap"], out.stderr[-2000:]


SMALL = sandbox.SandboxLimits(wall_s=5.0, cpu_s=4, memory_mb=256, processes=16, file_mb=1, open_files=32,
                              output_bytes=65536, tmp_mb=16)


def test_a_file_past_file_mb_cannot_be_written():
    """RLIMIT_FSIZE: a 3 MB write under a 1 MB limit is refused or cut at 1 MB."""
    run = sandbox.run_python("import signal, tempfile\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                             "f = tempfile.TemporaryFile()\ntry:\n    f.write(b'x' * (3 << 20)); f.flush()\n"
                             "    print('wrote', f.tell())\nexcept OSError as e:\n    print('refused', e.errno)",
                             limits=SMALL)
    assert run.status == "ok", run.detail
    assert run.stdout.startswith(b"refused") or int(run.stdout.split()[1]) <= 1 << 20, run.stdout


def test_open_files_past_the_limit_are_refused():
    """RLIMIT_NOFILE: at most `open_files` descriptors, the three standard ones among them."""
    run = sandbox.run_python("fs = []\ntry:\n    while len(fs) < 200:\n        fs.append(open('/dev/null'))\n"
                             "except OSError:\n    pass\nprint(len(fs))", limits=SMALL)
    assert run.status == "ok", run.detail
    assert 16 < int(run.stdout) < SMALL.open_files, run.stdout


def test_endless_output_is_cut_at_the_limit_not_at_the_wall_time():
    """A program printing without end is stopped once its output passes `output_bytes` (output_limit), not left
    to hold a worker until the wall time."""
    start = time.monotonic()
    run = sandbox.run_python("import time\nwhile True:\n    print('x' * 1000, flush=True)\n    time.sleep(0.001)",
                             limits=SMALL)
    assert run.status == "output_limit", (run.status, run.detail)
    assert len(run.stdout) <= SMALL.output_bytes
    assert time.monotonic() - start < SMALL.wall_s / 2


def test_scoring_processes_whose_pids_differ_by_a_million_run_programs_as_different_users(monkeypatch):
    """As root each scoring process's programs run as a uid of their own (RLIMIT_NPROC, and the kill of a run's
    leftover processes by uid, count only its own): uid = BASE + pid % 10^6 gave workers 1,000,123 and 2,000,123
    one uid where pids pass a million (systemd's pid_max is 4,194,304)."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    uids = set()
    for pid in (1_000_123, 2_000_123, 4_194_303):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        uids.add(sandbox.sandbox_uid())
    assert len(uids) == 3 and min(uids) >= sandbox.SANDBOX_UID_BASE and max(uids) < 2 ** 31
