"""Attention for both families, split into queries, cacheable key/value entries, and attend.

- `GQAttention` (qwen3_moe): grouped-query attention with per-head RMSNorm on q and k before rotary.
  Its cache entries are K and V per kv head, laid out for a decode step's two products: K transposed,
  [B, kv_heads, head_dim, S] (slots last), V [B, kv_heads, S, head_dim]. A step's scores are then one product
  per (row, kv head) over the slots as they lie, [G, head_dim] x [head_dim, S], and its values another,
  [G, S] x [S, head_dim]: on a CPU 2.5-5x faster than reading a [B, S, kv_heads, head_dim] cache, whose slots
  are not the minor axis of either product (benchmarks/HISTORY.md's decode figures).
- `MLAttention` (deepseek_v3): multi-head latent attention. Its cache entries are the normalised latent
  c_BSC and the rotated shared rope key k_BSR, not full per-head K/V; `attend` expands the latent.

Scores and softmax run in float32; masked scores use the most negative finite float so that a query row
with every key masked (padding) gives a uniform, finite distribution instead of NaN.

A decode step (one new token per row) reads one layer's whole cache by default: `attend_step` scores the
cache as it was before the step and the step's own new entry apart and takes one softmax over both
(model.kv_cache.step_softmax); the entry is written after the read, in place. Or it reads the cache block by
block up to the live length (`attend_blocks`, `sampling.kv_block`): an online softmax (the running max,
normaliser and weighted sum of the FlashAttention papers), so a step costs what the longest row holds, not
the cache's budget. Both equal the dense softmax up to float rounding; a row with every key masked gives
zeros from the blocks, a finite mix from the whole read. On a CPU every block is copied out of the cache
before its products read it (XLA's dots take whole buffers), so there the whole read is faster up to caches
of about a thousand slots (benchmarks/HISTORY.md, decode figures). GQA's block-wise read runs as a Pallas kernel when
compiled for TPU (model.pallas_attention, the same online softmax over the same blocks, reading the cache
where it lies). MLA's latent read always runs as the XLA loop here.

The cache's slots, the block-wise read and a step's softmax live in model.kv_cache.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.model.config import ModelConfig
from r1jax.model.kv_cache import KVRead, attend_blocks, step_softmax
from r1jax.model.layers import (RMSNorm, Stack, apply_rope, apply_rope_interleaved, dtype_of, make_param,
                                project)
from r1jax.model.rope import mla_softmax_scale
from r1jax.model.pallas_attention import decode_attention
from r1jax.sharding.context import constrain

# MLA's q_a_layernorm and kv_a_layernorm: transformers builds them with RMSNorm's default eps, whatever the
# config's rms_norm_eps (DeepseekV3RMSNorm(q_lora_rank)); the config's applies to the layers' and final norms
MLA_NORM_EPS = 1e-6


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


class GQAttention(nnx.Module):
    # the cache entries' logical axes: K [B, kv_heads, head_dim, S], V [B, kv_heads, S, head_dim]
    CACHE_AXES = (("batch", "act_kv_heads", None, "length"), ("batch", "act_kv_heads", "length", None))
    CACHE_SLOT_AXES = tuple(axes.index("length") for axes in CACHE_AXES)

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
        y = project(x_BTD, w[...].astype(self.dt), "BTD,DNH->BTNH")
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

    @staticmethod
    def cache_shapes(cfg: ModelConfig, batch: int, length: int) -> tuple:
        k, h = cfg.num_key_value_heads, cfg.head_dim
        return (batch, k, h, length), (batch, k, length, h)

    @staticmethod
    def to_cache(entries):
        """`entries()`'s K and V ([B, T, kv_heads, head_dim]) in the cache's layout."""
        k_BSKH, v_BSKH = entries
        return jnp.transpose(k_BSKH, (0, 2, 3, 1)), jnp.transpose(v_BSKH, (0, 2, 1, 3))

    def attend_cache(self, q_BTNH, layer_view, mask_BTS):
        """`attend` against one layer's whole cache (K [B, kv_heads, head_dim, S], V [B, kv_heads, S,
        head_dim]): the same products over the cache's own layout."""
        k_BKHS, v_BKSH = layer_view
        b, t, n, h = q_BTNH.shape
        kv_heads = k_BKHS.shape[1]
        q_BKGTH = jnp.swapaxes(q_BTNH.reshape(b, t, kv_heads, n // kv_heads, h), 1, 2).swapaxes(2, 3)
        with jax.named_scope("attention"):
            scores = jnp.einsum("BKGTH,BKHS->BKGTS", q_BKGTH, k_BKHS.astype(self.dt)) * self.scale
            probs = masked_softmax(scores, mask_BTS[:, None, None]).astype(self.dt)
            out_BKGTH = jnp.einsum("BKGTS,BKSH->BKGTH", probs, v_BKSH.astype(self.dt))
        return self._output(jnp.transpose(out_BKGTH, (0, 3, 1, 2, 4)).reshape(b, t, n, h))

    def attend_step(self, q_BTNH, layer_view, new_entries, keep_BS, keep_new_B):
        """One query per row (T = 1) against one layer's cache as it was before this step (`keep_BS`: its
        visible slots, the new one excluded) and the step's own K and V (`new_entries`, the cache's layout,
        visible where `keep_new_B`): `attend_cache` over the written cache, up to float rounding."""
        k_BKHS, v_BKSH = layer_view
        k_BKH1, v_BK1H = new_entries
        b, _, n, h = q_BTNH.shape
        kv_heads = k_BKHS.shape[1]
        q_BKGH = q_BTNH.reshape(b, kv_heads, n // kv_heads, h)
        with jax.named_scope("attention"):
            old = jnp.einsum("BKGH,BKHS->BKGS", q_BKGH, k_BKHS.astype(self.dt)) * self.scale
            new = jnp.einsum("BKGH,BKH->BKG", q_BKGH, k_BKH1[..., 0].astype(self.dt)) * self.scale
            p_old, p_new = step_softmax(old, new, keep_BS[:, None, None], keep_new_B[:, None, None])
            out_BKGH = (jnp.einsum("BKGS,BKSH->BKGH", p_old.astype(self.dt), v_BKSH.astype(self.dt))
                        + p_new[..., None].astype(self.dt) * v_BK1H.astype(self.dt))
        return self._output(out_BKGH.reshape(b, 1, n, h))

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
        kv_heads = cache[0].shape[2]
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
        """`attend_blocks` for one query per row: float32 [B, kv_heads, G, head_dim]. A block's scores are one
        product per (row, kv head) over K's slots as they lie, its values another over V's."""
        f32 = jnp.float32
        q_BKGH = q_BKGH.astype(f32)

        def scores(entries):
            return jnp.einsum("BKGH,BKHS->BKGS", q_BKGH, entries[0].astype(f32)) * self.scale

        def values(probs_BKGS, entries):
            return jnp.einsum("BKGS,BKSH->BKGH", probs_BKGS, entries[1].astype(f32))

        return attend_blocks(scores, values, q_BKGH.shape, (k_cache, v_cache), self.CACHE_SLOT_AXES, layer,
                             mask_BS, read)

    def _output(self, out_BTNH):
        y = project(out_BTNH, self.o_proj[...].astype(self.dt), "BTNH,NHD->BTD")
        return y + self.o_bias[...].astype(self.dt) if self.has_bias else y

    def __call__(self, x_BTD, cos, sin, mask_BTS):
        return self.attend(self.queries(x_BTD, cos, sin), self.entries(x_BTD, cos, sin), mask_BTS)


class MLAttention(nnx.Module):
    CACHE_AXES = (("batch", "length", None),) * 2  # latent [B, S, C], rope key [B, S, R]
    CACHE_SLOT_AXES = tuple(axes.index("length") for axes in CACHE_AXES)

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, stack: Stack = ()):
        d, n = cfg.hidden_size, cfg.num_attention_heads
        c, r = cfg.kv_lora_rank, cfg.qk_rope_head_dim
        self.q_lora = cfg.q_lora_rank is not None
        if self.q_lora:
            self.q_a_proj = make_param(rngs, cfg, (d, cfg.q_lora_rank), ("embed_in", "q_lora"), stack)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg, rngs, stack, eps=MLA_NORM_EPS)
            self.q_b_proj = make_param(rngs, cfg, (cfg.q_lora_rank, n, cfg.qk_head_dim),
                                       ("q_lora", "heads", "head_dim"), stack)
        else:
            self.q_proj = make_param(rngs, cfg, (d, n, cfg.qk_head_dim), ("embed", "heads", "head_dim"), stack)
        # the down-projections' hidden-size axis is `embed_in` (sharding.rules: as `embed` when training, split
        # over `tensor` in the sampler's inference layout)
        self.kv_a_proj_with_mqa = make_param(rngs, cfg, (d, c + r), ("embed_in", "kv_lora"), stack)
        self.kv_a_layernorm = RMSNorm(c, cfg, rngs, stack, eps=MLA_NORM_EPS)
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
        self.scale = cfg.qk_head_dim ** -0.5 * mla_softmax_scale(cfg)  # YaRN's mscale^2 (model.rope)
        self.dt = dtype_of(cfg.compute_dtype)

    def _w(self, name):
        return getattr(self, name)[...].astype(self.dt)

    def queries(self, x_BTD, cos, sin):
        if self.q_lora:
            q_BTC = project(x_BTD, self._w("q_a_proj"), "BTD,DC->BTC")
            if self.has_bias:
                q_BTC = q_BTC + self._w("q_a_bias")
            q_BTNH = project(self.q_a_layernorm(q_BTC), self._w("q_b_proj"), "BTC,CNH->BTNH")
        else:
            q_BTNH = project(x_BTD, self._w("q_proj"), "BTD,DNH->BTNH")
        q_BTNH = constrain(q_BTNH, ("batch", "length", "act_heads", None))
        q_nope, q_rope = q_BTNH[..., : self.nope], q_BTNH[..., self.nope:]
        return q_nope, self.rotate(q_rope, cos, sin)

    def entries(self, x_BTD, cos, sin):
        """The cacheable normalised latent c_BSC and rotated shared rope key k_BSR."""
        ckv = project(x_BTD, self._w("kv_a_proj_with_mqa"), "BTD,DC->BTC")
        if self.has_bias:
            ckv = ckv + self._w("kv_a_bias")
        c_BSC = self.kv_a_layernorm(ckv[..., : self.kv_rank])
        k_BSR = self.rotate(ckv[..., self.kv_rank:][:, :, None, :], cos, sin)[:, :, 0, :]
        return constrain(c_BSC, ("batch", "length", None)), constrain(k_BSR, ("batch", "length", None))

    @staticmethod
    def cache_shapes(cfg: ModelConfig, batch: int, length: int) -> tuple:
        return (batch, length, cfg.kv_lora_rank), (batch, length, cfg.qk_rope_head_dim)

    @staticmethod
    def to_cache(entries):
        return entries

    def attend_cache(self, queries, layer_view, mask_BTS):
        return self.attend(queries, layer_view, mask_BTS)

    def _absorbed(self, queries):
        """DeepSeek-V2's weight absorption for one query per row (T = 1): the query's no-rope half moved into the
        latent space through K's half of kv_b_proj, (q_lat_BNC, q_rope_BNR, w_v_CNH); scores then read the
        cached latent directly and values stay latent until one product with V's half."""
        q_nope_BTNH, q_rope_BTNR = queries
        w_CNH = self._w("kv_b_proj")
        q_lat_BNC = jnp.einsum("BNH,CNH->BNC", q_nope_BTNH[:, 0], w_CNH[..., : self.nope])
        return q_lat_BNC, q_rope_BTNR[:, 0], w_CNH[..., self.nope:]

    def _latent_scores(self, q_lat_BNC, q_rope_BNR, c_BSC, k_rope_BSR):
        """float32 scores [B, N, S] of absorbed queries against latents and rope keys."""
        f32 = jnp.float32
        nope = jnp.einsum("BNC,BSC->BNS", q_lat_BNC, c_BSC, preferred_element_type=f32)
        return (nope + jnp.einsum("BNR,BSR->BNS", q_rope_BNR, k_rope_BSR, preferred_element_type=f32)) * self.scale

    def attend_step(self, queries, layer_view, new_entries, keep_BS, keep_new_B):
        """`GQAttention.attend_step` for the latent cache, with the weights absorbed (`_absorbed`)."""
        c_BSC, k_rope_BSR = layer_view
        c_new_B1C, k_rope_new_B1R = new_entries
        with jax.named_scope("attention"):
            q_lat_BNC, q_rope_BNR, w_v_CNH = self._absorbed(queries)
            old = self._latent_scores(q_lat_BNC, q_rope_BNR, c_BSC, k_rope_BSR)
            new = self._latent_scores(q_lat_BNC, q_rope_BNR, c_new_B1C, k_rope_new_B1R)[..., 0]
            p_old, p_new = step_softmax(old, new, keep_BS[:, None], keep_new_B[:, None])
            lat_BNC = (jnp.einsum("BNS,BSC->BNC", p_old.astype(self.dt), c_BSC)
                       + p_new[..., None].astype(self.dt) * c_new_B1C)
            out_BTNH = jnp.einsum("BNC,CNH->BNH", lat_BNC, w_v_CNH)[:, None]
        return self._output(out_BTNH)

    def attend(self, queries, entries, mask_BTS):
        if queries[0].shape[1] == 1:  # decoding: never expand the cached latents to per-head K/V
            return self._attend_absorbed(queries, entries, mask_BTS[:, 0])
        q_nope_BTNH, q_rope_BTNR = queries
        c_BSC, k_rope_BSR = entries
        w_CNH = self._w("kv_b_proj")
        with jax.named_scope("attention"):
            k_nope_BSNH = jnp.einsum("BSC,CNH->BSNH", c_BSC, w_CNH[..., : self.nope])
            scores = (jnp.einsum("BTNH,BSNH->BNTS", q_nope_BTNH, k_nope_BSNH)
                      + jnp.einsum("BTNR,BSR->BNTS", q_rope_BTNR, k_rope_BSR)) * self.scale
            probs = masked_softmax(scores, mask_BTS[:, None]).astype(self.dt)
            v_BSNH = jnp.einsum("BSC,CNH->BSNH", c_BSC, w_CNH[..., self.nope:])
            out_BTNH = jnp.einsum("BNTS,BSNH->BTNH", probs, v_BSNH)
        return self._output(out_BTNH)

    def _attend_absorbed(self, queries, entries, mask_BS):
        """One query per row against whole latents, weights absorbed."""
        # the scores and the values both read the latent: on TPU a barrier makes the layer's slice of the cache
        # one buffer, read by both (XLA stages it in on-chip memory), where a slice fused into each dot reads the
        # cache from HBM twice (+1.3 GB per DeepSeek-V3 step with its layers unrolled); elsewhere the program is
        # left as it was
        c_BSC, k_rope_BSR = jax.lax.platform_dependent(
            *entries, tpu=lambda *e: jax.lax.optimization_barrier(e), default=lambda *e: e)
        with jax.named_scope("attention"):
            q_lat_BNC, q_rope_BNR, w_v_CNH = self._absorbed(queries)
            scores = self._latent_scores(q_lat_BNC, q_rope_BNR, c_BSC, k_rope_BSR)
            probs = masked_softmax(scores, mask_BS[:, None]).astype(self.dt)
            out_BTNH = jnp.einsum("BNC,CNH->BNH", jnp.einsum("BNS,BSC->BNC", probs, c_BSC), w_v_CNH)[:, None]
        return self._output(out_BTNH)

    def attend_cached(self, queries, cache, layer, mask_BS, read: KVRead):
        """One query per row (T = 1) against layer `layer` of the stacked latent cache, read block-wise, with
        the weights absorbed: scores and values stay in the latent space, expanded once per step."""
        q_lat_BNC, q_rope_BNR, w_v_CNH = self._absorbed(queries)

        def scores(entries):
            return self._latent_scores(q_lat_BNC, q_rope_BNR, *entries)

        def values(probs, entries):
            return jnp.einsum("BNS,BSC->BNC", probs.astype(self.dt), entries[0], preferred_element_type=jnp.float32)

        with jax.named_scope("attention"):
            out_BNC = attend_blocks(scores, values, q_lat_BNC.shape, cache, self.CACHE_SLOT_AXES, layer, mask_BS,
                                    read)
            out_BTNH = jnp.einsum("BNC,CNH->BNH", out_BNC.astype(self.dt), w_v_CNH)[:, None]
        return self._output(out_BTNH)

    def _output(self, out_BTNH):
        y = project(out_BTNH, self._w("o_proj"), "BTNH,NHD->BTD")
        return y + self._w("o_bias") if self.has_bias else y

    def __call__(self, x_BTD, cos, sin, mask_BTS):
        return self.attend(self.queries(x_BTD, cos, sin), self.entries(x_BTD, cos, sin), mask_BTS)


def attention_class(cfg: ModelConfig):
    """The family's attention: `MLAttention` for deepseek_v3, `GQAttention` for qwen3_moe."""
    return MLAttention if cfg.is_deepseek else GQAttention
