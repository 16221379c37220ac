"""Sampler throughput: prefill and decode tokens/s, and one decode step at cache position 128 vs 1024.

Greedy decoding (temperature 0; the filters still run, traced) of B random prompts of P tokens, N new tokens
each, EOS ignored so every row runs to N. Prefill is timed as a generate of one token (the prefill plus
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

from r1jax.rl.bench.timing import best_seconds, best_seconds_threaded, decode_tokens_per_s
from r1jax.rl.decoding import merged_policy
from r1jax.rl.sampler import generate_padded
from r1jax.rl.sampler_layout import inference_layout
from r1jax.rl.update import split_policy

DECODE_POSITIONS = (128, 1024)


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


def decode_step_seconds(graphdef, state, batch: int, position: int, repeats: int = 3, kv_block: int = 0) -> float:
    """Seconds of one jitted decode step for `batch` rows at cache slot `position`. The caches are donated
    and updated in place, as they are in the sampler's decode loop."""
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
    seconds, _ = best_seconds_threaded(step, caches, state, jnp.ones((batch, 1), jnp.int32), repeats=repeats)
    return seconds


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
    batch, prompt_len = prompts_BP.shape
    prefill_s = best_seconds(greedy_generate(graphdef, state, prompts_BP, 1, kv_block), repeats=repeats)
    full_s = best_seconds(greedy_generate(graphdef, state, prompts_BP, new_tokens, kv_block, cache_phases),
                          repeats=repeats)
    near, far = positions
    step_near = decode_step_seconds(graphdef, state, batch, near, repeats, kv_block)
    step_far = decode_step_seconds(graphdef, state, batch, far, repeats, kv_block)
    return {
        "sampler_batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "prefill_tokens_per_s": batch * prompt_len / prefill_s,
        "decode_tokens_per_s": decode_tokens_per_s(batch, new_tokens, prefill_s, full_s),
        "generate_tokens_per_s": batch * new_tokens / full_s,
        f"decode_step_ms_at_{near}": 1e3 * step_near, f"decode_step_ms_at_{far}": 1e3 * step_far,
        f"decode_step_ratio_{far}_vs_{near}": step_far / step_near,
    }
