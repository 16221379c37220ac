"""Sampler throughput: prefill and decode tokens/s, and one decode step at cache position 128 vs 1024.

Greedy decoding (temperature 0: neither the draw nor a top-k/top-p filter runs) of B random prompts of P tokens,
N new tokens each, EOS ignored so every row runs to N. Prefill is timed as a generate of one token (the prefill plus
one decode step); decode tokens/s is B * (N - 1) over the difference between the full generate and that.
The decode step is one `forward_cached` call at a cache slot, with the cache sized to that slot (+8): the
cost of a step with ~128 vs ~1024 tokens of context.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax.rl.bench.timing import best_seconds_in_turns, decode_tokens_per_s, threaded_call
from r1jax.rl.decoding import merged_policy
from r1jax.rl.sampler import generate_padded
from r1jax.rl.sampler_layout import inference_layout
from r1jax.rl.update import split_policy

DECODE_POSITIONS = (128, 1024)
STEP_ROUNDS_PER_REPEAT = 3


def bench_prompts(vocab: int, batch: int, prompt_len: int, seed: int = 0) -> np.ndarray:
    """[B, P] random token ids (ids below 4 are left to special tokens)."""
    return np.random.RandomState(seed).randint(4, vocab, (batch, prompt_len)).astype(np.int32)


def greedy_generate(graphdef, state, prompts_BP: np.ndarray, new_tokens: int, kv_block: int = 0,
                    cache_phases: int = 1):
    """A no-argument function running the jitted sampler greedily on the prompts (`kv_block`, `cache_phases`:
    the SamplingConfig's)."""
    prompts = jnp.asarray(prompts_BP)
    valid = jnp.ones_like(prompts, bool)
    args = (jax.random.key(0), jnp.float32(0.0), jnp.int32(0), jnp.float32(1.0))
    return lambda: generate_padded(graphdef, state, prompts, valid, *args, max_new=new_tokens, samples=1,
                                   stop_ids=(), pad_id=0, ignore_eos=True, kv_block=kv_block,
                                   cache_phases=cache_phases)


def decode_step_call(graphdef, state, batch: int, position: int, kv_block: int = 0):
    """A no-argument function running one jitted decode step for `batch` rows at cache slot `position` (its
    logits). The caches are donated and updated in place, as they are in the sampler's decode loop
    (`timing.threaded_call`: it has run twice)."""
    cache_len = position + 8
    graphdef, state = nnx.split(merged_policy(graphdef, state).for_decoding())  # as the sampler's loop runs it

    @functools.partial(jax.jit, donate_argnums=0)
    def step(caches, state, token_B1):
        policy = nnx.merge(graphdef, state)
        kv_valid_BS = jnp.broadcast_to(jnp.arange(cache_len)[None, :] <= position, (batch, cache_len))
        out, caches = policy.forward_cached(token_B1, jnp.full_like(token_B1, position),
                                            jnp.ones_like(token_B1, bool), caches, jnp.int32(position), kv_valid_BS,
                                            kv_block=kv_block)
        return caches, out.logits_BTV

    caches = nnx.merge(graphdef, state).init_cache(batch, cache_len)
    return threaded_call(step, caches, state, jnp.ones((batch, 1), jnp.int32))


def sampler_policy(config, policy, mesh, rules):
    """(graphdef, state, mesh, rules, which layout) the trainer's sampler decodes `policy` with: its weights
    moved into the sampler's layout (rl.sampler_layout.inference_layout, as `r1jax eval` does: on several
    devices the inference layout, rows over the data-parallel axes), the mesh and rules to trace the sampler
    under. The bench's sampler figures on the training layout would time a layout no rollout runs in (on a
    multi-device mesh: weights gathered at every token)."""
    graphdef, params, bias = split_policy(policy)
    layout, state = inference_layout(config, (params, bias), mesh, rules)
    if layout is None:
        return graphdef, state, mesh, rules, "training"
    shape = " ".join(f"{k}={v}" for k, v in layout.mesh.shape.items())
    return layout.graphdef, state, layout.mesh, layout.rules, f"inference ({shape})"


def sampler_figures(graphdef, state, prompts_BP: np.ndarray, new_tokens: int, repeats: int = 3,
                    positions: tuple[int, int] = DECODE_POSITIONS, kv_block: int = 0, cache_phases: int = 1) -> dict:
    """Decode tokens/s from a one-token and a full generate timed in turns; one decode step at the two
    positions timed in turns, `STEP_ROUNDS_PER_REPEAT` x `repeats` rounds (a step takes milliseconds)."""
    batch, prompt_len = prompts_BP.shape
    prefill_s, full_s = best_seconds_in_turns(
        greedy_generate(graphdef, state, prompts_BP, 1, kv_block),
        greedy_generate(graphdef, state, prompts_BP, new_tokens, kv_block, cache_phases), repeats=repeats)
    near, far = positions
    step_near, step_far = best_seconds_in_turns(
        *(decode_step_call(graphdef, state, batch, position, kv_block) for position in (near, far)),
        repeats=STEP_ROUNDS_PER_REPEAT * repeats, warm_up=False)
    return {
        "sampler_batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "prefill_tokens_per_s": batch * prompt_len / prefill_s,
        "decode_tokens_per_s": decode_tokens_per_s(batch, new_tokens, prefill_s, full_s),
        "generate_tokens_per_s": batch * new_tokens / full_s,
        f"decode_step_ms_at_{near}": 1e3 * step_near, f"decode_step_ms_at_{far}": 1e3 * step_far,
        f"decode_step_ratio_{far}_vs_{near}": step_far / step_near,
    }
