"""The reward worker pool: isolation, timeouts that kill, crashes and OOM that fail one item, hostile input.

Timeouts are short (2 s), every pool has 2 workers or fewer, and the workers of the pools whose items need
no verifier load none (PLAIN), so the whole file runs in well under a minute on 2 cores. Every pool is closed by
its fixture; `test_close_leaves_no_process` checks that closing really reaps the workers.
"""

import os
import tempfile
import time

import psutil
import pytest

from r1jax.errors import UserError
from r1jax.rl.rewards import PoolConfig, RewardPool, RewardsConfig, ScoreItem
from r1jax.rl.rewards.worker import HIDDEN_DEVICES_ENV

TIMEOUT_S = 2.0
SLACK_S = 1.0  # the contract: a hostile item finishes within timeout + 1 s
PROBES = ("tests.rl.reward_probes",)
PLAIN = ("arithmetic",)  # tasks whose verifiers load nothing: a worker (and each replacement) starts without
# importing sympy and math-verify (~1-2 s of CPU each), for the pools whose items need neither
ENV_BEFORE_POOLS = dict(os.environ)


def worker_pids(pool: RewardPool) -> list[int]:
    """PIDs of the pool's live workers (read from pebble's internals)."""
    workers = pool._pool._pool_manager.worker_manager.workers
    return sorted(pid for pid, process in list(workers.items()) if process.is_alive())


def probe(command: str) -> ScoreItem:
    return ScoreItem(prompt="", completion=command, reference="0", task="math")


@pytest.fixture(scope="module")
def pool():
    config = PoolConfig(workers=2, timeout_s=TIMEOUT_S, memory_mb=1024, import_modules=PROBES)
    with RewardPool(RewardsConfig(names=("probe",), weights=(1.0,)), config, tasks=PLAIN) as p:
        yield p


@pytest.fixture(scope="module")
def accuracy_pool():
    with RewardPool(RewardsConfig(names=("accuracy",), weights=(1.0,)),
                    PoolConfig(workers=2, timeout_s=TIMEOUT_S, memory_mb=1024)) as p:
        yield p


def assert_full_pool_works(pool, workers=2):
    """The pool is back to `workers` processes, all serving: `workers` items run at the same time.

    A replacement worker imports sympy before it serves (~1 s), so the barrier gets a few tries."""
    for _ in range(3):
        with tempfile.TemporaryDirectory() as directory:
            results = pool.score_batch([probe(f"barrier:{directory}:{workers}") for _ in range(workers)])
            assert [r.status for r in results] == ["ok"] * workers
            if [r.total for r in results] == [1.0] * workers:
                assert len({r.pid for r in results}) == len(os.listdir(directory)) == workers
                break
    else:
        raise AssertionError(f"{workers} items never ran at the same time")
    assert len(worker_pids(pool)) == workers


def test_items_are_scored_in_workers_with_accelerators_hidden(pool):
    results = pool.score_batch([probe("env"), probe("env")])
    assert [r.rewards for r in results] == [{"probe": 1.0}, {"probe": 1.0}]
    assert all(r.pid != os.getpid() and r.pid in worker_pids(pool) for r in results)
    for key in HIDDEN_DEVICES_ENV:  # hidden in the workers only: the trainer's own environment is untouched
        assert os.environ.get(key) == ENV_BEFORE_POOLS.get(key)


