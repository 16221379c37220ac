"""Attention for both families, split into queries, cacheable key/value entries, and attend.

- `GQAttention` (qwen3_moe): grouped-query attention with per-head RMSNorm on q and k before rotary.
  Its cache entries are K and V per kv head.
- `MLAttention` (deepseek_v3): multi-head latent attention. Its cache entries are the normalised latent
  c_BSC and the rotated shared rope key k_BSR, not full per-head K/V; `attend` expands the latent.

Scores and softmax run in float32; masked scores use the most negative finite float so that a query row
with every key masked (padding) gives a uniform, finite distribution instead of NaN.

Decoding can instead read the layer-stacked cache block by block (`attend_blocks`): a while loop over KV
blocks up to the live length (the last one short when the block does not divide the cache, so a step never
reads more than the dense read) with an online softmax (the running max, normaliser and weighted sum of the
FlashAttention papers), so a step's attention costs what the longest row holds, not the cache's budget, and
no layer's whole cache is sliced out (XLA's CPU dots copy such a slice). It equals the dense softmax up to
float rounding (the sums run in another order); a row with every key masked gives zeros, not a uniform mix.
GQA's block-wise read runs as a Pallas kernel when compiled for TPU (model.pallas_attention, the same
online softmax over the same blocks); elsewhere its blocks are read by two batched matrix products per row
with block-diagonal queries (`GQAttention._read_blocks`). MLA's latent read always runs as the XLA loop here.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.model.config import ModelConfig
from r1jax.model.layers import RMSNorm, Stack, apply_rope, apply_rope_interleaved, dtype_of, make_param
from r1jax.model.pallas_attention import decode_attention
from r1jax.sharding.context import constrain


def masked_softmax(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis in float32 where `mask` is True."""
    scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


def causal_mask(valid_BS: jax.Array, num_queries: int, segment_ids_BS: jax.Array | None = None) -> jax.Array:
    """[B, T, S] mask for a full sequence: key s visible to query t when s <= t and s is a real token, and,
    with `segment_ids_BS` (packed rows, T = S), when s and t belong to the same segment."""
    s = valid_BS.shape[1]
    causal_TS = jnp.arange(num_queries)[:, None] >= jnp.arange(s)[None, :]
    mask_BTS = causal_TS[None] & valid_BS[:, None, :].astype(bool)
    if segment_ids_BS is None:
        return mask_BTS
    return mask_BTS & (segment_ids_BS[:, :, None] == segment_ids_BS[:, None, :])


class KVRead(NamedTuple):
    """How a decode step reads the cache: blocks of `block` slots up to slot `live` (exclusive, traced)."""
    live: jax.Array
    block: int


# A cache of at most this many blocks is read whole (the dense read), not block-wise: there the loop saves at
# most a block's read and pays for its trips (on a CPU, 64-slot blocks were a few percent slower than the
# dense read of caches up to 136 slots and faster from about 150 on).
DENSE_READ_BLOCKS = 2


def reads_blockwise(cache_len: int, kv_block: int) -> bool:
    """Whether a decode step over a cache of `cache_len` slots reads it block-wise (`kv_block` > 0 and the
    cache longer than `DENSE_READ_BLOCKS` blocks) rather than whole."""
    return 0 < kv_block and DENSE_READ_BLOCKS * kv_block < cache_len


def attend_blocks(block_scores, block_values, acc_shape, cache, layer, mask_BS, read: KVRead) -> jax.Array:
    """Online softmax over the cache slots [0, live) of layer `layer`, read in whole blocks from slot 0.

    `cache`: the segment's stacked entries ([L, B, S, ...] each); `block_scores(entries)` gives float32 scores
    [B, ..., size] of one piece of `size` slots (the key axis last), `block_values(probs, entries)` the
    probs-weighted values, float32 of `acc_shape`. The slots tile as floor(S / block) blocks and, when `block`
    does not divide S, a last piece of S mod block slots, read only once `live` reaches into it: a step never
    reads more slots than the dense read (S), nor any block past the one holding slot `live` - 1.
    Returns the softmax-weighted values, float32 [acc_shape]."""
    length = cache[0].shape[2]
    block = min(read.block, length)
    full, tail = divmod(length, block)
    batch = mask_BS.shape[0]

    def piece(start, size):  # (entries, keep) of slots [start, start + size) of this layer
        entries = tuple(jax.lax.dynamic_slice(c, (layer, 0, start) + (0,) * (c.ndim - 3),
                                              (1, batch, size) + c.shape[3:])[0] for c in cache)
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


