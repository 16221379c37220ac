"""The reward worker pool: scoring in killable processes, asynchronously, without ever raising.

    with RewardPool(RewardsConfig(), PoolConfig(workers=4, timeout_s=5)) as pool:
        handle = pool.submit(items)          # returns at once; workers score while the device works
        ...                                  # the next rollout, the previous update
        results = pool.collect(handle)       # list[ScoreResult], in the order of `items`

Every result has a status: "ok"; "timeout" (the item ran past `timeout_s` and its worker was killed, or the
batch passed `batch_deadline_s`); "crashed" (its worker died: a signal, a segfault, out of memory);
"error" (a reward raised). A failed item scores 0 on every reward; only that item fails, and pebble
replaces a killed worker so the pool is back to N workers (one killed while idle breaks pebble's pool: a fresh
one takes its place, and the items it dropped are sent again once). Counts by status feed the trainer's metrics,
and so do code items' statuses (rl.rewards.code.CODE_STATUSES: passed, failed, timeout, ...) and the number
of workers replaced (recycled after max_tasks_per_worker, or after a crash or a timeout).

With the `code` reward configured, the pool checks at start that the sandbox works in the configured mode
(rl.rewards.sandbox.check_sandbox: a UserError saying what the host lacks) and says which mode in `sandbox`.

Under several JAX processes, a `share` (rl.rewards.share) makes each process score only its rows of the
global batch; `collect` then exchanges the results, so every process returns the whole batch's, equal to a
single process's. `collect` is then a collective: every process collects the same batches in the same order.

Workers are started with the "spawn" method: the trainer process runs JAX's threads, and forking a
threaded process can deadlock the child.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import multiprocessing
import os
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Sequence

import pebble

from r1jax.errors import UserError
from r1jax.rl.rewards import worker
from r1jax.rl.rewards.code import CODE_STATUSES
from r1jax.rl.rewards.config import PoolConfig, RewardsConfig
from r1jax.rl.rewards.functions import ScoreItem, check_names, combine
from r1jax.rl.rewards.sandbox import check_sandbox
from r1jax.rl.rewards.sandbox_dirs import make_run_root, remove_tree
from r1jax.rl.rewards.share import ScoreShare
from r1jax.rl.tasks import TASKS

STATUSES = ("ok", "timeout", "crashed", "error")
# an item's text may take at most 1 / 16 of a worker's memory limit (in characters): a worker died reading one
# of about half its limit (the pickled text, its copy as a str, the rewards' own copies of it)
MEMORY_PER_CHAR = 16
STARTUP_TIMEOUT_S = 120.0  # a cold worker may import sympy and math-verify (its tasks' warm_up), on a busy host


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    rewards: dict[str, float]  # every configured reward by name (all 0.0 unless status is "ok")
    total: float  # sum of weight * reward
    status: str  # one of STATUSES
    error: str | None = None  # what went wrong, for logs
    pid: int | None = None  # the worker that scored it (None when unknown)
    code_status: str | None = None  # code items scored by the `code` reward: one of CODE_STATUSES


@dataclasses.dataclass
class BatchHandle:
    """A submitted batch: collect it with `pool.collect(handle)`."""

    futures: list  # this process's rows (all rows without a share)
    deadline: float  # time.monotonic() after which unfinished items count as timed out
    size: int = 0  # rows in the batch
    batch: int = 0  # the pool's batch counter when submitted (names the batch in a share's exchange)
    results: list | None = None  # filled by the first collect; collecting again returns them
    items: list = dataclasses.field(default_factory=list)  # each future's item (sent again if the pool broke)

    def done(self) -> bool:
        """Whether `collect` would return without waiting."""
        return all(future.done() for future in self.futures)


class RewardPool:
    def __init__(self, rewards: RewardsConfig | None = None, config: PoolConfig | None = None,
                 share: ScoreShare | None = None, tasks: Sequence[str] | None = None):
        """`tasks`: the tasks whose verifiers the workers load before their first item (None: every registered
        task's; rl.tasks.Task.warm_up); an item of another task pays for its verifier's imports itself."""
        self.rewards = rewards or RewardsConfig()
        self.config = config or PoolConfig()
        self.share = share  # None: this process scores every row
        self.batches = 0  # batches submitted
        check_names(self.rewards, self.config.import_modules)  # imported here too: custom rewards and tasks
        unknown = sorted(set(tasks or ()) - set(TASKS))
        if unknown:  # (custom tasks register in the modules imported above, here as in the workers)
            raise UserError(f"reward pool: unknown task(s) {unknown}; known: {', '.join(sorted(TASKS))} (a custom "
                            f"task's module belongs in reward_pool.import_modules)")
        code = self.rewards.code
        if "code" in self.rewards.names and 0 < self.config.memory_mb <= code.memory_mb:
            raise UserError(f"rewards.code.memory_mb = {code.memory_mb} must be below "
                            f"reward_pool.memory_mb = {self.config.memory_mb}: programs inherit the worker's limit")
        if "code" in self.rewards.names and self.config.timeout_s <= code.wall_s:
            raise UserError(f"reward_pool.timeout_s = {self.config.timeout_s} must exceed rewards.code.wall_s = "
                            f"{code.wall_s}: an item's program runs (one per stdin/stdout test) share that time")
        # the sandbox mode in words, for the run's log (None: no code reward, no program ever runs)
        self.sandbox = check_sandbox(self.rewards.code.sandbox) if "code" in self.rewards.names else None
        if self.sandbox and self.rewards.code.sandbox == "rlimits_only" and os.geteuid() != 0:
            worker.set_not_dumpable()  # programs run as the trainer's user: keep its environment and memory from them
        # the workers' run directories: removed at close; a later pool removes those of a killed one
        self.run_root = make_run_root() if self.sandbox else None
        self.counts: collections.Counter = collections.Counter()
        self.code_counts: collections.Counter = collections.Counter()
        self.worker_pids: set[int] = set()  # every worker seen: more than `workers` means some were replaced
        self.wait_s = 0.0  # time callers spent blocked in collect: how long scoring stalled the trainer
        self._warm = None if tasks is None else tuple(tasks)
        self.workers_started: list[int] | None = [0]
        self._closed = False
        try:  # stopped while the workers start (Ctrl-C, a SIGTERM made an exception): no `with` would close it
            self._start()
            self._warm_up()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        """A fresh pebble pool of `workers` (at construction, and in place of a broken one)."""
        self._pool = pebble.ProcessPool(
            max_workers=self.config.workers, max_tasks=self.config.max_tasks_per_worker,
            initializer=worker.initialize,
            initargs=(self.config.memory_mb, tuple(self.config.import_modules), self._warm, self.run_root),
            context=multiprocessing.get_context("spawn"))
        if self.workers_started is not None:
            self.workers_started = self._count_worker_starts(self.workers_started)

    def _restart_if_broken(self) -> None:
        """A fresh pebble pool in place of a broken one. A worker that dies while no item runs (killed from
        outside, by `kill -9` or the host's out-of-memory killer) breaks pebble's pool for good ("All workers
        expired"): every later item failed as "error", scored 0, until reward_pool.max_failed_steps halted the
        run. Its workers are replaced like any killed worker (`recycled` counts them)."""
        if self._closed or self._pool.active:  # (a closed pool is stopped, not broken: its items fail)
            return
        logging.getLogger(__name__).warning("reward pool: a worker died while idle (killed from outside?) and "
                                            "broke the pool; starting its %d workers again", self.config.workers)
        self._pool.stop()
        try:
            self._pool.join(timeout=10.0)  # pebble stops the workers the kill spared here, not in stop()
        except TimeoutError:  # it has sent them SIGKILL
            pass
        self._start()

    def _count_worker_starts(self, started: list[int]) -> list[int] | None:
        """[workers started so far], counted where pebble starts each (its manager's `new_worker`): a worker
        killed before it returned any result (a timeout, a crash) is replaced unseen by the pids of results.
        None on a pebble without that hook (the count then comes from the pids seen)."""
        manager = getattr(getattr(self._pool, "_pool_manager", None), "worker_manager", None)
        new_worker = getattr(manager, "new_worker", None)
        if new_worker is None:
            return None

        def counted(*args, **kwargs):
            started[0] += 1
            return new_worker(*args, **kwargs)

        manager.new_worker = counted
        return started

    def _warm_up(self) -> None:
        """Wait for the workers (pebble starts them all at once) before the first timed batch, so that a
        broken initializer (an import error, too little memory) fails here, as a UserError."""
        futures = [self._pool.submit(worker.ping, None) for _ in range(self.config.workers)]
        try:
            for future in futures:
                self.worker_pids.add(future.result(timeout=STARTUP_TIMEOUT_S))
        except Exception as err:
            self.close()
            raise UserError(f"reward pool: workers failed to start ({type(err).__name__}: {err}); "
                            f"each worker's reason is on stderr above (r1jax reward worker PID: ...)") from err

    def submit(self, items: Sequence[ScoreItem]) -> BatchHandle:
        self._restart_if_broken()
        now = time.monotonic()
        rows = self.share.rows(len(items)) if self.share else range(len(items))
        sent = [items[row] for row in rows]
        self.batches += 1
        return BatchHandle([self._send(item) for item in sent], deadline=now + self.config.batch_deadline_s,
                           size=len(items), batch=self.batches - 1, items=sent)

    def _send(self, item: ScoreItem) -> concurrent.futures.Future:
        too_large = self._too_large(item)
        if too_large:
            return _done_future(("crashed", {}, too_large, None, None))
        try:
            return self._pool.submit(worker.score, self.config.timeout_s, item, self.rewards)
        except Exception as err:  # the pool is closed or broken: this item fails, nothing raises
            return _failed_future(err)

    def _send_again_if_broken(self, handle: BatchHandle) -> None:
        """The items the pool dropped when it broke under them (a worker killed from outside as they were
        queued: pebble fails them all with BrokenProcessPool) sent once more to a fresh pool."""
        dropped = [i for i, future in enumerate(handle.futures) if future.done() and not future.cancelled()
                   and _broke(future.exception())]
        if not dropped or not handle.items:
            return
        self._restart_if_broken()
        for i in dropped:
            handle.futures[i] = self._send(handle.items[i])
        concurrent.futures.wait(handle.futures, timeout=max(0.0, handle.deadline - time.monotonic()))

    def _too_large(self, item: ScoreItem) -> str | None:
        """Why `item` is not sent to a worker (None: it is): more characters of text than 1 / `MEMORY_PER_CHAR`
        of the worker's memory limit in bytes. A worker reads an item before it scores it, so one past its
        limit died there, unseen by pebble: with no other item running the pool broke for good (every later
        item "error", scored 0), else the batch waited for its deadline."""
        limit_chars = self.config.memory_mb * 2 ** 20 // MEMORY_PER_CHAR
        chars = sum(len(value) for value in vars(item).values() if isinstance(value, str))
        if self.config.memory_mb and chars > limit_chars:
            return (f"item of {chars:,} characters is past what a worker of reward_pool.memory_mb = "
                    f"{self.config.memory_mb} reads safely ({limit_chars:,}): not scored")
        return None

    def collect(self, handle: BatchHandle) -> list[ScoreResult]:
        """Wait for a batch (at most until its deadline) and return its results in submission order."""
        if handle.results is None:
            start = time.monotonic()
            concurrent.futures.wait(handle.futures, timeout=max(0.0, handle.deadline - start))
            self._send_again_if_broken(handle)
            own = [self._result(future) for future in handle.futures]
            self.worker_pids.update(r.pid for r in own if r.pid is not None)
            if self.share is None:
                handle.results = own
            else:  # the other processes' rows (waits for them)
                everyone = self.share.gather(handle.batch, handle.size, [dataclasses.asdict(r) for r in own])
                handle.results = [ScoreResult(**r) for r in everyone]
            self.counts.update(r.status for r in handle.results)
            self.code_counts.update(r.code_status for r in handle.results if r.code_status)
            self.wait_s += time.monotonic() - start
        return handle.results

    def score_batch(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        return self.collect(self.submit(items))

    def _result(self, future) -> ScoreResult:
        if not future.done():
            future.cancel()  # pebble kills the worker running it
            return self._failure("timeout", "batch deadline passed")
        try:
            status, rewards, error, pid, code_status = future.result()
        except concurrent.futures.TimeoutError:
            return self._failure("timeout", f"took longer than {self.config.timeout_s} s; worker killed")
        except pebble.ProcessExpired as err:
            return self._failure("crashed", _describe_exit(err.exitcode, self.config.memory_mb), err.pid)
        except concurrent.futures.CancelledError:
            return self._failure("timeout", "cancelled")
        except Exception as err:
            return self._failure("error", f"{type(err).__name__}: {err}")
        if status != "ok":
            return self._failure(status, error, pid)
        return ScoreResult(rewards, combine(rewards, self.rewards), "ok", None, pid, code_status)

    def _failure(self, status: str, error: str | None, pid: int | None = None) -> ScoreResult:
        zeros = {name: 0.0 for name in self.rewards.names}
        return ScoreResult(zeros, 0.0, status, error, pid)

    def metrics(self) -> dict[str, float]:
        """Cumulative counts by status and by code status, the failed fraction, the workers replaced and the
        time spent waiting in collect."""
        scored = sum(self.counts.values())
        out = {f"reward_pool/{s}": float(self.counts[s]) for s in STATUSES}
        out.update({f"reward_pool/code_{s}": float(self.code_counts[s]) for s in CODE_STATUSES})
        started = self.workers_started[0] if self.workers_started is not None else len(self.worker_pids)
        out["reward_pool/recycled"] = float(max(0, started - self.config.workers))
        out["reward_pool/failed_fraction"] = (scored - self.counts["ok"]) / scored if scored else 0.0
        out["reward_pool/wait_s"] = self.wait_s
        return out

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop every worker now (running items are abandoned) and wait for them to exit."""
        self._closed = True
        try:
            if getattr(self, "_pool", None) is not None:  # (None: stopped before its pebble pool started)
                self._pool.stop()
                try:
                    self._pool.join(timeout=timeout_s)
                except TimeoutError:  # pebble has already sent SIGKILL; never raise into the trainer's shutdown
                    pass
        finally:  # a second SIGTERM or Ctrl-C while it closes (raised here): the run root still goes
            if getattr(self, "run_root", None):
                remove_tree(self.run_root)

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _broke(error: BaseException | None) -> bool:
    """Whether pebble failed an item because its pool broke (not because of the item)."""
    return isinstance(error, BrokenProcessPool) or (
        isinstance(error, RuntimeError) and str(error) == "Unexpected error within the Pool")


def _done_future(result) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(result)
    return future


def _failed_future(error: Exception) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_exception(error)
    return future


def _describe_exit(exitcode: int | None, memory_mb: int) -> str:
    if exitcode == worker.OOM_EXIT_CODE:
        return f"worker ran out of memory (reward_pool.memory_mb = {memory_mb})"
    if exitcode is not None and exitcode < 0:
        return f"worker killed by signal {-exitcode}"
    return f"worker exited with code {exitcode}"
