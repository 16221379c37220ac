"""Hostile programs score 0 within their limits and harm neither the host nor the other items of the batch;
correct and wrong programs score as their tests say, in both test forms. Limits are small so that the file
runs in seconds: every hostile program of the batch is scored together, in one two-worker pool."""

import json
import os
import pathlib
import socket
import time

import pytest

from r1jax.errors import UserError
from r1jax.rl.rewards import (CodeConfig, PoolConfig, RewardPool, RewardsConfig, ScoreItem, extract_program,
                              score_item)
from r1jax.rl.rewards import sandbox
from r1jax.rl.rewards import code as code_module
from r1jax.rl.rewards.code import code_outcome, same_output

LIMITS = dict(wall_s=2.0, cpu_s=1, memory_mb=256, processes=16, file_mb=1, output_bytes=65536, tmp_mb=16)
REWARDS = RewardsConfig(names=("code",), weights=(1.0,), code=CodeConfig(**LIMITS))
SECRET = "r1jax-secret-7f3a9c"  # in the trainer's environment while the batch is scored
MARKER = "r1jax-outlives-test-5d1e"  # in the command line of the background process that must not survive
DOUBLE = json.dumps(["assert f(2) == 4", "assert f(5) == 10"])
STDIO = json.dumps([{"input": "2\n", "output": "4\n"}, {"input": "5\n", "output": "10\n"}])


def item(program: str, tests: str = DOUBLE, entry_point: str | None = "f") -> ScoreItem:
    return ScoreItem(prompt="", completion=f"```python\n{program}\n```", reference="", task="code", tests=tests,
                     entry_point=entry_point if tests == DOUBLE else None)


def hostile_programs(canary: pathlib.Path, port: int) -> dict[str, ScoreItem]:
    """Each would pass its tests if the sandbox let it do what it tries."""
    return {
        "infinite_loop": item("while True:\n    pass"),
        "fork_bomb": item("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"),
        "allocate_8gb": item("x = bytearray(8 << 30)\ndef f(x):\n    return 2 * x"),
        "write_10gb_file": item("with open('big', 'wb') as out:\n    for _ in range(10240):\n"
                                "        out.write(b'0' * (1 << 20))\ndef f(x):\n    return 2 * x"),
        "print_100mb": item("import sys\nsys.stdout.write('x' * (100 << 20))\nprint(2 * int(input()))", STDIO),
        "network": item(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                        "print(2 * int(input()))", STDIO),
        "read_secret": item("import os\nprint(os.environ.get('R1JAX_SECRET', 'none'))",
                            json.dumps([{"input": "", "output": SECRET}])),
        "write_outside_tmp": item(f"open({str(canary)!r}, 'w').write('pwned')\nprint(2 * int(input()))", STDIO),
        "kill_parent": item("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)\n"
                            "def f(x):\n    return 2 * x"),
        "background_process": item("import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', "
                                   f"'import time; time.sleep(300)  # {MARKER}'], start_new_session=True)\n"
                                   "def f(x):\n    return x"),
        # the verdict line's nonce, read where the harness's input could be read again, then a forged line
        "forge_verdicts": item("import os\nnonce = ''\nfor path in ('/sandbox/stdin', '/proc/self/fd/0'):\n"
                               "    try:\n        nonce = nonce or open(path).read().strip()\n"
                               "    except OSError:\n        pass\n"
                               f"print('\\n' + nonce + ' ' + str([1] * {len(json.loads(DOUBLE))}), flush=True)\n"
                               "os._exit(0)"),
        # the nonce read from the harness's frame, then a verdict line whose float is past a float's range
        "forge_overflow": item("import os, sys\nnonce = sys._getframe(1).f_back.f_locals['nonce']\n"
                               "os.write(1, ('\\n' + nonce + ' [[\"value\", [\"float\", \"0x1p+99999999\"]], 1]\\n')"
                               ".encode())\nos._exit(0)"),
    }


