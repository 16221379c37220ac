"""Scoring split across 2 JAX processes (rl.rewards.share): each process scores half of every batch, and
both return exactly what one process scoring the whole batch returns."""

import concurrent.futures
import dataclasses
import json
import socket
import subprocess
import sys
import threading

import pytest

from r1jax.rl.rewards import CodeConfig, PoolConfig, RewardPool, RewardsConfig, ScoreItem
from r1jax.rl.rewards.share import ScoreShare
from r1jax.rl.tasks import get_task
from r1jax.sharding.distributed import PeerLost

from tests.rl.conftest import REPO, subprocess_env

REWARDS = RewardsConfig(names=("accuracy", "code", "format", "language"), weights=(1.0, 1.0, 0.5, 0.1),
                        code=CodeConfig(wall_s=5.0, cpu_s=2, memory_mb=256))


def batches() -> list[list[ScoreItem]]:
    """Two batches (odd sizes: the shares differ by one row) of math and code items, right and wrong."""
    items = []
    for index, name in enumerate(["arithmetic", "code", "algebra", "code", "countdown", "code", "arithmetic"]):
        problem = get_task(name, 3).generate(seed=1, index=index)
        completion = problem.solution if index % 3 else "<think> guess </think> <answer> print(1) </answer>"
        items.append(ScoreItem(problem.prompt, completion, problem.answer, name, tests=problem.tests,
                               entry_point=problem.entry_point))
    items.append(ScoreItem("q", "<think> 思考 then words </think> <answer> \\frac{1}{2} </answer>", "0.5"))
    return [items[:5], items[3:]]


def without_pid(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "pid"} for r in results]


def test_two_processes_each_score_half_and_return_what_one_process_returns():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tests.rl.score_split_worker"]
    procs = [subprocess.Popen([*command, str(p), str(port)], cwd=REPO, env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (0, 1)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    with RewardPool(REWARDS, PoolConfig(workers=1, timeout_s=20)) as pool:
        alone = [[dataclasses.asdict(r) for r in pool.score_batch(batch)] for batch in batches()]
    assert [len(b) for b in batches()] == [5, 5]
    assert [r["own_rows"] for r in reports] == [6, 4]  # rows 0, 2, 4 and 1, 3 of each batch
    for report in reports:
        assert [without_pid(b) for b in report["results"]] == [without_pid(b) for b in alone]
        assert report["counts"] == dict(pool.counts) and report["code_counts"] == dict(pool.code_counts)
    assert {r["code_status"] for b in alone for r in b} == {"passed", "failed", None}  # right, wrong, math


class SilentPeerStore:
    """A coordination service's client whose peers never publish (their get times out, as JAX's does)."""

    def __init__(self):
        self.values, self.waits_ms = {}, []

    def key_value_set(self, key, value):
        self.values[key] = value

    def key_value_delete(self, key):
        self.values.pop(key, None)

    def blocking_key_value_get(self, key, timeout_ms):
        self.waits_ms.append(timeout_ms)
        raise RuntimeError("DEADLINE_EXCEEDED: GetKeyValue() timed out with key: " + key)


def test_a_peer_that_never_publishes_its_share_is_named_within_the_timeout():
    """It read as a bug (a JaxRuntimeError and a traceback, the other processes left to their own timeouts)."""
    store = SilentPeerStore()
    share = ScoreShare(index=0, count=3, timeout_s=7.0, client=store)
    with pytest.raises(PeerLost, match=r"process 1 published no rewards of batch 4 within 7 s .*DEADLINE_EXCEEDED"):
        share.gather(4, 5, [{"total": 1.0}, {"total": 0.0}])
    assert store.waits_ms == [7000] and "r1jax/scores/4/0" in store.values


class SharedStore:
    """An in-process key-value store shared by threads standing for processes (blocking gets, as JAX's)."""

    def __init__(self):
        self.values, self.changed = {}, threading.Condition()

    def key_value_set(self, key, value):
        with self.changed:
            self.values[key] = value
            self.changed.notify_all()

    def key_value_delete(self, key):
        with self.changed:
            del self.values[key]

    def blocking_key_value_get(self, key, timeout_ms):
        with self.changed:
            if not self.changed.wait_for(lambda: key in self.values, timeout_ms / 1000):
                raise RuntimeError("DEADLINE_EXCEEDED: " + key)
            return self.values[key]


def test_three_shares_score_strided_rows_and_free_the_batch_before_last():
    """3 processes, batches of 7 rows: process p scores rows p, p + 3, ...; each gathers every row in order;
    publishing batch k frees its own key of batch k - 2 (every peer read it before publishing k - 1)."""
    store, size = SharedStore(), 7
    shares = [ScoreShare(index=p, count=3, timeout_s=10.0, client=store) for p in range(3)]
    assert [list(s.rows(size)) for s in shares] == [[0, 3, 6], [1, 4], [2, 5]]
    for batch in range(3):
        own = [[{"row": row, "batch": batch} for row in share.rows(size)] for share in shares]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            gathered = list(pool.map(lambda p: shares[p].gather(batch, size, own[p]), range(3)))
        assert gathered == [[{"row": row, "batch": batch} for row in range(size)]] * 3
    assert sorted(store.values) == [f"r1jax/scores/{b}/{p}" for b in (1, 2) for p in range(3)]
