"""Bounded staleness against the on-policy loop: whole GRPO steps with `grpo.max_staleness` 1 and 0 when
scoring costs 20 ms per completion on the host (rl.bench.slow_reward, in the reward pool's workers).

Both runs are the side-by-side workload of rl.bench.grpo_step (same model, mesh, seed, steps) with that
reward alone; the figures are the medians after the warm-up steps of each run's step time and of the time
the devices waited for the host's scores (`time/host_wait_s`). With max_staleness 1 a batch is scored while
the previous one updates, so the wait shrinks by up to the update's time.
"""

from __future__ import annotations

import dataclasses
import tempfile

import numpy as np

from r1jax.errors import UserError
from r1jax.rl.bench import slow_reward
from r1jax.rl.bench.grpo_step import grpo_rows
from r1jax.rl.config import Config
from r1jax.rl.evaluate import judges

KEYS = ("staleness_step_seconds_k0", "staleness_step_seconds_k1", "staleness_host_wait_seconds_k0",
        "staleness_host_wait_seconds_k1", "staleness_speedup", "staleness_reward_seconds")


def with_slow_reward(config: Config, max_staleness: int) -> Config:
    """`config` trained on the 20 ms reward alone, at `max_staleness`; the evaluation's judges (accuracy,
    format) are scored beside it with weight 0, as a run must (rl.evaluate.missing_judges)."""
    extra = judges(config.data.tasks)
    rewards = dataclasses.replace(config.rewards, names=("host_20ms", *extra), weights=(1.0,) + (0.0,) * len(extra))
    pool = dataclasses.replace(config.reward_pool,
                               import_modules=(*config.reward_pool.import_modules, slow_reward.__name__))
    grpo = dataclasses.replace(config.grpo, max_staleness=max_staleness, dynamic_sampling=False)
    return dataclasses.replace(config, rewards=rewards, reward_pool=pool, grpo=grpo)


def summarize_staleness(rows_by_k: dict[int, list[dict]], warmup: int) -> dict:
    """The figures of KEYS from each max_staleness's GRPO rows: medians after `warmup` rows, without the last k
    rows of max_staleness k (they drain the queue sampled ahead and sample nothing: in the median, they
    flattered k = 1 until 2026-12-04)."""
    out = {"staleness_reward_seconds": slow_reward.SECONDS}
    for k, rows in rows_by_k.items():
        timed = rows[warmup:len(rows) - k]
        if not timed:
            raise UserError(f"bench staleness: {len(rows)} GRPO steps leave none after {warmup} warm-up steps"
                            + (f" and the last {k}, which sample nothing" if k else ""))
        out[f"staleness_step_seconds_k{k}"] = float(np.median([r["step_time_s"] for r in timed]))
        out[f"staleness_host_wait_seconds_k{k}"] = float(np.median([r["time/host_wait_s"] for r in timed]))
    out["staleness_speedup"] = out["staleness_step_seconds_k0"] / out["staleness_step_seconds_k1"]
    return out


def staleness_figures(config: Config, warmup: int) -> dict:
    rows = {}
    for k in (0, 1):
        with tempfile.TemporaryDirectory(prefix=f"r1jax-bench-staleness{k}-") as run_dir:
            rows[k] = grpo_rows(with_slow_reward(config, k), run_dir)
    return summarize_staleness(rows, warmup)