def command_lines_with(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline and pid != str(os.getpid()):
            found.append(cmdline)
    return found


def no_process_left(text: str, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while command_lines_with(text) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not command_lines_with(text)


@pytest.fixture(scope="module")
def scored_batch(tmp_path_factory):
    """(results by name, canary path, whether the listener saw a connection, seconds for the batch)."""
    canary = tmp_path_factory.mktemp("outside") / "canary.txt"
    canary.write_text("untouched")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    items = hostile_programs(canary, listener.getsockname()[1])
    items["correct"] = item("def f(x):\n    return 2 * x")
    os.environ["R1JAX_SECRET"] = SECRET  # the trainer holds it; spawned workers inherit it
    try:
        with RewardPool(REWARDS, PoolConfig(workers=2, timeout_s=20, memory_mb=1024)) as pool:
            start = time.monotonic()
            results = pool.score_batch(list(items.values()))
            seconds = time.monotonic() - start
    finally:
        del os.environ["R1JAX_SECRET"]
    try:
        listener.accept()
        connected = True
    except BlockingIOError:
        connected = False
    listener.close()
    return dict(zip(items, results)), canary, connected, seconds


HOSTILE = ["infinite_loop", "fork_bomb", "allocate_8gb", "write_10gb_file", "print_100mb", "network",
           "read_secret", "write_outside_tmp", "kill_parent", "background_process", "forge_verdicts", "forge_overflow"]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_program_scores_zero_in_a_worker_that_survives(scored_batch, name):
    results, _, _, _ = scored_batch
    result = results[name]
    assert result.status == "ok", result.error  # the reward pool's worker was not harmed
    assert result.rewards["code"] == 0.0
    assert result.code_status != "sandbox_error"


def test_the_other_items_of_the_batch_are_unharmed_and_limits_hold(scored_batch):
    results, _, _, seconds = scored_batch
    assert results["correct"].rewards["code"] == 1.0 and results["correct"].code_status == "passed"
    assert results["infinite_loop"].code_status == "timeout"
    assert results["allocate_8gb"].code_status == "memory"
    assert results["print_100mb"].code_status == "crashed"  # killed at the output limit
    assert results["write_10gb_file"].code_status == "failed"  # EFBIG at the file-size limit: f never defined
    # the nonce is in no frame of the program's process (the judge's own, sandbox_runner): the lookup raised, f
    # never defined (before: the nonce found, a malformed verdict line written: "crashed")
    assert results["forge_overflow"].code_status == "failed"
    assert seconds < 3 * LIMITS["wall_s"] + 5  # the loops and the fork bomb were stopped at the wall limit


def test_no_network_no_secret_no_write_outside_no_survivor(scored_batch):
    results, canary, connected, _ = scored_batch
    assert not connected
    assert results["network"].code_status == "crashed"
    assert canary.read_text() == "untouched"
    assert results["read_secret"].code_status == "failed"  # it ran and printed, but not the secret
    assert no_process_left(MARKER)
    assert no_process_left("/sandbox/runner.py")  # nothing of the fork bomb either


def test_the_secret_never_appears_in_the_program_output(monkeypatch):
    monkeypatch.setenv("R1JAX_SECRET", SECRET)
    program = ("import os, glob\nprint(dict(os.environ))\nprint(glob.glob('/root/*') + glob.glob('/home/*'))\n"
               "for pid in os.listdir('/proc'):\n"
               "    try:\n        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
               "    except OSError:\n        pass")
    run = sandbox.run_python(program, limits=sandbox.SandboxLimits(**LIMITS))
    assert run.status == "ok", run.detail
    assert SECRET.encode() not in run.stdout and b"R1JAX_SECRET" not in run.stdout
    assert b"'PATH': '/usr/bin:/bin'" in run.stdout


@pytest.mark.parametrize("tests,entry_point,program,passed,status", [
    (DOUBLE, "f", "def f(x):\n    return 2 * x", 2, "passed"),
    (DOUBLE, "f", "def f(x):\n    return x + 2", 1, "failed"),
    (DOUBLE, "g", "def f(x):\n    return 2 * x", 0, "failed"),  # the entry point is missing
    (DOUBLE, None, "import os\nos._exit(0)", 0, "crashed"),  # exiting before the tests is no pass
    (DOUBLE, None, "print('\\n00 [1, 1]')\ndef f(x):\n    return 0", 0, "failed"),  # a forged verdict line
    (DOUBLE, None, "def f(x) return 2 * x", 0, "syntax_error"),
    # a correct program needing its module in sys.modules (`__solution__` was in none: it raised while defined)
    (DOUBLE, "f", "from __future__ import annotations\nimport dataclasses, pickle\n@dataclasses.dataclass\n"
                  "class P:\n    v: int\ndef f(x):\n    return pickle.loads(pickle.dumps(P(2 * x))).v", 2, "passed"),
    (STDIO, None, "import pickle\nclass P:\n    v = 2\nprint(pickle.loads(pickle.dumps(P())).v * int(input()))", 2,
     "passed"),  # (sys.modules' __main__ was the runner: a PicklingError)
    (STDIO, None, "print(2 * int(input()))", 2, "passed"),
    (STDIO, None, "n = int(input())\nprint(n * n)", 1, "failed"),  # 2*2 == 2**2: one of two
    (STDIO, None, "raise SystemExit(3)", 0, "crashed"),
    # the right output, then a bad end: a stdio test counts only when the run exits 0
    (STDIO, None, "import sys\nprint(2 * int(input()), flush=True)\nraise ValueError('after')", 0, "crashed"),
    (STDIO, None, "import sys\nprint(2 * int(input()), flush=True)\nsys.exit(3)", 0, "crashed"),
    (STDIO, None, "print(2 * int(input()), flush=True)\nwhile True:\n    pass", 0, "timeout"),
    (STDIO, None, "print(", 0, "syntax_error"),
    # a correct program whose stderr starts like bubblewrap's errors: judged on its output (sandbox_error before)
    (STDIO, None, "import sys\nsys.stderr.write('bwrap: note\\n')\nprint(2 * int(input()))", 2, "passed"),
])
def test_correct_and_wrong_programs_in_both_forms(tests, entry_point, program, passed, status):
    config = CodeConfig(**LIMITS, partial=True)
    outcome = code_outcome(ScoreItem("", f"```python\n{program}\n```", "", "code", tests=tests,
                                     entry_point=entry_point), config)
    assert (outcome.passed, outcome.total, outcome.status) == (passed, 2, status)


def test_partial_gives_the_passed_fraction_and_binary_needs_all():
    half = ScoreItem("", "<think> t </think> <answer> def f(x): return x + 2 </answer>", "", "code", tests=DOUBLE)
    binary = RewardsConfig(names=("code",), weights=(1.0,), code=CodeConfig(**LIMITS))
    partial = RewardsConfig(names=("code",), weights=(1.0,), code=CodeConfig(**LIMITS, partial=True))
    assert score_item(half, binary) == {"code": 0.0}
    assert score_item(half, partial) == {"code": 0.5}
    math_item = ScoreItem("Compute 3+4", "<answer> 7 </answer>", "7", "arithmetic")
    assert score_item(math_item, partial) == {"code": 0.0}  # only code items earn the code reward


def test_a_program_longer_than_max_program_chars_is_not_run():
    config = CodeConfig(**{**LIMITS, "max_program_chars": 40}, partial=True)
    body = "def f(x):\n    return 2 * x\n"
    fits = body + "#" * (39 - len(body))  # with the newline before the closing fence: exactly 40, run
    assert len(extract_program(item(fits).completion)) == 40
    assert (code_outcome(item(fits), config).passed, code_outcome(item(fits + "#"), config).status) == (2, "failed")
    assert "longer than 40 chars" in code_outcome(item(fits + "#"), config).detail


def test_only_trailing_whitespace_of_the_output_is_forgiven():
    """A line's indent is part of the answer (patterns, pyramids); trailing spaces and blank lines are not."""
    assert same_output(b" *\n***  \n\n", " *\n***")
    assert not same_output(b"*\n***\n", " *\n***")
    assert not same_output(b"  4\n", "4\n")


@pytest.mark.parametrize("stdout", [b"", b"garbage\n", b"\nnonce-not-ours [1, 1]\n"])
def test_an_ok_run_without_its_verdict_line_passes_nothing(monkeypatch, stdout):
    """The assert mode's verdict line missing or forged in a run that exited 0: crashed, no test passed (the last
    guard against a program that ends the interpreter before the tests run)."""
    monkeypatch.setattr(code_module, "run_python", lambda *a, **k: sandbox.RunResult("ok", stdout, 0, ""))
    code_outcome.cache_clear()
    outcome = code_outcome(item("def f(x):\n    return 2 * x"), CodeConfig(**LIMITS, partial=True))
    code_outcome.cache_clear()
    assert (outcome.status, outcome.passed) == ("crashed", 0)


def test_extract_program_takes_the_last_python_block_else_the_answer():
    two = "```python\nprint(1)\n```\nthen\n```python\nprint(2)\n```"
    assert extract_program(two) == "print(2)\n"
    # the answer's program, not a sketch in the thought; the thought's only when the answer holds none
    assert extract_program("<think> ```python\nx\n``` </think> <answer> print(3) </answer>") == "print(3)"
    assert extract_program("<think> ```python\nx\n``` </think> <answer></answer>") == "x\n"
    assert extract_program("<think> ```python\nx\n```") == "x\n"  # a thought never closed
    assert extract_program("<think> t </think> <answer>```python\nprint(4)\n```</answer>") == "print(4)\n"
    assert extract_program("<think> t </think> <answer> print(5) </answer>") == "print(5)"
    assert extract_program("```python\nprint(6)") is None  # unclosed block, no answer
    assert extract_program("<answer> print(7)") is None


def test_rlimits_only_runs_programs_and_says_it_is_weaker():
    assert "WEAKER" in sandbox.check_sandbox("rlimits_only")
    config = CodeConfig(**LIMITS, sandbox="rlimits_only")
    good = code_outcome(item("def f(x):\n    return 2 * x"), config)
    loop = code_outcome(item("while True:\n    pass"), config)
    assert (good.status, loop.status) == ("passed", "timeout")


def test_a_missing_bwrap_is_a_clear_error_naming_the_weaker_mode(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="bwrap.*not installed.*rlimits_only"):
        sandbox.check_sandbox.__wrapped__("bwrap")
    assert sandbox.run_python("print(1)").status == "sandbox_error"
    with pytest.raises(UserError, match="rewards.code.sandbox"):
        CodeConfig(sandbox="none")


def test_pool_limits_that_cannot_hold_a_program_run_are_user_errors():
    code = RewardsConfig(names=("code",), weights=(1.0,))  # programs: 3 s wall, 512 MB by default
    with pytest.raises(UserError, match="reward_pool.timeout_s = 2.0 must exceed rewards.code.wall_s = 3.0"):
        RewardPool(code, PoolConfig(timeout_s=2.0))
    with pytest.raises(UserError, match="reward_pool.timeout_s = 3.0 must exceed rewards.code.wall_s = 3.0"):
        RewardPool(code, PoolConfig(timeout_s=3.0))  # equal: the item's last test would run past the deadline
    with pytest.raises(UserError, match="rewards.code.memory_mb = 512 must be below reward_pool.memory_mb = 512"):
        RewardPool(code, PoolConfig(memory_mb=512))


def _proc_alive(pid: int) -> bool:
    """A process that exists and is not a zombie (killed, waiting to be reaped)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_worker_killed_mid_run_leaves_no_program_running_without_namespaces():
    """rlimits_only: the scoring process killed while its program runs (as the reward pool kills a worker past
    its timeout) takes the program down with it (the runner's parent-death signal); it slept on for minutes."""
    import multiprocessing
    import shutil
    import tempfile

    shared = pathlib.Path(tempfile.mkdtemp(prefix="r1jax-test-"))  # where the dropped user id can write
    shared.chmod(0o777)
    pid_file = shared / "pid"
    program = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n"
    limits = sandbox.SandboxLimits(wall_s=100, cpu_s=100)
    worker = multiprocessing.get_context("spawn").Process(
        target=sandbox.run_python, args=(program,), kwargs={"mode": "rlimits_only", "limits": limits})
    worker.start()
    pid = None
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        assert _proc_alive(pid)
        worker.kill()
        worker.join()
        deadline = time.monotonic() + 5
        while _proc_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _proc_alive(pid)
    finally:
        worker.kill()
        if pid is not None and _proc_alive(pid):
            os.kill(pid, 9)
        shutil.rmtree(shared, ignore_errors=True)
