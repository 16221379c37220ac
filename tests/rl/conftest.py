"""A finished seconds-scale training run, shared by the trainer and CLI tests of this package, and the helpers
that start, stop and compare `r1jax train` subprocesses."""

import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.conftest import FAST_COMPILE_XLA_FLAGS

REPO = pathlib.Path(__file__).parents[2]
TRAIN_CONFIG = pathlib.Path(__file__).parent / "data" / "train_tiny.yaml"
TIMING = {"wall_time", "tokens_per_s", "step_time_s"}


def train_command(run_dir, config=TRAIN_CONFIG):
    return [sys.executable, "-m", "r1jax", "--cpu-devices", "2", "train", str(config), "--run-dir",
            str(run_dir)]


def subprocess_env(fast_compile: bool = True):
    """The environment of a CLI subprocess: one CPU device unless told (no test XLA_FLAGS), the test session's
    shared compilation cache, and (`fast_compile`) XLA's most expensive optimisations off
    (JAX_DISABLE_MOST_OPTIMIZATIONS: LLVM at -O0) and its quicker-to-compile CPU fusion emitters
    (tests/conftest.py). These runs are seconds of compute behind tens of seconds of
    compiling; the tests compare subprocess runs with each other, never with a program compiled in the test
    process, and the quick bench asserts its figures' plumbing, not their speed (its run: 110 s -> 67 s on a
    loaded 2-core host). The last bits of a result can differ from the optimised build's."""
    keep = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env = {**keep, "JAX_PLATFORMS": "cpu"}
    if fast_compile:
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
        env["XLA_FLAGS"] = " ".join(FAST_COMPILE_XLA_FLAGS)
    cache = os.environ.get("R1JAX_TEST_COMPILATION_CACHE")
    if cache:
        env.update({"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
    return env


def run_to_end(run_dir, config=TRAIN_CONFIG):
    # from the repository root: configs may load test modules into the reward workers (tests.rl.*)
    result = subprocess.run(train_command(run_dir, config), env=subprocess_env(), cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_signalled_at(run_dir, sig, global_step, config=TRAIN_CONFIG):
    """(exit code, stderr) of the training command with `sig` sent from inside the process right after the
    row of `global_step` (tests/rl/signal_at_step.py): a signal at a known step boundary."""
    command = [sys.executable, "-m", "tests.rl.signal_at_step", sig.name[len("SIG"):], str(global_step),
               *train_command(run_dir, config)[3:]]
    result = subprocess.run(command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    return result.returncode, result.stderr


def run_series(run_dir, stops, config=TRAIN_CONFIG, before=()):
    """The training command run once per stop of `stops` ("INT:5,TERM:9,none": a signal after that global
    step's row; none: to the end) in one process, each resuming the one before (tests/rl/signal_at_step.py's
    `series`), after those of each (run_dir, stops, config) of `before`: (exit code, [each run's stderr], [each
    finished run's exit code and run directory state], the whole stderr)."""
    from tests.rl.signal_at_step import THEN

    state = pathlib.Path(run_dir).parent / f"{pathlib.Path(run_dir).name}.series.jsonl"
    command = [sys.executable, "-m", "tests.rl.signal_at_step", "series", str(state)]
    for group_dir, group_stops, group_config in [*before, (run_dir, stops, config)]:
        command += [group_stops, *train_command(group_dir, group_config)[3:], THEN]
    command = command[:-1]
    result = subprocess.run(command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    from tests.rl.signal_at_step import SERIES_MARK

    states = [json.loads(line) for line in state.read_text().splitlines()] if state.exists() else []
    return result.returncode, result.stderr.split(SERIES_MARK)[1:], states, result.stderr


def console(stderr: str) -> str:
    """The run's console log as one line: rich wraps long lines at the terminal's width."""
    return " ".join(stderr.split())


def metrics_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(rows):
    """Metrics rows without their timings and the process's own worker count (a resumed run's pool is new)."""
    return [{k: v for k, v in r.items() if k not in TIMING | {"pool/recycled"} and not k.startswith("time/")}
            for r in rows]


def summary(run_dir) -> dict:
    """summary.json with the run directory's path replaced (its checkpoint and dataset paths name it)."""
    return json.loads((run_dir / "summary.json").read_text().replace(str(run_dir), "RUN_DIR"))


def latest_checkpoint(run_dir) -> int:
    return max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, worker_id):
    """tests/rl/data/train_tiny.yaml run to its end, once a session: under xdist the first worker to ask runs
    it into the session's shared temporary directory while holding a lock there, and the other reads it once
    the lock is free (the tests read the run, never write into it). Each worker ran it on its own before (a
    second 16 s run on a cold clone when test_train.py and test_cli_inference.py fell on different workers)."""
    if worker_id == "master":  # no xdist
        run_dir = tmp_path_factory.mktemp("uninterrupted")
        run_to_end(run_dir)
        return run_dir
    shared = tmp_path_factory.getbasetemp().parent  # this session's, above each worker's own
    run_dir, done = shared / "uninterrupted", shared / "uninterrupted.done"
    with open(shared / "uninterrupted.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # what a failed attempt left
            run_to_end(run_dir)
            done.touch()
    return run_dir
