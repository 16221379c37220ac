"""Block-wise decode attention (`forward_cached(..., kv_block=n)`) against the dense read of the whole cache."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.model.kv_cache import DENSE_READ_BLOCKS, reads_blockwise
from r1jax.model.factory import init_policy
from r1jax.rl.continuous import generate_continuous
from r1jax.rl.sampler import Sampler, SamplingConfig, generate_padded
from tests.model.tiny import FAMILIES

CACHE_LEN, BLOCK, ROWS = 13, 4, 3  # 13 = 3 blocks + 1: the last piece is one slot, read from live = 13


def poison_slots(policy, caches, start: int):
    """The caches with NaN in every slot from `start` on (each entry's slots on its own axis)."""
    def poison(c, axis):
        where = (slice(None),) * axis + (slice(start, None),)
        return c.at[where].set(jnp.nan)
    return jax.tree.map(poison, caches, policy.cache_slot_axes())


def filled_cache(policy, seed: int):
    """A cache of random entries, and a valid mask with a few holes (left padding, stopped rows)."""
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    caches = jax.tree.map(lambda c: jax.random.normal(next(keys), c.shape, c.dtype),
                          policy.init_cache(ROWS, CACHE_LEN))
    valid_BS = np.array(jax.random.uniform(next(keys), (ROWS, CACHE_LEN)) > 0.25)
    valid_BS[:, 0] = True  # every row has a visible key
    return caches, valid_BS


@functools.partial(jax.jit, static_argnames=("graphdef", "kv_block"))
def decode_step(graphdef, state, caches, valid_BS, cache_index, *, kv_block):
    token_B1 = jnp.arange(ROWS, dtype=jnp.int32)[:, None] + 5
    positions_B1 = jnp.broadcast_to(jnp.reshape(cache_index, (-1, 1)), (ROWS, 1))
    out, caches = nnx.merge(graphdef, state).forward_cached(
        token_B1, positions_B1, jnp.ones((ROWS, 1), bool), caches, cache_index, valid_BS, kv_block=kv_block)
    return out.logits_BTV, caches


def decode_logits(policy, caches, valid_BS, cache_index, kv_block):
    graphdef, state = nnx.split(policy)
    return decode_step(graphdef, state, caches, jnp.asarray(valid_BS), jnp.asarray(cache_index, jnp.int32),
                       kv_block=kv_block)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("index", [0, 3, 4, 7, 8, 12, (2, 12, 5)])  # block ends, starts, one slot per row
def test_blockwise_decode_equals_the_dense_read(family, index):
    policy = init_policy(FAMILIES[family], seed=0)
    caches, valid_BS = filled_cache(policy, seed=1)
    cache_index = index
    dense_logits, dense_caches = decode_logits(policy, caches, valid_BS, cache_index, 0)
    block_logits, block_caches = decode_logits(policy, caches, valid_BS, cache_index, BLOCK)
    np.testing.assert_allclose(np.asarray(block_logits), np.asarray(dense_logits), atol=2e-5, rtol=1e-5)
    for dense, block in zip(jax.tree.leaves(dense_caches), jax.tree.leaves(block_caches)):
        np.testing.assert_allclose(np.asarray(block), np.asarray(dense), atol=2e-5)  # later layers: rounding


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_blockwise_reads_nothing_past_the_live_slots(family):
    """Entries past the furthest row's slot (the unfilled budget) are never read: NaNs there change nothing."""
    policy = init_policy(FAMILIES[family], seed=0)
    caches, valid_BS = filled_cache(policy, seed=2)
    index = (2, 5, 3)
    poisoned = poison_slots(policy, caches, 8)
    clean, _ = decode_logits(policy, caches, valid_BS, index, BLOCK)
    assert np.array_equal(np.asarray(decode_logits(policy, poisoned, valid_BS, index, BLOCK)[0]), np.asarray(clean))
    assert np.isnan(np.asarray(decode_logits(policy, poisoned, valid_BS, index, 0)[0])).all()  # the dense read does


def test_sampler_with_blockwise_attention_equals_the_dense_sampler():
    """Greedy rollouts read block-wise (a 10-slot cache in blocks of 4: two and a half) equal the dense read's.
    deepseek_v3 (the default run's family); tests/rl/test_continuous.py samples qwen3_moe block-wise. The dense
    sampler's program is test_the_compiled_decode_loop_never_copies_a_whole_cache[deepseek_v3-True-0]'s (the
    same shapes and options: compiled once in a session)."""
    assert reads_blockwise(4 + 6, 4)
    graphdef, state = nnx.split(init_policy(FAMILIES["deepseek_v3"], seed=0))
    prompts = [[5, 6, 7], [9, 10, 11, 12], [20]]
    config = SamplingConfig(max_new_tokens=6, prompt_buckets=(4,), top_p=0.99)  # top_p: the filters compiled
    rollouts = {block: Sampler(graphdef, dataclasses.replace(config, kv_block=block), stop_ids=(3,), pad_id=0)
                .generate(state, prompts, samples=2, temperature=0.0) for block in (0, 4)}
    assert np.array_equal(np.asarray(rollouts[4].tokens_BT), np.asarray(rollouts[0].tokens_BT))
    np.testing.assert_allclose(np.asarray(rollouts[4].logprobs_BN), np.asarray(rollouts[0].logprobs_BN), atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_cache_of_at_most_two_blocks_is_read_whole(family):
    """Both sides of `DENSE_READ_BLOCKS`: 13 slots in blocks of 7 (two blocks) are read exactly as the dense
    read does, bit for bit; in blocks of 6 (two and a bit) block-wise, so the unfilled slots are not read."""
    assert DENSE_READ_BLOCKS == 2
    # the boundary itself: exactly two blocks are read whole, one slot more block-wise; kv_block 0 never
    assert [reads_blockwise(n, 7) for n in (13, 14, 15)] == [False, False, True] and not reads_blockwise(99, 0)
    policy = init_policy(FAMILIES[family], seed=0)
    caches, valid_BS = filled_cache(policy, seed=3)
    index = (2, 5, 3)
    dense, _ = decode_logits(policy, caches, valid_BS, index, 0)
    assert np.array_equal(np.asarray(decode_logits(policy, caches, valid_BS, index, 7)[0]), np.asarray(dense))
    poisoned = poison_slots(policy, caches, 6)
    blockwise = np.asarray(decode_logits(policy, poisoned, valid_BS, index, 6)[0])
    np.testing.assert_allclose(blockwise, np.asarray(dense), atol=2e-5, rtol=1e-5)
    assert np.isnan(np.asarray(decode_logits(policy, poisoned, valid_BS, index, 7)[0])).all()  # read whole


@pytest.mark.parametrize("slots", [0, 6])
@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_compiled_decode_loop_never_copies_a_whole_cache(family, scan_layers, slots):
    """The sampler's decode loop (the cache read whole) writes each step's entries in place: XLA copies no
    cache-shaped buffer. Before a step read the cache as it was and wrote after (`model.decoder._after`),
    XLA's CPU program copied every cache entry up to four times per step. `slots`: continuous batching
    (one slot per row written at its own position, rl.continuous), else the fixed batch."""
    cfg = dataclasses.replace(FAMILIES[family], scan_layers=scan_layers)
    policy = init_policy(cfg, seed=0)
    graphdef, state = nnx.split(policy)
    # 3 prompts x 2 samples, as test_sampler_with_blockwise_attention_equals_the_dense_sampler (one program)
    prompts, valid = jnp.full((3, 4), 5, jnp.int32), jnp.ones((3, 4), bool)
    args = (jax.random.key(0), jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0))
    options = dict(max_new=6, samples=2, stop_ids=(3,), pad_id=0, ignore_eos=False)
    generate = functools.partial(generate_continuous.lower, slots=slots) if slots else generate_padded.lower
    hlo = generate(graphdef, state, prompts, valid, *args, **options).compile().as_text()
    caches = policy.for_decoding().init_cache(6, 10)
    shapes = {"f32[" + ",".join(map(str, c.shape)) + "]" for c in jax.tree.leaves(caches)}
    # (a copy of a broadcast fills a fresh cache, continuous batching's slots, once before the loop)
    copies = [line for line in hlo.splitlines()
              if " copy(" in line and "copy(%broadcast" not in line and any(f"= {s}" in line for s in shapes)]
    assert not copies, copies
