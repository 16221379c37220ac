"""GQA decode attention as a Pallas TPU kernel that reads the layer-stacked KV cache where it lies.

One query per row (T = 1) against layer `layer` of the stacked cache, K [L, B, kv_heads, head_dim, S] and V
[L, B, kv_heads, S, head_dim] (model.attention's layout), in the flash-decoding style: the grid runs over
(row b, KV block j); each program DMAs block j of row b of layer `layer` (K [kv_heads, head_dim, block], V
[kv_heads, block, head_dim]: whole heads, so TPU tiling holds for any head count; K's slots are its lane
axis, so a block smaller than the cache is rounded up to a multiple of 128 slots) and folds it into an
online softmax (running max, normaliser and weighted sum in float32 VMEM scratch) for all
the row's query heads, the G heads of a kv group at once. The layer index and the rows' live lengths (one
past the last visible slot) are scalar-prefetched: the index maps clamp j to the row's last live block, so
the blocks past it repeat the previous block index and cost no DMA, and `pl.when` skips their compute. So a
step reads what each row holds (the grid still steps through the dead blocks, each at the pipeline's
fixed per-step cost: long budgets want a larger `sampling.kv_block`), and the cache is neither transposed
nor sliced (JAX's own paged_attention / ragged_paged_attention kernels want [kv_heads, pages, page,
head_dim] or combined-KV pages, which would cost a copy of this layout every step).

Masked slots inside the live range (left padding, stopped rows) score the most negative float and weigh 0;
values past a row's live length are zeroed before they are weighted, so whatever lies there (the cache's
unfilled budget, the out-of-bounds rows of a short last block) cannot leak, not even a NaN. A row with every
key masked gives zeros, as `model.kv_cache.attend_blocks` does. Scores and sums run in float32 (the dots at
HIGHEST precision), so the result equals the XLA block-wise read up to float rounding.

`decode_attention` runs it: compiled by Mosaic on TPU, or in Pallas's TPU interpret mode anywhere (tests on
CPU); under a mesh (`r1jax.sharding.context`) it runs per shard in a `shard_map` over the rows and kv heads
(the cache's own sharding), since XLA cannot partition a kernel call. MLA (deepseek_v3) does not use it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from r1jax.sharding.context import active_rules, mesh_shape
from r1jax.sharding.hlo_traffic import KV_READ_SCOPE

F32_MIN = float(jnp.finfo(jnp.float32).min)


def _kernel(layer_ref, length_ref, q_ref, k_ref, v_ref, keep_ref, out_ref, max_ref, norm_ref, acc_ref, *,
            block: int, scale: float):
    """One (row, block) program. q_ref/out_ref [kv_heads, G, head_dim]; k_ref [kv_heads, head_dim, block], v_ref
    [kv_heads, block, head_dim]; keep_ref [1, block] (int32, nonzero: visible); scratch max/norm [kv_heads, G, 1],
    acc as out."""
    from jax.experimental import pallas as pl  # (Pallas is imported where a kernel is traced: ~0.2 s at start-up)

    del layer_ref  # used by the index maps only
    row, j = pl.program_id(0), pl.program_id(1)
    length = length_ref[row]

    @pl.when(j == 0)
    def _init():
        max_ref[...] = jnp.full(max_ref.shape, F32_MIN, jnp.float32)
        norm_ref[...] = jnp.zeros(norm_ref.shape, jnp.float32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    @pl.when(j * block < length)
    def _accumulate():
        keep = keep_ref[...] != 0  # [1, block]
        live = j * block + jax.lax.broadcasted_iota(jnp.int32, (block, 1), 0) < length  # [block, 1]
        for h in range(q_ref.shape[0]):  # kv heads: a handful, unrolled
            q_GH = q_ref[h].astype(jnp.float32)
            k_HS = k_ref[h].astype(jnp.float32)
            v_SH = jnp.where(live, v_ref[h].astype(jnp.float32), 0.0)
            scores = jnp.dot(q_GH, k_HS, precision="highest", preferred_element_type=jnp.float32) * scale
            scores = jnp.where(keep, scores, -jnp.inf)
            max_prev = max_ref[h]  # [G, 1]
            max_new = jnp.maximum(max_prev, jnp.max(scores, axis=1, keepdims=True))
            probs = jnp.where(keep, jnp.exp(scores - max_new), 0.0)
            rescale = jnp.exp(max_prev - max_new)
            norm_ref[h] = norm_ref[h] * rescale + jnp.sum(probs, axis=1, keepdims=True)
            acc_ref[h] = acc_ref[h] * rescale + jnp.dot(probs, v_SH, precision="highest",
                                                        preferred_element_type=jnp.float32)
            max_ref[h] = max_new

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        out_ref[...] = acc_ref[...] / jnp.maximum(norm_ref[...], jnp.finfo(jnp.float32).tiny)


def decode_attention_local(q_BKGH, k_cache, v_cache, layer, mask_BS, *, block: int, scale: float,
                           interpret: bool = False) -> jax.Array:
    """Softmax(q k^T * scale) v over the visible slots of layer `layer`, float32 [B, kv_heads, G, head_dim].

    `k_cache` [L, B, kv_heads, head_dim, S], `v_cache` [L, B, kv_heads, S, head_dim]; `mask_BS`: the visible
    slots; `block`: slots per program (the last block may run past S; a cache of fewer slots is one block;
    compiled, a multiple of 128 below S, K's lane tiling)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import tpu as pltpu

    _, batch, kv_heads, head_dim, length = k_cache.shape
    if not interpret and block < length:
        block = -(-block // 128) * 128
    block = min(block, length)
    blocks = -(-length // block)
    # the mask is tiny next to the cache: padded to whole blocks, each block a full [1, block] tile
    keep = jnp.pad(mask_BS.astype(jnp.int32), ((0, 0), (0, blocks * block - length)))
    keep = keep.reshape(batch, blocks, 1, block)
    lengths_B = jnp.max(jnp.where(mask_BS, jnp.arange(1, length + 1, dtype=jnp.int32), 0), axis=1)

    def last_block(row, length_ref):  # lax.div: floor division lowers through sign, which needs a TPU to lower
        return jnp.maximum(jax.lax.div(length_ref[row] + block - 1, block) - 1, 0)

    def k_index(row, j, layer_ref, length_ref):
        return layer_ref[0], row, 0, 0, jnp.minimum(j, last_block(row, length_ref))

    def v_index(row, j, layer_ref, length_ref):
        return layer_ref[0], row, 0, jnp.minimum(j, last_block(row, length_ref)), 0

    def keep_index(row, j, layer_ref, length_ref):
        return row, jnp.minimum(j, last_block(row, length_ref)), 0, 0

    per_row = pl.BlockSpec((None,) + q_BKGH.shape[1:], lambda row, j, *_: (row, 0, 0, 0))
    k_spec = pl.BlockSpec((None, None, kv_heads, head_dim, block), k_index)
    v_spec = pl.BlockSpec((None, None, kv_heads, block, head_dim), v_index)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2, grid=(batch, blocks),
        in_specs=[per_row, k_spec, v_spec, pl.BlockSpec((None, None, 1, block), keep_index)],
        out_specs=per_row,
        scratch_shapes=[pltpu.VMEM(q_BKGH.shape[1:3] + (1,), jnp.float32)] * 2
        + [pltpu.VMEM(q_BKGH.shape[1:], jnp.float32)])
    call = pl.pallas_call(
        functools.partial(_kernel, block=block, scale=scale), grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(q_BKGH.shape, jnp.float32),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=pltpu.InterpretParams() if interpret else False)
    with jax.named_scope(f"{KV_READ_SCOPE}{block}"):  # sharding.decode_stats counts its reads by this name
        return call(jnp.reshape(layer, (1,)).astype(jnp.int32), lengths_B, q_BKGH, k_cache, v_cache, keep)


def decode_attention(q_BKGH, k_cache, v_cache, layer, mask_BS, *, block: int, scale: float,
                     interpret: bool = False) -> jax.Array:
    """`decode_attention_local`, per shard under a multi-device mesh: rows over the batch axes and kv heads
    over theirs (the cache's layout by the active rules; a dimension that does not divide stays whole)."""
    run = functools.partial(decode_attention_local, block=block, scale=scale, interpret=interpret)
    rules = active_rules()
    if rules is None:
        return run(q_BKGH, k_cache, v_cache, layer, mask_BS)
    shape = mesh_shape()
    q_spec = rules.spec(("batch", "act_kv_heads", None, None), q_BKGH.shape, shape, strict=False)
    cache_spec = rules.spec((None, "batch", "act_kv_heads", None, None), k_cache.shape, shape, strict=False)
    mask_spec = rules.spec(("batch", None), mask_BS.shape, shape, strict=False)
    return jax.shard_map(run, in_specs=(q_spec, cache_spec, cache_spec, PartitionSpec(), mask_spec),
                         out_specs=q_spec, check_vma=False)(q_BKGH, k_cache, v_cache, layer, mask_BS)
