"""Multi-process start-up options, a bounded barrier that names the peer that never arrives, and a process
that stops on an error stopping the others at once, naming it (two real JAX processes on this machine)."""

import os
import socket
import subprocess
import sys
import time

import jax
import pytest

from r1jax.errors import UserError
from r1jax.sharding import distributed
from r1jax.sharding.distributed import Launch, describe_barrier_failure

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_launch_takes_flags_then_the_environment():
    assert not Launch.resolve(environ={}).enabled
    flags = Launch.resolve("10.0.0.1:1234", 4, 3, peer_timeout_s=20, environ={})
    assert (flags.coordinator, flags.num_processes, flags.process_id, flags.peer_timeout_s) == (
        "10.0.0.1:1234", 4, 3, 20)
    env = {"R1JAX_COORDINATOR": "host:99", "R1JAX_NUM_PROCESSES": "2", "R1JAX_PROCESS_ID": "1",
           "R1JAX_PEER_TIMEOUT_S": "7.5"}
    assert Launch.resolve(environ=env) == Launch("host:99", 2, 1, False, 7.5)
    assert Launch.resolve(process_id=0, environ=env).process_id == 0  # a flag beats the environment
    assert Launch.resolve("flag:1", 3, 2, peer_timeout_s=9, environ=env) == Launch("flag:1", 3, 2, False, 9)
    # auto detects what is not given (the coordinator) and takes what is
    assert Launch.resolve(mode="auto", num_processes=4, process_id=1, environ={}) == Launch(None, 4, 1, True)
    assert Launch.resolve(mode="auto", environ={}).auto
    assert Launch.resolve(environ={"R1JAX_DISTRIBUTED": "auto"}).enabled
    empty = dict.fromkeys(("R1JAX_COORDINATOR", "R1JAX_NUM_PROCESSES", "R1JAX_PROCESS_ID", "R1JAX_DISTRIBUTED",
                           "R1JAX_PEER_TIMEOUT_S"), "")  # exported but empty (a launch script's blank): unset
    assert Launch.resolve(environ=empty) == Launch()


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator="nohost"), "expected HOST:PORT"),
    (dict(coordinator="h:1", num_processes=2), "needs --num-processes N and --process-id I"),
    (dict(num_processes=2, process_id=0), "without --coordinator"),
    (dict(coordinator="h:1", num_processes=2, process_id=2), r"--process-id 2 is not in \[0, 2\)"),
    (dict(coordinator="h:1", num_processes=0, process_id=0), r"^--num-processes 0: expected at least 1$"),
    (dict(mode="slurm"), "the only mode is 'auto'"),
    (dict(peer_timeout_s=0), "must be a finite number > 0"),
    (dict(peer_timeout_s=float("nan")), "--peer-timeout-s nan: must be a finite number > 0"),  # tracebacks before
    (dict(peer_timeout_s=float("inf")), "--peer-timeout-s inf: must be a finite number > 0"),
    (dict(environ={"R1JAX_PEER_TIMEOUT_S": "abc"}), "--peer-timeout-s: environment value 'abc' is not a number"),
])
def test_bad_launch_options_are_named(kwargs, message):
    with pytest.raises(UserError, match=message):
        Launch.resolve(**{"environ": {}, **kwargs})


def test_barrier_errors_name_the_missing_processes():
    jax_0_10 = ("DEADLINE_EXCEEDED: Barrier timed out. Id: r1jax/step-4::0.\n# of tasks that reached the barrier: "
                "1/2.\nThe first task at the barrier: 0. Some timed out task names:\n1\n\n\nRPC: /xla.coordination")
    assert describe_barrier_failure(jax_0_10, "the end of step 4", 5).startswith(
        "process 1 did not reach the end of step 4 within 5 s")
    named = "Some timed out task names:\n/job:jax_worker/replica:0/task:1\n/job:jax_worker/replica:0/task:3\n\n"
    assert describe_barrier_failure(named, "x", 5).startswith("processes 1, 3 did not reach x")
    assert "lost each other at x: INTERNAL: boom" in describe_barrier_failure("INTERNAL: boom\nmore", "x", 5)
    assert distributed.first_line(RuntimeError()) == "RuntimeError"  # a message-less error still says something
    unhealthy = "UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats): 2\n\nRPC: /x"
    assert describe_barrier_failure(unhealthy, "x", 5).startswith("process 2 did not reach x within 5 s")
    heartbeat = "ABORTED: Task 3 heartbeat timeout. This indicates that the remote task has failed"
    assert describe_barrier_failure(heartbeat, "x", 5).startswith("process 3 did not reach x within 5 s")