def test_each_failure_fails_only_its_item_and_results_keep_input_order(pool):
    """The last item waits for a replacement worker (one original died, the other sleeps until it is killed at
    its timeout); the batch is back within SLACK_S of the later of that timeout and the moment the replacement
    scored the last item ("clock"). That moment is measured, not bounded: a replacement's start (spawn, imports)
    took 1.5 s on an idle host and over 4 s on a loaded one, past the fixed `TIMEOUT_S + SLACK_S + 1 s` this
    test had (it failed ~1 run in 15 there)."""
    before, originals = pool.metrics(), set(worker_pids(pool))
    start = time.time()
    results = pool.score_batch([probe("ok"), probe("raise"), probe("sigkill"), probe("sleep:30"), probe("clock")])
    end = time.time()
    assert [r.status for r in results] == ["ok", "error", "crashed", "timeout", "ok"]
    assert [r.total for r in results[:4]] == [1.0, 0.0, 0.0, 0.0]
    assert "probe asked to raise" in results[1].error and "signal 9" in results[2].error
    assert f"took longer than {TIMEOUT_S} s" in results[3].error  # killed at its own timeout, not at the batch deadline
    scored_at = results[4].total
    assert results[4].pid not in originals and start < scored_at < end
    assert end - max(start + TIMEOUT_S, scored_at) < SLACK_S
    after = pool.metrics()
    assert {s: after[f"reward_pool/{s}"] - before[f"reward_pool/{s}"]
            for s in ("ok", "error", "crashed", "timeout")} == {"ok": 2, "error": 1, "crashed": 1, "timeout": 1}
    assert after["reward_pool/wait_s"] - before["reward_pool/wait_s"] >= TIMEOUT_S
    assert_full_pool_works(pool)


def test_a_non_finite_reward_or_a_reward_calling_exit_is_an_error_of_its_item(pool):
    """NaN passed every threshold as "ok" (rejection sampling kept it and wrote invalid JSON), inf made its
    group's advantages NaN; sys.exit() in a reward ended the trainer (pebble raised the SystemExit in it)."""
    results = pool.score_batch([probe("nan"), probe("inf"), probe("exit"), probe("ok")])
    assert [r.status for r in results] == ["error", "error", "error", "ok"]
    assert [r.total for r in results] == [0.0, 0.0, 0.0, 1.0]
    assert "non-finite value: {'probe': nan}" in results[0].error and "SystemExit: 3" in results[2].error


def test_a_worker_over_its_memory_limit_fails_only_its_item(pool):
    results = pool.score_batch([probe("hog"), probe("ok")])
    assert [r.status for r in results] == ["crashed", "ok"]
    assert "out of memory" in results[0].error and results[0].rewards == {"probe": 0.0}
    assert_full_pool_works(pool)


def test_a_tower_past_the_screen_is_killed_at_the_timeout():
    """The unguarded math-verify path hangs in GMP; the pool still returns each item by timeout + 1 s. The
    workers load math-verify before their first item (tasks ("math",)): the items hang in GMP, not in imports."""
    config = PoolConfig(workers=2, timeout_s=TIMEOUT_S, memory_mb=1024, import_modules=PROBES)
    with RewardPool(RewardsConfig(names=("probe",), weights=(1.0,)), config, tasks=("math",)) as pool:
        assert_full_pool_works(pool)  # both workers serving: the clock below starts with no worker still loading
        towers = [probe("tower:$9^{9^{9^{9}}}$"), probe("tower:$5^{5^{5^{5^{5}}}}$")]
        start = time.monotonic()
        results = pool.score_batch(towers)
        assert time.monotonic() - start < TIMEOUT_S + SLACK_S
        assert all(r.status in ("timeout", "crashed") and r.total == 0.0 for r in results)
        assert_full_pool_works(pool)


def test_submit_returns_at_once_and_collect_in_any_order(pool):
    start = time.monotonic()
    first = pool.submit([probe("sleep:0.3"), probe("ok")])
    second = pool.submit([probe("raise")])
    assert time.monotonic() - start < 0.2  # scoring happens while the caller does other work
    assert not first.done()
    assert [r.status for r in pool.collect(second)] == ["error"]
    assert [r.status for r in pool.collect(first)] == ["ok", "ok"]
    assert first.done() and pool.collect(first) is pool.collect(first)  # collected once, counted once


