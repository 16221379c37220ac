"""`r1jax train` as 2 JAX processes x 4 CPU devices (gloo collectives) against 1 process with 8 devices.

- With the sampler on devices of its own (`sampling.devices` 4: the last 2 of each process; the weights go to
  it by sharding.transfer's copy within each process), a SIGTERM to one process stops both at the same step
  with a checkpoint (exit 0); the resumed 2-process run then equals the 1-process run (GRPO sampling two
  batches ahead, `grpo.max_staleness` 2, so the checkpoint holds the queue of batches sampled ahead; packed
  update rows with routing replay, laid out on each host from rows split over the processes): the same
  data, samples, rewards, evaluations and discrete metrics exactly; losses and parameters to float rounding.
  Bit equality is not on offer: cross-process sums go through gloo, whose summation order differs from the
  in-process one (the last bits of a loss differ, ~1e-7 relative).
- A stopped (SIGSTOP) process makes the other exit non-zero within the peer timeout, naming it.
Two processes whose sampler shares the trainer's devices are not run here any more (the stop/resume pair did
until it moved to devices of its own; the suite's time allows one such pair): one process runs that path.
- Under several processes every process draws the global batch (what one process would draw).

The runs share JAX's persistent compilation cache (in pytest's cache directory): the resume reuses the first
runs' programs, and so does a later session; the stalled-peer pair is stopped once it has started up.
"""

import json
import math
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import yaml

from r1jax.rl.checkpoint import load_policy
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.rules import Rules

from tests.rl.conftest import TRAIN_CONFIG, subprocess_env

TIMING = {"wall_time", "tokens_per_s", "step_time_s", "pool/recycled"}  # and the process's own worker count
TOTAL_STEPS = 6  # 1 SFT + 5 GRPO


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    """train_tiny.yaml shrunk: 1 SFT step, 5 GRPO steps, checkpoints only at the stages' ends and the stop (the
    one the resume needs: a checkpoint every step made the one-process run 27.5 s instead of 23 s), evaluation
    shaped like a GRPO batch (4 prompts x 2 samples) so it reuses the sampler's compiled program; the sampler
    on devices of its own, 4 of the 8."""
    config = yaml.safe_load(TRAIN_CONFIG.read_text())
    config["sampling"]["devices"] = 4
    config["stages"] = [{"name": "sft", "kind": "sft", "steps": 1, "batch_size": 8, "lr": 0.003},
                        {"name": "grpo", "kind": "grpo", "steps": 5}]
    config["grpo"]["max_staleness"] = 2  # GRPO's steps update on batches sampled 0, 1 and 2 versions back
    # packed update rows with routing replay: the host lays out every row, reading positions and routes that
    # were split over the processes (np.asarray of a non-addressable array failed each GRPO step)
    config["grpo"]["pack"] = True
    config["update"] = {"routing_replay": True}
    config["eval"] = {"num_problems": 4, "samples": 2, "batch_size": 4, "num_logged_samples": 2}
    config["checkpoint"] = {"every": 100, "keep": 10}
    config["plots"] = False  # (the runs compare metrics and weights; tests/rl/test_train.py checks the plots)
    path = tmp_path_factory.mktemp("multihost") / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def env():
    """The subprocesses' environment, with the session's persistent compilation cache (tests/conftest.py),
    compiled fast (LLVM at -O0: the module's runs took 126 s optimised, 91 s so). At -O0 the 2-process sums
    drift further from the 1-process ones: the weights differed by up to 3.7e-6 at the last step here, and by
    2.5e-5 in an earlier config; the parameter tolerance below is twice that."""
    return subprocess_env(fast_compile=True)


@pytest.fixture(scope="module")
def one_process_run(config_path, env, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("one-process")
    result = subprocess.run([sys.executable, "-m", "r1jax", "--cpu-devices", "8", "train", str(config_path),
                             "--run-dir", str(run_dir)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pair:
    """Two `r1jax train` processes of one run (4 CPU devices each), output to files."""

    def __init__(self, run_dir, config_path, env, *extra):
        port, self.run_dir, self.logs = free_port(), run_dir, []
        self.procs = []
        for index in range(2):
            log = run_dir.parent / f"{run_dir.name}.{index}.{time.time_ns()}.log"
            self.logs.append(log)
            command = [sys.executable, "-m", "r1jax", "--cpu-devices", "4", "train", str(config_path),
                       "--run-dir", str(run_dir), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                       "--process-id", str(index), *extra]
            with log.open("w") as out:
                self.procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))

    def wait_for_step(self, step: int, timeout: float = 900) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline and all(p.poll() is None for p in self.procs):
            if any(r["global_step"] >= step for r in rows(self.run_dir)):
                return
            time.sleep(0.2)
        raise AssertionError(f"step {step} not reached: {[p.poll() for p in self.procs]}\n{self.output(0)[-3000:]}")

    def wait_for_output(self, index: int, text: str, timeout: float = 900) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline and all(p.poll() is None for p in self.procs):
            if text in self.output(index):
                return
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not logged: {[p.poll() for p in self.procs]}\n{self.output(0)[-3000:]}")

    def wait(self, timeout: float = 900) -> list[int]:
        return [p.wait(timeout=timeout) for p in self.procs]

    def output(self, index: int) -> str:
        return self.logs[index].read_text()

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def rows(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_rows_match(a, b):
    """Equal keys and discrete values; floats equal to rounding (see the module docstring)."""
    assert [r["global_step"] for r in a] == [r["global_step"] for r in b]
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for key in {k for k in x if k not in TIMING and not k.startswith("time/")}:
            if isinstance(x[key], float) and isinstance(y[key], float):
                assert math.isclose(x[key], y[key], rel_tol=1e-5, abs_tol=1e-6), (x["global_step"], key, x[key], y[key])
            else:
                assert x[key] == y[key], (x["global_step"], key, x[key], y[key])


def params(run_dir):
    from flax import nnx

    mesh = build_mesh(ShardingConfig(fsdp=-1))
    _, policy = load_policy(run_dir, mesh, Rules.preset("fsdp_expert_tensor"))
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(policy))]