PEER = """
import os, sys, tempfile, time
from r1jax.errors import UserError
from r1jax.sharding import distributed, peer_errors
import jax
if sys.argv[3] == "devices":  # process 1 holds 2 CPU devices, process 0 one
    jax.config.update("jax_num_cpu_devices", 1 + int(sys.argv[2]))
launch = distributed.Launch.resolve(sys.argv[1], 2, int(sys.argv[2]), peer_timeout_s=3)
try:
    distributed.initialize(launch)
    if sys.argv[3] == "config":
        distributed.check_same("config", "seed: 0" if jax.process_index() == 0 else "seed: 1", "the config")
    elif sys.argv[3] in ("least", "shared", "unshared", "least+shared"):  # least+shared: one pair, both checks
        if sys.argv[3].startswith("least"):  # the same answer on both, however often asked; None bounds nothing
            mine = [(9, 4), (None, 6), (None, None)]
            print([distributed.least("free", pair[jax.process_index()], "x") for pair in mine], flush=True)
        if sys.argv[3].endswith("shared"):
            # "unshared": each process a directory of its own
            base = sys.argv[4] if sys.argv[3] != "unshared" else tempfile.mkdtemp()
            distributed.check_shared_directory(base, "--run-dir")
            print("shared", flush=True)
    else:
        if jax.process_index() == 1:
            time.sleep(60)  # alive (JAX's heartbeats go on) but never arrives
        distributed.barrier("step-1", "the end of step 1")
except UserError as err:
    print(err, flush=True)
    peer_errors.stop_on_error(str(err), 3)  # as the r1jax program does: process 0 outlives the others' reads
    os._exit(3)
"""


# A command of the `r1jax` program (rl.cli.main) that stops on process 1 with a UserError or a bug while process
# 0 waits for it at a barrier, under a peer timeout far longer than the test waits
FAILING_COMMAND = """
import sys, types
from r1jax.errors import UserError
from r1jax.rl.cli import main as cli
from r1jax.sharding import distributed

def run(args):
    distributed.initialize(distributed.Launch.resolve(sys.argv[1], 2, int(sys.argv[2]), peer_timeout_s=600))
    import jax
    if sys.argv[3] == "both-user-error":
        raise UserError(f"process {jax.process_index()}'s data file is missing")
    if jax.process_index() == 1:
        if sys.argv[3] in ("user-error", "consequence"):
            raise UserError("data row 7 of train.jsonl has no 'prompt'")
        if sys.argv[3] == "interrupt":
            raise KeyboardInterrupt  # a second Ctrl-C (rl.train.preemption)
        raise KeyError("prompt")
    if sys.argv[3] == "consequence":  # a collective process 1 left fails here before the watcher's next look
        client = distributed.coordination_client()
        while not client.key_value_dir_get("r1jax/error/"):
            pass
        raise RuntimeError("UNKNOWN: Gloo AllGather failed: Connection closed by peer")
    distributed.barrier("step-1", "the end of step 1")

sys.modules["failing_command"] = types.SimpleNamespace(add_arguments=lambda parser: None, run=run, __doc__="")
cli.COMMANDS.append(("fail", "failing_command", "stops on process 1"))
sys.exit(cli.main(["fail"], as_program=False))
"""