def hostile_completions(marker: str) -> list[str]:
    injections = [f"__import__('os').system('touch {marker}')", f"open('{marker}', 'w').write('x')",
                  f"exec(\"open('{marker}','w')\")", f"(lambda: __import__('os').mkdir('{marker}'))()"]
    forms = []
    for code in injections:
        forms += [f"<think> x </think> <answer>{code}</answer>", f"\\boxed{{{code}}}",
                  f"<think> x </think> <answer>\\text{{{code}}}</answer>", f"\\boxed{{\\text{{{code}}}}}"]
    towers = ["9^{9^{9^{9}}}", "5^{5^{5^{5^{5}}}}", "9**9**9**9", "2^{99999999999}", "99999!"]
    forms += [f"<think> x </think> <answer>{t}</answer>" for t in towers] + [f"\\boxed{{{t}}}" for t in towers]
    forms += ["<answer>" + "7" * 1_000_000 + "</answer>", "\\boxed{" + "1" * 1_000_000 + "}",
              "<answer>" + "(" * 10_000 + "1" + ")" * 10_000 + "</answer>",
              "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}",
              "<answer>" + "[" * 10_000 + "</answer>", "<think>" * 10_000 + "</answer>" * 10_000]
    return forms


@pytest.mark.parametrize("task,reference", [("math", "1"), ("arithmetic", "1"), ("countdown", "1+0"),
                                            ("algebra", "1")])
def test_hostile_completions_score_zero_in_time_and_leave_no_trace(accuracy_pool, tmp_path, task, reference):
    marker = tmp_path / "pwned"
    completions = hostile_completions(marker)
    items = [ScoreItem("Make 1 from 1, 0 (+-*/, each at most once)", c, reference, task) for c in completions]
    start = time.monotonic()
    results = accuracy_pool.score_batch(items)
    # The screens (answer cut to K characters, bounded parsers, the tower/nesting screen before
    # math-verify) reject every one of them quickly: the whole batch ends within one item's allowance.
    assert time.monotonic() - start < TIMEOUT_S + SLACK_S
    assert [(r.status, r.rewards) for r in results] == [("ok", {"accuracy": 0.0})] * len(items)
    assert not marker.exists() and list(tmp_path.iterdir()) == []
    assert len(worker_pids(accuracy_pool)) == 2


def test_batch_deadline_is_a_backstop_for_slow_items():
    config = PoolConfig(workers=1, timeout_s=30.0, batch_deadline_s=1.0, import_modules=PROBES)
    with RewardPool(RewardsConfig(names=("probe",), weights=(1.0,)), config, tasks=PLAIN) as pool:
        [sleeper] = worker_pids(pool)
        start = time.monotonic()
        results = pool.score_batch([probe("ok"), probe("sleep:30")])
        assert time.monotonic() - start < 1.0 + SLACK_S
        assert [r.status for r in results] == ["ok", "timeout"]
        assert "deadline" in results[1].error
        # The sleeping worker is killed, not left running until its 30 s item timeout.
        assert wait_until(lambda: not alive(sleeper), 5.0)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_workers_are_recycled_after_max_tasks_and_close_leaves_no_process():
    config = PoolConfig(workers=1, timeout_s=TIMEOUT_S, max_tasks_per_worker=2, import_modules=PROBES)
    pool = RewardPool(RewardsConfig(names=("probe",), weights=(1.0,)), config, tasks=PLAIN)
    try:
        pids = [r.pid for r in pool.score_batch([probe("ok") for _ in range(5)])]
        # The warm-up ping was the first worker's first task, so it scores one item before retiring.
        assert len(set(pids)) == 3 and pids[1] == pids[2] and pids[3] == pids[4]
        assert pool.metrics()["reward_pool/recycled"] == 2.0  # the first worker and the second were replaced
        workers = worker_pids(pool)
    finally:
        pool.close()
    assert workers and not any(alive(pid) for pid in workers)