def evals(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    return [{k: v for k, v in e.items() if k != "checkpoint"} for e in summary["evals"]]


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_resumed_run_equals_one_process(
        one_process_run, config_path, env, tmp_path):
    run_dir = tmp_path / "two-processes"
    pair = Pair(run_dir, config_path, env)
    try:
        pair.wait_for_step(2)  # inside GRPO (the notice takes a step or two to spread: steps sampled ahead are quick)
        pair.procs[1].send_signal(signal.SIGTERM)
        assert pair.wait() == [0, 0], pair.output(0)[-3000:] + pair.output(1)[-3000:]
    finally:
        pair.kill()
    stopped = json.loads((run_dir / "summary.json").read_text())["stopped_at_step"]
    # the signal comes after step 2's row is written, before or after that step's boundary agrees on stopping
    # (the coordination service picks the first step every process can still reach), so the stop is at step 2
    # or later; it can be the stage's last: that stop checkpoints too (a resume then only evaluates and closes
    # the stage), and everything below holds for it
    assert 2 <= stopped <= TOTAL_STEPS
    assert max(r["global_step"] for r in rows(run_dir)) == stopped
    assert (run_dir / "checkpoints" / str(stopped)).is_dir()  # one collective checkpoint at the agreed step
    assert f"stopped by signal 15 at step {stopped}; latest checkpoint: step {stopped}" in pair.output(0)

    pair = Pair(run_dir, config_path, env)
    try:
        assert pair.wait() == [0, 0], pair.output(0)[-3000:] + pair.output(1)[-3000:]
    finally:
        pair.kill()
    assert re.search(rf"resuming .* from step {stopped} ", " ".join(pair.output(0).split()))  # rich wraps lines
    assert "resuming" not in pair.output(1)  # only process 0 logs
    assert_rows_match(rows(run_dir), rows(one_process_run))
    # GRPO's updates ran on batches 0, 1, then 2 versions old, across the stop and the resume
    assert [r["staleness"] for r in rows(run_dir) if "staleness" in r] == [0, 1, 2, 2, 2]
    assert evals(run_dir) == evals(one_process_run)
    for a, b in zip(params(run_dir), params(one_process_run)):
        np.testing.assert_allclose(a, b, rtol=0, atol=5e-5)


def test_a_stopped_peer_makes_the_other_fail_naming_it_within_the_timeout(config_path, env, tmp_path):
    timeout = 10
    pair = Pair(tmp_path / "stalled", config_path, env, "--peer-timeout-s", str(timeout))
    try:
        # both processes have started up: process 0 logs the run directory once every process has passed the
        # check that they resolved one config (through the coordination service); the stop comes before the
        # trainer sets up and compiles (waiting for step 1 cost both processes that work too)
        pair.wait_for_output(0, "run directory:")
        pair.procs[1].send_signal(signal.SIGSTOP)
        stopped_at = time.time()
        code = pair.procs[0].wait(timeout=timeout + 60)
        waited = time.time() - stopped_at
    finally:
        pair.kill()
    assert code != 0
    assert waited < timeout + 30
    # Blocked in a collective: JAX's heartbeat check ends the process naming the task; at a barrier: ours
    assert re.search(r"process 1 did not reach|stopped sending heartbeats\):\s*1\b|Task 1 heartbeat timeout",
                     pair.output(0)), pair.output(0)[-3000:]


def test_every_process_draws_the_global_batch(monkeypatch):
    from r1jax.rl.data import DataConfig, make_iterator

    config = DataConfig(tasks=("arithmetic",), seed=5)
    one = make_iterator(config, 8, process_index=0, process_count=1)
    expected = [next(one) for _ in range(3)]
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    each = make_iterator(config, 8)  # what a stage asks for under 2 processes: the global batch
    assert [next(each) for _ in range(3)] == expected
    assert each.get_state() == one.get_state()