def run_pair(mode: str, script: str = PEER, *extra: str):
    """[(return code, stdout + stderr)] of two processes running `script` (arguments: the coordinator, the
    process id, `mode`, `extra`); process 1 is killed once process 0 has ended (or given 60 s more)."""
    return finish_pair(start_pair(mode, script, *extra))


def start_pair(mode: str, script: str = PEER, *extra: str) -> list:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
    return [subprocess.Popen([sys.executable, "-c", script, address, str(i), mode, *extra], cwd=ROOT, env=env,
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]


def finish_pair(procs: list):
    results = []
    try:
        for p, timeout in zip(procs, (120, 60)):
            try:
                out, err = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            results.append((p.returncode, out + err))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_a_peer_that_never_arrives_is_named_within_the_timeout():
    start = time.time()
    (code, out), _ = run_pair("barrier")
    assert code == 3, out[-2000:]
    assert "process 1 did not reach the end of step 1 within 3 s" in out
    assert time.time() - start < 60


def test_processes_started_with_different_configs_are_told_so():
    (code, out), _ = run_pair("config")
    assert code == 3, out[-2000:]
    assert "the config of process 1 differs from process 0's" in out


@pytest.mark.parametrize("mode, reason, code", [
    ("user-error", "data row 7 of train.jsonl has no 'prompt'", 2),
    ("bug", "KeyError: 'prompt' (the traceback is in its log)", 1),
    ("interrupt", "interrupted (Ctrl-C)", 130),  # the others waited the peer timeout, then aborted (in `r1jax
    # train`, where the first Ctrl-C asks for a checkpoint, the reason says "a second Ctrl-C")
    ("consequence", "data row 7 of train.jsonl has no 'prompt'", 2),  # process 0's failure: no traceback
])
def test_a_process_that_stops_on_an_error_stops_the_others_at_once_naming_it(mode, reason, code):
    # before, the others waited the whole peer timeout (here 600 s), then aborted inside JAX without the reason
    # (and the failed process waited as long in JAX's shutdown barrier)
    start = time.time()
    (code_0, out_0), (code_1, out_1) = run_pair(mode, FAILING_COMMAND)
    assert time.time() - start < 60, (out_0[-2000:], out_1[-2000:])
    assert code_0 == 3 and f"r1jax: error: process 1 of this run stopped: {reason}" in out_0, out_0[-2000:]
    assert code_1 == code, out_1[-2000:]
    if mode in ("user-error", "consequence"):
        assert f"r1jax fail: error: {reason}" in out_1
        assert "Traceback" not in out_0 and "Gloo" not in out_0
    elif mode == "interrupt":
        assert "r1jax fail: interrupted" in out_1
    else:
        assert "Traceback" in out_1 and "KeyError: 'prompt'" in out_1


@pytest.fixture(scope="module")
def least_and_shared(tmp_path_factory):
    """One pair asked for the least values, then to check a directory both share (a pair each before: ~5 s of
    CPU time for two JAX processes' start-up); (its results, the directory)."""
    base = tmp_path_factory.mktemp("shared_run_dir")
    return run_pair("least+shared", PEER, str(base)), base


def test_processes_agree_on_the_least_value(least_and_shared):
    # the sampler's layout is chosen from the least free HBM of all processes' devices: each choosing from its
    # own picked different layouts on unequal hosts, whose collectives then never matched (a hang)
    results, _ = least_and_shared
    for code, out in results:
        assert code == 0, out[-2000:]
        assert "[4, 6, None]" in out, out[-2000:]


def test_processes_with_different_device_counts_are_told_so_at_start():
    # before, the run crashed inside Orbax at its first checkpoint
    for code, out in run_pair("devices"):
        assert code == 3, out[-2000:]
        assert "different numbers of devices (process 0: 1, process 1: 2)" in out, out[-2000:]


def test_a_run_directory_must_be_one_directory_for_every_process(least_and_shared):
    results, base = least_and_shared
    for code, out in results:
        assert code == 0 and "shared" in out, out[-2000:]
    assert os.listdir(base) == []  # the check leaves nothing behind
    for code, out in run_pair("unshared"):  # before, each process wrote its own directory, unnoticed
        assert code == 3, out[-2000:]
        assert "--run-dir" in out and "of process 1 is not the directory process 0 writes" in out, out[-2000:]


def test_an_error_on_every_process_at_once_ends_each_with_its_own_error():
    # before, process 0 (the coordination service's host) exited at once and process 1 aborted inside JAX
    # (SIGABRT, exit -6/134) for the lost coordinator: in 3 of 6 pairs; a pair takes ~2 s, so 4 are run, at
    # the same time (one after another they held a test worker ~16 s)
    pairs = [start_pair("both-user-error", FAILING_COMMAND) for _ in range(4)]
    results = [finish_pair(procs) for procs in pairs]  # each pair's processes are ended, whatever it found
    for pair in results:
        for index, (code, out) in enumerate(pair):
            assert code == 2, (index, out[-2000:])
            assert f"process {index}'s data file is missing" in out


def test_the_peer_timeout_bounds_jax_distributed_start_up_and_heartbeats(monkeypatch):
    seen = {}

    def fake_initialize(*args, **kwargs):
        seen.update(kwargs, args=args)
        raise RuntimeError("stop here")

    monkeypatch.setattr(jax.distributed, "initialize", fake_initialize)
    monkeypatch.setattr(jax.config, "update", lambda *a, **k: None)
    monkeypatch.setattr(distributed, "_peer_timeout_s", distributed._peer_timeout_s)  # restored at teardown
    with pytest.raises(UserError, match="stop here"):
        distributed.initialize(Launch("h:1234", 2, 1, False, 7.5))
    assert seen["args"] == ("h:1234", 2, 1)
    assert seen["initialization_timeout"] == seen["heartbeat_timeout_seconds"] == 8  # ceil(7.5)
    assert seen["shutdown_timeout_seconds"] == 8
    assert distributed.peer_timeout_s() == 7.5  # the barriers' wait too
    with pytest.raises(UserError, match=r"failed: stop here$"):  # the coordinator was given: no hint
        distributed.initialize(Launch("h:1234", 2, 1))
    with pytest.raises(UserError, match=r"stop here \(--distributed auto found no cluster: give --coordinator"):
        distributed.initialize(Launch(auto=True))


def test_a_barrier_waits_at_least_the_peer_timeout_and_longer_when_asked(monkeypatch):
    waits = []

    class Client:
        def wait_at_barrier(self, name, ms):
            waits.append(ms)

    monkeypatch.setattr(distributed, "multi_process", lambda: True)
    monkeypatch.setattr(distributed, "coordination_client", lambda: Client())
    monkeypatch.setattr(distributed, "_peer_timeout_s", 30.0)
    distributed.barrier("a", "a")
    distributed.barrier("b", "b", timeout_s=600)  # process 0's long work (a checkpoint): wait for it
    distributed.barrier("c", "c", timeout_s=5)
    assert waits == [30_000, 600_000, 30_000]


def test_the_largest_peer_timeout_and_process_count_are_taken_one_more_refused():
    assert Launch.resolve(peer_timeout_s=1e6, environ={}).peer_timeout_s == 1e6
    with pytest.raises(UserError, match="must be at most 1e"):
        Launch.resolve(peer_timeout_s=1e6 + 1, environ={})
    assert Launch.resolve("h:1", 2**31 - 1, 0, environ={}).num_processes == 2**31 - 1  # JAX's int32
    with pytest.raises(UserError, match=r"--num-processes 2147483648: expected at most 2147483647"):
        Launch.resolve("h:1", 2**31, 0, environ={})


def test_a_port_past_65535_is_refused():
    with pytest.raises(UserError, match="port 65536 is not in"):
        Launch.resolve("h:65536", 2, 0, environ={})
    assert Launch.resolve("h:65535", 2, 0, environ={}).coordinator == "h:65535"