@pytest.mark.parametrize("tasks, loaded", [
    (("arithmetic", "countdown"), [0.0, 0.0]),  # plain-Python verifiers: nothing to load
    (("algebra",), [1.0, 0.0]),  # sympy, through the safe parser
    (None, [1.0, 1.0]),  # tasks unknown (a data file's rows): every verifier's imports
])
def test_workers_load_the_verifiers_of_their_tasks_before_the_first_item(tasks, loaded):
    config = PoolConfig(workers=1, timeout_s=TIMEOUT_S, import_modules=PROBES)
    with RewardPool(RewardsConfig(names=("probe",), weights=(1.0,)), config, tasks=tasks) as pool:
        results = pool.score_batch([probe("loaded:sympy"), probe("loaded:math_verify")])
    assert [r.total for r in results] == loaded


def test_bad_pool_configuration_is_a_user_error_before_any_worker_starts():
    with pytest.raises(UserError, match="no_such_module"):
        RewardPool(RewardsConfig(), PoolConfig(import_modules=("no_such_module",)))
    with pytest.raises(UserError, match=r"unknown task\(s\) \['no_such_task'\].*reward_pool.import_modules"):
        RewardPool(RewardsConfig(), PoolConfig(), tasks=("arithmetic", "no_such_task"))
    with pytest.raises(UserError, match="rewards.names.*nonexistent"):
        RewardPool(RewardsConfig(names=("nonexistent",), weights=(1.0,)), PoolConfig())
    with pytest.raises(UserError, match="reward_pool.workers"):
        PoolConfig(workers=0)
    with pytest.raises(UserError, match="reward_pool.memory_mb"):
        PoolConfig(memory_mb=10)


def test_an_item_past_the_workers_memory_is_failed_unsent_and_the_pool_goes_on():
    """A worker reads an item before it scores it: one past its memory died there, unseen by pebble, and with
    no other item running the pool broke for good (every later item "error": every reward after it 0)."""
    config = PoolConfig(workers=1, timeout_s=TIMEOUT_S, memory_mb=256, import_modules=PROBES)
    with RewardPool(RewardsConfig(names=("probe",), weights=(1.0,)), config, tasks=PLAIN) as pool:
        huge = ScoreItem(prompt="", completion="x" * 150_000_000, reference="0", task="math")
        results = pool.score_batch([probe("ok"), huge, probe("ok")])
        assert [r.status for r in results] == ["ok", "crashed", "ok"]
        assert "item of 150,000,005 characters is past what a worker of reward_pool.memory_mb = 256" in \
            results[1].error
        assert [r.status for r in pool.score_batch([probe("ok")])] == ["ok"]


def test_workers_killed_before_they_return_a_result_count_as_replaced(pool):
    """Recycled was counted from the pids results carry: a worker killed at its timeout carries none."""
    before = pool.metrics()["reward_pool/recycled"]
    # 2 workers, 4 items that hang: the first 2 workers are killed, then their replacements (never seen)
    results = pool.score_batch([probe("sleep:30") for _ in range(4)])
    assert [r.status for r in results] == ["timeout"] * 4
    assert_full_pool_works(pool)  # (pebble starts the replacements in its own time)
    assert pool.metrics()["reward_pool/recycled"] - before == 4.0