class GQAttention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, stack: Stack = ()):
        d, n, k, h = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = make_param(rngs, cfg, (d, n, h), ("embed", "heads", "head_dim"), stack)
        self.k_proj = make_param(rngs, cfg, (d, k, h), ("embed", "kv_heads", "head_dim"), stack)
        self.v_proj = make_param(rngs, cfg, (d, k, h), ("embed", "kv_heads", "head_dim"), stack)
        self.o_proj = make_param(rngs, cfg, (n, h, d), ("heads", "head_dim", "embed"), stack)
        if cfg.attention_bias:
            self.q_bias = make_param(rngs, cfg, (n, h), ("heads", "head_dim"), stack, init="zeros")
            self.k_bias = make_param(rngs, cfg, (k, h), ("kv_heads", "head_dim"), stack, init="zeros")
            self.v_bias = make_param(rngs, cfg, (k, h), ("kv_heads", "head_dim"), stack, init="zeros")
            self.o_bias = make_param(rngs, cfg, (d,), ("embed",), stack, init="zeros")
        self.q_norm = RMSNorm(h, cfg, rngs, stack)
        self.k_norm = RMSNorm(h, cfg, rngs, stack)
        self.has_bias = cfg.attention_bias
        self.scale = h ** -0.5
        self.dt = dtype_of(cfg.compute_dtype)
        self.decode_attention = cfg.decode_attention

    def _project(self, x_BTD, w, bias_name):
        y = jnp.einsum("BTD,DNH->BTNH", x_BTD, w[...].astype(self.dt))
        return y + getattr(self, bias_name)[...].astype(self.dt) if self.has_bias else y

    def queries(self, x_BTD, cos, sin):
        q_BTNH = self.q_norm(self._project(x_BTD, self.q_proj, "q_bias"))
        return constrain(apply_rope(q_BTNH, cos, sin), ("batch", "length", "act_heads", None))

    def entries(self, x_BTD, cos, sin):
        """The cacheable K and V for these positions."""
        k_BSKH = apply_rope(self.k_norm(self._project(x_BTD, self.k_proj, "k_bias")), cos, sin)
        v_BSKH = self._project(x_BTD, self.v_proj, "v_bias")
        axes = ("batch", "length", "act_kv_heads", None)
        return constrain(k_BSKH, axes), constrain(v_BSKH, axes)

    def attend(self, q_BTNH, entries, mask_BTS):
        k_BSKH, v_BSKH = entries
        b, t, n, h = q_BTNH.shape
        kv_heads = k_BSKH.shape[2]
        q_BTKGH = q_BTNH.reshape(b, t, kv_heads, n // kv_heads, h)
        with jax.named_scope("attention"):
            scores = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH) * self.scale
            probs = masked_softmax(scores, mask_BTS[:, None, None]).astype(self.dt)
            out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v_BSKH)
        return self._output(out_BTKGH.reshape(b, t, n, h))

    def attend_cached(self, q_BTNH, cache, layer, mask_BS, read: KVRead):
        """One query per row (T = 1) against layer `layer` of the stacked cache, read block-wise: by the Pallas
        kernel (model.pallas_attention) when compiled for TPU, by `attend_blocks` elsewhere; `model.
        decode_attention` forces either. The choice is the lowering platform's, so `r1jax compile` for TPU on
        a CPU host compiles the kernel."""
        b, _, n, h = q_BTNH.shape
        kv_heads = cache[0].shape[3]
        q_BKGH = q_BTNH.reshape(b, kv_heads, n // kv_heads, h)
        xla = functools.partial(self._read_blocks, read=read)
        kernel = functools.partial(decode_attention, block=read.block, scale=self.scale)
        with jax.named_scope("attention"):
            if self.decode_attention == "xla":
                out_BKGH = xla(q_BKGH, *cache, layer, mask_BS)
            else:
                off_tpu = xla if self.decode_attention == "auto" else functools.partial(kernel, interpret=True)
                out_BKGH = jax.lax.platform_dependent(q_BKGH, *cache, layer, mask_BS, tpu=kernel, default=off_tpu)
        return self._output(out_BKGH.astype(self.dt).reshape(b, 1, n, h))

    def _read_blocks(self, q_BKGH, k_cache, v_cache, layer, mask_BS, read: KVRead):
        """`attend_blocks` for one query per row: float32 [B, kv_heads, G, head_dim].

        Each block is read by one batched matrix product per row over its slots as they lie ([block,
        kv_heads * head_dim], no transposed copy): the queries enter as a block-diagonal [kv_heads * head_dim,
        kv_heads * G] matrix (kv head k's G queries in its own rows, zeros elsewhere), so one product gives the
        scores of every kv head ([B, kv_heads * G, block]) and one more the values of every (query, kv head)
        pair ([B, kv_heads * G, kv_heads * head_dim]), of which the diagonal pairs are kept. That multiplies
        the FLOPs by kv_heads where a decode step is bound by reading the cache: on a CPU the step of the
        bench_qwen3 preset reads its blocks about twice as fast as with a multiply-reduce over head_dim (the
        README's decode figures)."""
        b, kv_heads, g, h = q_BKGH.shape
        f32 = jnp.float32
        eye_KJ = jnp.eye(kv_heads, dtype=f32)
        q_BFC = jnp.einsum("BKGH,KJ->BKHJG", q_BKGH.astype(f32), eye_KJ).reshape(b, kv_heads * h, kv_heads * g)

        def rows(entry):  # [B, block, kv_heads * head_dim]: a bitcast
            return entry.astype(f32).reshape(b, entry.shape[1], kv_heads * h)

        def scores(entries):
            return jnp.swapaxes(jnp.einsum("BSF,BFC->BSC", rows(entries[0]), q_BFC), 1, 2) * self.scale

        def values(probs_BCS, entries):
            return jnp.einsum("BCS,BSF->BCF", probs_BCS, rows(entries[1]))

        out_BCF = attend_blocks(scores, values, (b, kv_heads * g, kv_heads * h), (k_cache, v_cache), layer,
                                mask_BS, read)
        return jnp.einsum("BKGJH,KJ->BKGH", out_BCF.reshape(b, kv_heads, g, kv_heads, h), eye_KJ)

    def _output(self, out_BTNH):
        y = jnp.einsum("BTNH,NHD->BTD", out_BTNH, self.o_proj[...].astype(self.dt))
        return y + self.o_bias[...].astype(self.dt) if self.has_bias else y

    def __call__(self, x_BTD, cos, sin, mask_BTS):
        return self.attend(self.queries(x_BTD, cos, sin), self.entries(x_BTD, cos, sin), mask_BTS)


class MLAttention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, stack: Stack = ()):
        d, n = cfg.hidden_size, cfg.num_attention_heads
        c, r = cfg.kv_lora_rank, cfg.qk_rope_head_dim
        self.q_lora = cfg.q_lora_rank is not None
        if self.q_lora:
            self.q_a_proj = make_param(rngs, cfg, (d, cfg.q_lora_rank), ("embed_in", "q_lora"), stack)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg, rngs, stack)
            self.q_b_proj = make_param(rngs, cfg, (cfg.q_lora_rank, n, cfg.qk_head_dim),
                                       ("q_lora", "heads", "head_dim"), stack)
        else:
            self.q_proj = make_param(rngs, cfg, (d, n, cfg.qk_head_dim), ("embed", "heads", "head_dim"), stack)
        # the down-projections' hidden-size axis is `embed_in` (sharding.rules: as `embed` when training, split
        # over `tensor` in the sampler's inference layout)
        self.kv_a_proj_with_mqa = make_param(rngs, cfg, (d, c + r), ("embed_in", "kv_lora"), stack)
        self.kv_a_layernorm = RMSNorm(c, cfg, rngs, stack)
        self.kv_b_proj = make_param(rngs, cfg, (c, n, cfg.qk_nope_head_dim + cfg.v_head_dim),
                                    ("kv_lora", "heads", "head_dim"), stack)
        self.o_proj = make_param(rngs, cfg, (n, cfg.v_head_dim, d), ("heads", "head_dim", "embed"), stack)
        self.has_bias = cfg.attention_bias
        if self.has_bias:
            if self.q_lora:
                self.q_a_bias = make_param(rngs, cfg, (cfg.q_lora_rank,), ("q_lora",), stack, init="zeros")
            self.kv_a_bias = make_param(rngs, cfg, (c + r,), ("kv_lora",), stack, init="zeros")
            self.o_bias = make_param(rngs, cfg, (d,), ("embed",), stack, init="zeros")
        self.nope, self.rope, self.kv_rank = cfg.qk_nope_head_dim, r, c
        self.rotate = apply_rope_interleaved if cfg.rope_interleave else apply_rope
        self.scale = cfg.qk_head_dim ** -0.5
        self.dt = dtype_of(cfg.compute_dtype)

    def _w(self, name):
        return getattr(self, name)[...].astype(self.dt)

    def queries(self, x_BTD, cos, sin):
        if self.q_lora:
            q_BTC = jnp.einsum("BTD,DC->BTC", x_BTD, self._w("q_a_proj"))
            if self.has_bias:
                q_BTC = q_BTC + self._w("q_a_bias")
            q_BTNH = jnp.einsum("BTC,CNH->BTNH", self.q_a_layernorm(q_BTC), self._w("q_b_proj"))
        else:
            q_BTNH = jnp.einsum("BTD,DNH->BTNH", x_BTD, self._w("q_proj"))
        q_BTNH = constrain(q_BTNH, ("batch", "length", "act_heads", None))
        q_nope, q_rope = q_BTNH[..., : self.nope], q_BTNH[..., self.nope:]
        return q_nope, self.rotate(q_rope, cos, sin)

    def entries(self, x_BTD, cos, sin):
        """The cacheable normalised latent c_BSC and rotated shared rope key k_BSR."""
        ckv = jnp.einsum("BTD,DC->BTC", x_BTD, self._w("kv_a_proj_with_mqa"))
        if self.has_bias:
            ckv = ckv + self._w("kv_a_bias")
        c_BSC = self.kv_a_layernorm(ckv[..., : self.kv_rank])
        k_BSR = self.rotate(ckv[..., self.kv_rank:][:, :, None, :], cos, sin)[:, :, 0, :]
        return constrain(c_BSC, ("batch", "length", None)), constrain(k_BSR, ("batch", "length", None))

    def attend(self, queries, entries, mask_BTS):
        q_nope_BTNH, q_rope_BTNR = queries
        c_BSC, k_rope_BSR = entries
        w_CNH = self._w("kv_b_proj")
        w_k_CNH, w_v_CNH = w_CNH[..., : self.nope], w_CNH[..., self.nope:]
        absorb = q_nope_BTNH.shape[1] == 1  # decoding: never expand the cached latents to per-head K/V
        if absorb:
            # the scores and the values both read the latent: on TPU a barrier makes the layer's slice of the
            # cache one buffer, read by both (XLA stages it in on-chip memory), where a slice fused into each dot
            # reads the cache from HBM twice (+1.3 GB per DeepSeek-V3 step with its layers unrolled); elsewhere
            # the program is left as it was
            c_BSC, k_rope_BSR = jax.lax.platform_dependent(
                c_BSC, k_rope_BSR, tpu=lambda *e: jax.lax.optimization_barrier(e), default=lambda *e: e)
        with jax.named_scope("attention"):
            if absorb:  # DeepSeek-V2's weight absorption: score the query against the latent directly
                q_lat_BTNC = jnp.einsum("BTNH,CNH->BTNC", q_nope_BTNH, w_k_CNH)
                nope_scores = jnp.einsum("BTNC,BSC->BNTS", q_lat_BTNC, c_BSC)
            else:
                k_nope_BSNH = jnp.einsum("BSC,CNH->BSNH", c_BSC, w_k_CNH)
                nope_scores = jnp.einsum("BTNH,BSNH->BNTS", q_nope_BTNH, k_nope_BSNH)
            scores = (nope_scores + jnp.einsum("BTNR,BSR->BNTS", q_rope_BTNR, k_rope_BSR)) * self.scale
            probs = masked_softmax(scores, mask_BTS[:, None]).astype(self.dt)
            if absorb:
                out_BTNH = jnp.einsum("BTNC,CNH->BTNH", jnp.einsum("BNTS,BSC->BTNC", probs, c_BSC), w_v_CNH)
            else:
                out_BTNH = jnp.einsum("BNTS,BSNH->BTNH", probs, jnp.einsum("BSC,CNH->BSNH", c_BSC, w_v_CNH))
        return self._output(out_BTNH)

    def attend_cached(self, queries, cache, layer, mask_BS, read: KVRead):
        """One query per row (T = 1) against layer `layer` of the stacked latent cache, read block-wise, with
        the weights absorbed: scores and values stay in the latent space, expanded once per step."""
        q_nope_BTNH, q_rope_BTNR = queries
        w_CNH = self._w("kv_b_proj")
        w_k_CNH, w_v_CNH = w_CNH[..., : self.nope], w_CNH[..., self.nope:]
        f32 = jnp.float32
        q_lat_BNC = jnp.einsum("BNH,CNH->BNC", q_nope_BTNH[:, 0], w_k_CNH)
        q_rope_BNR = q_rope_BTNR[:, 0]

        def scores(entries):
            c_BSC, k_rope_BSR = entries
            nope = jnp.einsum("BNC,BSC->BNS", q_lat_BNC, c_BSC, preferred_element_type=f32)
            return (nope + jnp.einsum("BNR,BSR->BNS", q_rope_BNR, k_rope_BSR, preferred_element_type=f32)
                    ) * self.scale

        def values(probs, entries):
            return jnp.einsum("BNS,BSC->BNC", probs.astype(self.dt), entries[0], preferred_element_type=f32)

        with jax.named_scope("attention"):
            out_BNC = attend_blocks(scores, values, q_lat_BNC.shape, cache, layer, mask_BS, read)
            out_BTNH = jnp.einsum("BNC,CNH->BNH", out_BNC.astype(self.dt), w_v_CNH)[:, None]
        return self._output(out_BTNH)

    def _output(self, out_BTNH):
        y = jnp.einsum("BTNH,NHD->BTD", out_BTNH, self._w("o_proj"))
        return y + self._w("o_bias") if self.has_bias else y

    def __call__(self, x_BTD, cos, sin, mask_BTS):
        return self.attend(self.queries(x_BTD, cos, sin), self.entries(x_BTD, cos, sin), mask_BTS)
