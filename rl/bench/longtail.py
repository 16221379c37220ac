"""A long-tail rollout: continuous batching (sampling.slots) vs the fixed-batch sampler on the same weights.

R1-style completion lengths have a long tail: most rows stop early, a few run to the budget. P x G rows of
random prompts, their lengths forced per row (the samplers' `row_max_new` hook, EOS ignored) so the figure
does not depend on what a random model happens to emit: most rows stop at 1/8 of the budget N, about one in
16 runs to N (at least one). Both samplers decode greedily and generate the same tokens; the figure is
generated tokens/s of `slots` continuous-batching slots (fewer in the tail, `tail_slots`: once nothing is
pending, the few long rows left run on in as many slots as they fill) over that of the fixed batch of all
P x G rows, which decodes for as long as its longest row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.rl.bench.timing import best_seconds_in_turns
from r1jax.rl.continuous import generate_continuous
from r1jax.rl.sampler import generate_padded


def longtail_lengths(rows: int, budget: int, seed: int = 0) -> np.ndarray:
    """Per-row token counts: budget // 8 (at least 1), about one row in 16 (at least one) the whole budget."""
    rng = np.random.RandomState(seed)
    lengths = np.full(rows, max(budget // 8, 1), np.int32)
    long_rows = rng.rand(rows) < 1 / 16
    long_rows[rng.randint(rows)] = True
    lengths[long_rows] = budget
    return lengths


def longtail_figures(graphdef, state, prompts_PP: np.ndarray, samples: int, budget: int, slots: int,
                     tail_slots: tuple[int, ...] = (), kv_block: int = 0, repeats: int = 3,
                     cache_phases: int = 1) -> dict:
    """The figures; `cache_phases`: SamplingConfig.cache_phases, for both samplers."""
    prompts, prompt_len = prompts_PP.shape
    lengths_R = longtail_lengths(prompts * samples, budget)
    args = (graphdef, state, jnp.asarray(prompts_PP), jnp.ones(prompts_PP.shape, bool), jax.random.key(0),
            jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
    options = dict(max_new=budget, samples=samples, stop_ids=(), pad_id=0, ignore_eos=True, kv_block=kv_block,
                   cache_phases=cache_phases)
    row_max_new = jnp.asarray(lengths_R)
    fixed_s, continuous_s = best_seconds_in_turns(
        lambda: generate_padded(*args, row_max_new_B=row_max_new, **options),
        lambda: generate_continuous(*args, row_max_new, slots=slots, tail_slots=tuple(tail_slots), **options),
        repeats=repeats)
    tokens = int(lengths_R.sum())
    return {"longtail_rows": prompts * samples, "longtail_slots": slots,
            "longtail_tail_slots": list(tail_slots), "longtail_budget": budget,
            "longtail_tokens": tokens, "longtail_fixed_tokens_per_s": tokens / fixed_s,
            "longtail_continuous_tokens_per_s": tokens / continuous_s, "longtail_speedup": fixed_s / continuous_s}