def test_a_worker_killed_from_outside_while_idle_is_replaced_and_the_pool_goes_on():
    """`kill -9` of an idle worker (or the host's out-of-memory killer) broke pebble's pool for good ("All workers
    expired"): every later item was "error", scored 0, until reward_pool.max_failed_steps halted the run."""
    import signal

    config = PoolConfig(workers=1, timeout_s=TIMEOUT_S, import_modules=PROBES)
    pool = RewardPool(RewardsConfig(names=("probe",), weights=(1.0,)), config, tasks=PLAIN)
    try:
        [idle] = worker_pids(pool)
        os.kill(idle, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pool._pool._context.status != 4 and time.monotonic() < deadline:  # pebble's PoolStatus.ERROR
            time.sleep(0.05)
        results = pool.score_batch([probe("ok") for _ in range(2)])
        assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
        assert pool.metrics()["reward_pool/recycled"] == 1.0
    finally:
        pool.close()


def test_a_batch_the_pool_dropped_as_it_broke_is_sent_again():
    """The items queued when an idle worker was killed were all failed by pebble (BrokenProcessPool): a step's
    whole batch scored 0 as "error". They are sent again to a fresh pool, once."""
    import signal

    config = PoolConfig(workers=1, timeout_s=TIMEOUT_S, import_modules=PROBES)
    pool = RewardPool(RewardsConfig(names=("probe",), weights=(1.0,)), config, tasks=PLAIN)
    try:
        [idle] = worker_pids(pool)
        os.kill(idle, signal.SIGKILL)  # queued before pebble sees the worker gone: no worker ever takes them
        handle = pool.submit([probe("ok") for _ in range(3)])
        results = pool.collect(handle)
        assert [r.status for r in results] == ["ok"] * 3, [r.error for r in results]
    finally:
        pool.close()


def test_a_closed_pool_starts_no_workers_again():
    """A closed pool is not a broken one: a submit after close started a fresh pool (workers no close reaped, the
    sandbox's run root already gone) where its items fail, as before the restart of a broken pool."""
    config = PoolConfig(workers=1, timeout_s=TIMEOUT_S, import_modules=PROBES)
    pool = RewardPool(RewardsConfig(names=("probe",), weights=(1.0,)), config, tasks=PLAIN)
    pool.close()
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    try:
        results = pool.score_batch([probe("ok")])
        assert [r.status for r in results] == ["error"]
        assert {child.pid for child in psutil.Process().children(recursive=True)} <= before
    finally:
        pool.close()


def test_a_hang_up_leaves_the_items_being_scored_alone(tmp_path):
    """A closed terminal's SIGHUP reaches the whole job (the shell sends it to the process group), workers too:
    they ignored SIGINT but not SIGHUP, so the trainer, now checkpointing at the hang-up, scored the items in
    flight as "crashed" (0) and trained its last step on them."""
    import pathlib
    import subprocess
    import sys

    script = tmp_path / "hang_up.py"
    script.write_text(
        "import os, signal, sys, time\n"
        "from r1jax.rl.rewards import PoolConfig, RewardPool, RewardsConfig, ScoreItem\n"
        "from r1jax.rl.train.preemption import StopRequest\n"
        "if __name__ == '__main__':\n"
        "    config = PoolConfig(workers=1, timeout_s=10, import_modules=('tests.rl.reward_probes',))\n"
        "    with RewardPool(RewardsConfig(names=('probe',), weights=(1.0,)), config,\n"
        "                    tasks=('arithmetic',)) as pool, StopRequest():\n"
        "        handle = pool.submit([ScoreItem(prompt='', completion='sleep:2', reference='0', task='math')])\n"
        "        time.sleep(0.5)\n"
        "        os.killpg(0, signal.SIGHUP)  # the shell's hang-up, to the job\n"
        "        print([(r.status, r.error) for r in pool.collect(handle)])\n")
    root = pathlib.Path(__file__).parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=root,
                          env=env, start_new_session=True)
    assert done.returncode == 0 and "[('ok', None)]" in done.stdout, (done.stdout, done.stderr)


def test_a_broken_pools_other_workers_are_stopped_with_it():
    """The restart of a broken pool stopped pebble's pool without joining it, and pebble stops workers in its join:
    the workers the kill spared lived on beside the new ones (one more per restart), and close never reaped them."""
    import signal

    config = PoolConfig(workers=2, timeout_s=TIMEOUT_S, import_modules=PROBES)
    pool = RewardPool(RewardsConfig(names=("probe",), weights=(1.0,)), config, tasks=PLAIN)
    try:
        killed, spared = worker_pids(pool)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pool._pool._context.status != 4 and time.monotonic() < deadline:  # pebble's PoolStatus.ERROR
            time.sleep(0.05)
        assert [r.status for r in pool.score_batch([probe("ok")])] == ["ok"]
        assert not alive(spared) and spared not in worker_pids(pool)
    finally:
        pool.close()
    assert not alive(spared)
