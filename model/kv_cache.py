"""The decode cache's slots: writing a step's entries, reading a range of slots, and the two ways a decode step
attends over them without a copy of the whole cache.

Each cache entry has its slots on an axis of its own (the attention class's `CACHE_SLOT_AXES`, counted in an
entry without the leading layer axis; model.attention): `write_slots` and `slot_range` are the only code
that needs it. `step_softmax`: a step's softmax over the cache as it was plus its own new entry (the cache
read whole, model.decoder). `attend_blocks`: the cache read block by block up to the live slots.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from r1jax.sharding.context import active_rules, mesh_shape


def write_slots(entry, layer, index, new, slot_axis: int, logical_axes=None):
    """`entry` ([L, B, ...], slots on axis `slot_axis` + 1) with layer `layer`'s slots from `index` set to
    `new` ([B, ...], the new slots on `slot_axis`): `index` a scalar (T new slots per row, in place), or one
    slot per row ([B], T = 1). `logical_axes`: the entry's per-row axes (the attention class's `CACHE_AXES`);
    under a mesh that splits the rows, each device writes its own rows (below)."""
    new = new.astype(entry.dtype)
    if jnp.ndim(index) == 0:
        start = [0] * entry.ndim
        start[0], start[slot_axis + 1] = layer, index
        return jax.lax.dynamic_update_slice(entry, new[None], tuple(start))
    write = functools.partial(_write_rows, slot_axis=slot_axis)
    rules = active_rules()
    spec = None if rules is None or logical_axes is None else rules.spec(logical_axes, new.shape, mesh_shape(),
                                                                          strict=False)
    if spec is None or spec[0] is None:
        return write(entry, layer, index, new)
    # a write at (layer, row, slot) indices over rows split across devices: XLA's partitioner gathers every
    # row's entries and slots to every device (two collectives per cache entry and layer at every step);
    # the same write on each device's own rows moves nothing
    return jax.shard_map(write, in_specs=(P(None, *spec), P(), P(spec[0]), spec), out_specs=P(None, *spec))(
        entry, layer, index, new)


def _write_rows(entry, layer, index, new, slot_axis: int):
    """`write_slots` with one slot per row, on the rows at hand."""
    rows = jnp.arange(new.shape[0])
    where = (layer, rows) + (slice(None),) * (slot_axis - 1) + (index,)
    return entry.at[where].set(jnp.take(new, 0, axis=slot_axis))


def slot_range(entry, start, size: int, slot_axis: int, layer):
    """Slots [start, start + size) of layer `layer` of `entry` ([L, B, ...], slots on axis `slot_axis` + 1):
    [B, ...] with `size` slots on `slot_axis`."""
    starts = [0] * entry.ndim
    starts[0], starts[slot_axis + 1] = layer, start
    sizes = list(entry.shape)
    sizes[0], sizes[slot_axis + 1] = 1, size
    return jax.lax.dynamic_slice(entry, tuple(starts), tuple(sizes))[0]


class KVRead(NamedTuple):
    """How a decode step reads the cache: blocks of `block` slots up to slot `live` (exclusive, traced)."""
    live: jax.Array
    block: int


# A cache of at most this many blocks is read whole (the dense read), not block-wise: there the loop saves at
# most a block's read and pays for its trips. (On a CPU the whole read, which copies nothing, is as fast as
# 64-slot blocks at ~128 slots and faster at ~1,024, where each block is copied out before it is read;
# benchmarks/HISTORY.md.)
DENSE_READ_BLOCKS = 2


def reads_blockwise(cache_len: int, kv_block: int) -> bool:
    """Whether a decode step over a cache of `cache_len` slots reads it block-wise (`kv_block` > 0 and the
    cache longer than `DENSE_READ_BLOCKS` blocks) rather than whole."""
    return 0 < kv_block and DENSE_READ_BLOCKS * kv_block < cache_len


def attend_blocks(block_scores, block_values, acc_shape, cache, slot_axes, layer, mask_BS, read: KVRead
                  ) -> jax.Array:
    """Online softmax over the cache slots [0, live) of layer `layer`, read in whole blocks from slot 0.

    `cache`: the segment's stacked entries ([L, B, ...] each, slots on `slot_axes` + 1); `block_scores(entries)`
    gives float32 scores [B, ..., size] of one piece of `size` slots (the key axis last), `block_values(probs,
    entries)` the
    probs-weighted values, float32 of `acc_shape`. The slots tile as floor(S / block) blocks and, when `block`
    does not divide S, a last piece of S mod block slots, read only once `live` reaches into it: a step never
    reads more slots than the dense read (S), nor any block past the one holding slot `live` - 1.
    Returns the softmax-weighted values, float32 [acc_shape]."""
    length = mask_BS.shape[1]
    block = min(read.block, length)
    full, tail = divmod(length, block)
    batch = mask_BS.shape[0]

    def piece(start, size):  # (entries, keep) of slots [start, start + size) of this layer
        entries = tuple(slot_range(c, start, size, axis, layer) for c, axis in zip(cache, slot_axes))
        return entries, jax.lax.dynamic_slice_in_dim(mask_BS, start, size, axis=1)

    def accumulate(carry, entries, keep_BK):
        max_M, norm_M, acc = carry
        scores = block_scores(entries)
        keep = keep_BK.reshape((batch,) + (1,) * (scores.ndim - 2) + (keep_BK.shape[1],))
        new_max_M = jnp.maximum(max_M, jnp.max(jnp.where(keep, scores, -jnp.inf), axis=-1))
        probs = jnp.where(keep, jnp.exp(scores - new_max_M[..., None]), 0.0)
        rescale_M = jnp.exp(max_M - new_max_M)
        acc = acc * rescale_M.reshape(rescale_M.shape + (1,) * (acc.ndim - rescale_M.ndim))
        return new_max_M, norm_M * rescale_M + jnp.sum(probs, axis=-1), acc + block_values(probs, entries)

    stats_shape = acc_shape[:-1]
    carry = (jnp.full(stats_shape, jnp.finfo(jnp.float32).min), jnp.zeros(stats_shape), jnp.zeros(acc_shape))

    def read_block(j, c):
        if not tail:
            return accumulate(c, *piece(j * block, block))
        # the last piece is read by the loop's last trip, its slice starting at the trip's index: a slice
        # outside the loop is fused with this step's cache write by XLA, which then copies the whole cache
        return jax.lax.cond(j < full, lambda c: accumulate(c, *piece(j * block, block)),
                            lambda c: accumulate(c, *piece(j * block, tail)), c)

    carry = jax.lax.fori_loop(0, (read.live + block - 1) // block, read_block, carry)
    _, norm_M, acc = carry
    norm_M = jnp.maximum(norm_M, jnp.finfo(jnp.float32).tiny)  # every key masked: zeros, not NaN
    return acc / norm_M.reshape(norm_M.shape + (1,) * (acc.ndim - norm_M.ndim))


def step_softmax(scores_old, scores_new, keep_old, keep_new):
    """One decode step's softmax over the cache as it was (`scores_old`, keys last, visible where `keep_old`)
    and the step's own new entry (`scores_new`, one per query, visible where `keep_new`), float32: the
    probabilities of the old slots and of the new entry, which sum to 1. Masked scores weigh as
    `masked_softmax` weighs them (the most negative float)."""
    low = jnp.finfo(jnp.float32).min
    old = jnp.where(keep_old, scores_old.astype(jnp.float32), low)
    new = jnp.where(keep_new, scores_new.astype(jnp.float32), low)
    top = jnp.maximum(jnp.max(old, axis=-1), new)
    p_old, p_new = jnp.exp(old - top[..., None]), jnp.exp(new - top)
    norm = jnp.sum(p_old, axis=-1) + p_new
    return p_old / norm[..., None], p_new / norm
