"""Wall-clock timing of jitted work: compile and warm up once, then the best of a few repeats.

Best-of (not mean) because the development machine is shared: the minimum is the least disturbed run.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import jax

from r1jax.rl.host_info import host_info


def best_seconds(fn: Callable, *args, repeats: int = 3, warm_up: bool = True) -> float:
    """Seconds of the fastest of `repeats` calls of `fn(*args)`, after one untimed call that compiles
    (`warm_up=False`: the caller made it)."""
    if warm_up:
        jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def best_seconds_in_turns(*fns: Callable, repeats: int = 3, warm_up: bool = True) -> list[float]:
    """Seconds of the fastest call of each no-argument `fn`, the calls made in turns (each fn once a round,
    `repeats` rounds) after one untimed call of each. For the figures that are ratios of two timings (decode
    step at 1024 vs 128 slots, continuous vs fixed batch, 64 vs 8 experts): timed in turns, both sides of a
    ratio see the same moments of a shared machine's load, where timed one after the other a change in the
    neighbours' load between them moves the ratio by itself."""
    if warm_up:
        for fn in fns:
            jax.block_until_ready(fn())
    best = [float("inf")] * len(fns)
    for _ in range(max(repeats, 1)):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def threaded_call(step: Callable, state, *args) -> Callable:
    """A no-argument function for a step that consumes its state (donated): each call runs
    `state, out = step(state, *args)` and returns `out`. It has run twice: on a mesh the first call's outputs may
    be laid out otherwise than its inputs were placed, and the second call compiles for that layout."""
    def call():
        nonlocal state
        state, out = step(state, *args)
        return out

    for _ in range(2):
        jax.block_until_ready(call())
    return call


def decode_tokens_per_s(batch: int, new_tokens: int, prefill_s: float, full_s: float) -> float:
    """B * (N - 1) tokens over the full generate's seconds minus the one-token generate's. When noise (a
    shared machine) makes that difference non-positive, the full generate's seconds are used instead: a
    lower bound on the rate, never a division by ~0."""
    decode_s = full_s - prefill_s if full_s > prefill_s else full_s
    return batch * (new_tokens - 1) / decode_s


def device_info() -> dict:
    """What the figures were measured on (rl.host_info), with the load of a possibly shared machine."""
    return {**host_info(), "load_average": [round(x, 2) for x in os.getloadavg()]}
