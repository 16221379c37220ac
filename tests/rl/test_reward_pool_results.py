"""The reward pool's bookkeeping, without workers: what `collect` makes of the workers' answers (weighted
totals, code statuses passed on and counted, failures zeroed), `metrics`' failed fraction, and the size past
which an item is failed unsent."""

import collections
import concurrent.futures
import re

import pebble
import pytest

from r1jax.errors import UserError
from r1jax.rl.rewards import CodeConfig, PoolConfig, RewardPool, RewardsConfig, ScoreItem, worker
from r1jax.rl.rewards.pool import BatchHandle, MEMORY_PER_CHAR


def idle_pool(rewards: RewardsConfig, config: PoolConfig = PoolConfig()) -> RewardPool:
    """A RewardPool's state with no worker started (what __init__ sets besides the process pool)."""
    pool = RewardPool.__new__(RewardPool)
    pool.rewards, pool.config, pool.share, pool.batches = rewards, config, None, 0
    pool.counts, pool.code_counts = collections.Counter(), collections.Counter()
    pool.worker_pids, pool.wait_s, pool.workers_started = set(), 0.0, None
    return pool


def answered(value=None, error=None) -> concurrent.futures.Future:
    future = concurrent.futures.Future()
    future.set_result(value) if error is None else future.set_exception(error)
    return future


def test_collect_weighs_rewards_passes_code_statuses_on_and_counts_failures():
    rewards = RewardsConfig(names=("code", "format"), weights=(2.0, 0.5))
    pool = idle_pool(rewards)
    futures = [answered(("ok", {"code": 1.0, "format": 1.0}, None, 11, "passed")),
               answered(("ok", {"code": 0.0, "format": 1.0}, None, 12, "failed")),
               answered(("error", {}, "ValueError: x", 11, None)),
               answered(error=pebble.ProcessExpired("gone", code=-9, pid=13)),
               answered(("ok", {"code": 1.0, "format": 0.0}, None, 12, "passed"))]
    results = pool.collect(BatchHandle(futures, deadline=float("inf"), size=5))
    assert [r.total for r in results] == [2.5, 0.5, 0.0, 0.0, 2.0]  # 2 * code + 0.5 * format
    assert [r.status for r in results] == ["ok", "ok", "error", "crashed", "ok"]
    assert [r.code_status for r in results] == ["passed", "failed", None, None, "passed"]
    assert results[3].rewards == {"code": 0.0, "format": 0.0} and "signal 9" in results[3].error
    metrics = pool.metrics()
    assert metrics["reward_pool/code_passed"] == 2.0 and metrics["reward_pool/code_failed"] == 1.0
    assert metrics["reward_pool/failed_fraction"] == pytest.approx(2 / 5)  # an error and a crash of 5
    assert pool.worker_pids == {11, 12, 13}


def test_an_item_of_exactly_the_safe_size_is_still_sent():
    pool = idle_pool(RewardsConfig(), PoolConfig(memory_mb=256))
    limit = 256 * 2 ** 20 // MEMORY_PER_CHAR
    item = lambda chars: ScoreItem(prompt="", completion="x" * (chars - 5), reference="0", task="math")
    assert pool._too_large(item(limit)) is None
    assert "not scored" in pool._too_large(item(limit + 1))
    assert idle_pool(RewardsConfig(), PoolConfig(memory_mb=0))._too_large(item(limit + 1)) is None  # no limit


@pytest.mark.parametrize("code,config,named", [
    (CodeConfig(memory_mb=512), PoolConfig(memory_mb=512), "rewards.code.memory_mb = 512 must be below"),
    (CodeConfig(wall_s=3.0), PoolConfig(timeout_s=3.0), "reward_pool.timeout_s = 3.0 must exceed"),
])
def test_a_code_limit_equal_to_the_pools_is_refused_before_any_worker_starts(code, config, named):
    """A program inherits its worker's memory limit and shares its item's time: equal leaves it nothing."""
    with pytest.raises(UserError, match=re.escape(named)):
        RewardPool(RewardsConfig(names=("code",), weights=(1.0,), code=code), config)


def test_a_code_item_gets_a_code_status_only_where_the_code_reward_ran():
    """Without the `code` reward an item's tests are never run (no program, no status to count)."""
    item = ScoreItem("Double x.", "<think> t </think> <answer> def f(x): return 2 * x </answer>", "", "code",
                     tests='["assert f(2) == 4"]', entry_point="f")
    status, rewards, error, _, code_status = worker.score(item, RewardsConfig(names=("format",), weights=(1.0,)))
    assert (status, rewards, error, code_status) == ("ok", {"format": 1.0}, None, None)


def test_workers_without_the_memory_to_load_their_modules_say_so_in_one_line(capfd):
    """Under a reward_pool.memory_mb too small for what a worker loads it could not start: pebble printed its
    initializer's 40-line traceback (sympy's "now depends on mpmath", the real cause two errors down) and the
    pool said only "check reward_pool.memory_mb and reward_pool.import_modules"."""
    config = PoolConfig(workers=1, memory_mb=300, import_modules=("tests.rl.reward_needs_memory",))
    with pytest.raises(UserError, match=r"workers failed to start .*each worker's reason is on stderr above"):
        RewardPool(RewardsConfig(), config, tasks=("arithmetic",))
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"r1jax reward worker \d+: cannot load its rewards and verifiers within reward_pool.memory_mb "
                     r"= 300 MB of address space \(MemoryError.*\); raise it", err), err


def test_a_start_failure_names_the_allocation_that_failed_however_deep_it_was_raised():
    try:
        try:
            raise ImportError("/lib/cmath.so: failed to map segment from shared object")
        except ImportError:
            raise ImportError("SymPy now depends on mpmath")  # raised while handling the loader's error
    except ImportError as err:
        nested = err
    assert "memory_mb = 512 MB" in worker.start_failure(nested, 512) and "cmath.so: failed to map" in \
        worker.start_failure(nested, 512)
    assert worker.start_failure(nested, 0).startswith("failed to load")  # no limit: not the limit's fault
    plain = worker.start_failure(ModuleNotFoundError("No module named 'mine'"), 512)
    assert plain == ("failed to load its rewards, verifiers and reward_pool.import_modules "
                     "(ModuleNotFoundError: No module named 'mine')")
