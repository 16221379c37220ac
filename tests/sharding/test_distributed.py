"""Multi-process start-up options, and a bounded barrier that names the peer that never arrives (two real
JAX processes on this machine)."""

import os
import socket
import subprocess
import sys
import time

import pytest

from r1jax.errors import UserError
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
    assert Launch.resolve(mode="auto", environ={}).auto
    assert Launch.resolve(environ={"R1JAX_DISTRIBUTED": "auto"}).enabled


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator="nohost"), "expected HOST:PORT"),
    (dict(coordinator="h:1", num_processes=2), "needs --num-processes N and --process-id I"),
    (dict(num_processes=2, process_id=0), "without --coordinator"),
    (dict(coordinator="h:1", num_processes=2, process_id=2), r"--process-id 2 is not in \[0, 2\)"),
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


PEER = """
import os, sys, time
from r1jax.errors import UserError
from r1jax.sharding import distributed
launch = distributed.Launch.resolve(sys.argv[1], 2, int(sys.argv[2]), peer_timeout_s=3)
distributed.initialize(launch)
import jax
try:
    if sys.argv[3] == "config":
        distributed.check_same("config", "seed: 0" if jax.process_index() == 0 else "seed: 1", "the config")
    else:
        if jax.process_index() == 1:
            time.sleep(60)  # alive (JAX's heartbeats go on) but never arrives
        distributed.barrier("step-1", "the end of step 1")
except UserError as err:
    print(err, flush=True)
    os._exit(3)
"""


def run_pair(mode: str):
    """(return code, stdout) of process 0 of two processes running PEER; process 1 is killed after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", PEER, address, str(i), mode], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    try:
        out, err = procs[0].communicate(timeout=120)
        return procs[0].returncode, out + err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_a_peer_that_never_arrives_is_named_within_the_timeout():
    start = time.time()
    code, out = run_pair("barrier")
    assert code == 3, out[-2000:]
    assert "process 1 did not reach the end of step 1 within 3 s" in out
    assert time.time() - start < 60


def test_processes_started_with_different_configs_are_told_so():
    code, out = run_pair("config")
    assert code == 3, out[-2000:]
    assert "the config of process 1 differs from process 0's" in out
