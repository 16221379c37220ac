"""The decoder stack and the policy model.

Layers are grouped into segments of consecutive same-kind layers (dense or MoE; see
`ModelConfig.layer_segments`). Each segment stores its layers' parameters stacked on a leading "layers"
axis and runs them with one `lax.scan`, so compile time does not grow with depth. The sampler's inference
copy holds each layer's parameters apart instead (`Policy(..., stacked=False)`, `unstack_layers`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.model.attention import attention_class, causal_mask
from r1jax.model.kv_cache import KVRead, reads_blockwise, write_slots
from r1jax.model.config import ModelConfig
from r1jax.model.layers import MLP, RMSNorm, Stack, dtype_of, make_param, project, rope_cos_sin
from r1jax.model.rope import cos_sin_scale, inverse_frequencies
from r1jax.model.moe import MoE, MoEAux
from r1jax.sharding.context import constrain


class PolicyOutput(NamedTuple):
    logits_BTV: jax.Array  # float32
    aux: MoEAux  # every field stacked over the MoE layers (leading axis L of size #MoE layers)


class Block(nnx.Module):
    """Pre-norm decoder layer: x + attn(norm(x)), then x + ffn(norm(x)); ffn is an MLP or a MoE."""

    def __init__(self, kind: str, cfg: ModelConfig, rngs: nnx.Rngs, stack: Stack = ()):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg, rngs, stack)
        self.self_attn = attention_class(cfg)(cfg, rngs, stack)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg, rngs, stack)
        self.is_moe = kind == "moe"
        self.mlp = MoE(cfg, rngs, stack) if self.is_moe else MLP(cfg.intermediate_size, cfg, rngs, stack)

    def __call__(self, x_BTD, cos, sin, mask_BTS, valid_BT, replay_BTK=None, cache=None, layer=None,
                 cache_index=None, kv_read: KVRead | None = None):
        """One layer; returns (x, aux, cache). `cache` is the segment's stacked entries ([L, B, ...] each, the
        slots on the attention's `CACHE_SLOT_AXES`; L = 1 for a layer with a cache of its own):
        this layer (`layer`) writes the new positions' entries at slot `cache_index` (a scalar, or one slot per
        row when decoding one token), then attends over its slice, or reads it block-wise with `kv_read`.
        Writing into the stacked arrays in place avoids copying the cache every decode step."""
        attn_BTD, cache = self.attention(self.input_layernorm(x_BTD), cos, sin, mask_BTS, cache, layer,
                                         cache_index, kv_read)
        x_BTD = constrain(x_BTD + attn_BTD, ("batch", "length", "act_embed"))
        h_BTD = self.post_attention_layernorm(x_BTD)
        aux = None
        if self.is_moe:
            h_BTD, aux = self.mlp(h_BTD, valid_BT, replay_BTK)
        else:
            h_BTD = self.mlp(h_BTD)
        return constrain(x_BTD + h_BTD, ("batch", "length", "act_embed")), aux, cache

    def attention(self, h_BTD, cos, sin, mask_BTS, cache, layer, cache_index, kv_read=None):
        if cache is None:
            return self.self_attn(h_BTD, cos, sin, mask_BTS), None
        attn = self.self_attn
        queries = attn.queries(h_BTD, cos, sin)
        entries = attn.to_cache(attn.entries(h_BTD, cos, sin))

        def written(cache):  # a scalar index: T slots per row; else one slot per row (one token per row)
            return tuple(write_slots(c, layer, cache_index, e, axis, axes)
                         for c, e, axis, axes in zip(cache, entries, attn.CACHE_SLOT_AXES, attn.CACHE_AXES))

        def view(cache):
            return tuple(jax.lax.dynamic_index_in_dim(c, layer, 0, keepdims=False) for c in cache)

        if kv_read is not None:
            cache = written(cache)
            return attn.attend_cached(queries, cache, layer, mask_BTS[:, 0], kv_read), cache
        if h_BTD.shape[1] == 1:
            # a decode step reads the cache as it was and its own new entry apart, then writes the entry: a read
            # of the written cache makes XLA's CPU fusion repeat the write inside the read's operand, copying
            # the whole cache for it (4 copies of each entry per step)
            mask_BS = mask_BTS[:, 0]
            new_BS = jnp.arange(mask_BS.shape[1])[None, :] == jnp.reshape(cache_index, (-1, 1))
            out_BTD = attn.attend_step(queries, view(cache), entries, mask_BS & ~new_BS,
                                       jnp.any(mask_BS & new_BS, axis=1))
            entries = _after(entries, out_BTD)
            return out_BTD, written(cache)
        cache = written(cache)
        return attn.attend_cache(queries, view(cache), mask_BTS), cache


def _after(values, anchor):
    """`values` plus an exact zero computed from `anchor`: whatever reads `values` now runs after `anchor`.

    A decode step reads the cache, then writes its new entries into it; unordered, XLA's copy insertion
    cannot prove the read comes first and copies the whole cache before the in-place write (each entry,
    every step). An optimization barrier does not keep that order on the CPU (it is expanded first).
    The zero is one per row, from that row's anchor: under a mesh that splits the rows, a zero taken from row 0
    alone would be sent to every device (an all-reduce per step)."""
    zero_B = jnp.nan_to_num(anchor[:, 0, 0].astype(jnp.float32) * 0.0, nan=0.0, posinf=0.0, neginf=0.0)
    return tuple(v + zero_B.reshape((-1,) + (1,) * (v.ndim - 1)).astype(v.dtype) for v in values)


class Segment(nnx.Module):
    """`count` consecutive layers of one kind. `stacked` (training): their parameters stacked on a leading
    "layers" axis and scanned. Not stacked (the sampler's inference copy, rl.sampler_layout): each layer's
    parameters are arrays of their own and the layers run one after another, so a layer's expert weights
    reach XLA's TPU ragged-dot kernel as a whole buffer (a kernel takes only whole buffers: a layer's slice
    of a stack is copied first, scanned or unrolled). Both run the same per-layer body on the same values."""

    def __init__(self, kind: str, count: int, cfg: ModelConfig, rngs: nnx.Rngs, stacked: bool = True):
        self.kind, self.count, self.remat, self.scan_layers = kind, count, cfg.remat, cfg.scan_layers
        self.stacked = stacked
        if stacked:
            self.block = Block(kind, cfg, rngs, stack=(count,))
        else:
            self.layers = nnx.List([Block(kind, cfg, rngs) for _ in range(count)])

    def __call__(self, x_BTD, cos, sin, mask_BTS, valid_BT, replay_LBTK=None, cache_L=None, cache_index=None,
                 kv_read: KVRead | None = None):
        """Returns (x, aux stacked over layers, updated cache); the cache rides in the scan's carry."""
        graphdef, state = nnx.split(self.block if self.stacked else self.layers[0])

        def one_layer(carry, inputs):
            x, cache = carry
            layer_state, replay_BTK, layer = inputs
            block = nnx.merge(graphdef, layer_state)
            x, aux, cache = block(x, cos, sin, mask_BTS, valid_BT, replay_BTK, cache, layer, cache_index,
                                  kv_read)
            return (x, cache), aux

        if self.remat:
            one_layer = jax.checkpoint(one_layer)
        if not self.stacked:
            return self._unrolled(one_layer, x_BTD, [nnx.state(block) for block in self.layers], replay_LBTK,
                                  cache_L)
        if self.unrolled if cache_L is not None else not self.scan_layers:
            layer_states = [jax.tree.map(lambda x: x[layer], state) for layer in range(self.count)]
            return self._unrolled(one_layer, x_BTD, layer_states, replay_LBTK, cache_L)
        layers = jnp.arange(self.count)
        (x_BTD, cache_L), aux = jax.lax.scan(one_layer, (x_BTD, cache_L), (state, replay_LBTK, layers))
        return x_BTD, aux, cache_L

    @property
    def unrolled(self) -> bool:
        """Whether the layers run one after another rather than in a `lax.scan`: held apart (`stacked=False`),
        `scan_layers: false`, or a single layer. Such a segment's cache is one entry tuple per layer, each
        [1, B, S, ...] (`Policy.init_cache`): a layer reads and writes a buffer of its own, where a layer's
        slice of a stacked cache is copied before a dot reads it (XLA's CPU dots)."""
        return not self.stacked or not self.scan_layers or self.count == 1

    def _unrolled(self, one_layer, x_BTD, layer_states, replay_LBTK, cache_L):
        """The scan's body called once per layer on that layer's parameters (`layer_states`) and its own cache
        (`cache_L[layer]`, at layer index 0); the per-layer auxiliaries are stacked as the scan stacks them."""
        auxes, new_cache = [], []
        for layer, layer_state in enumerate(layer_states):
            replay_BTK = None if replay_LBTK is None else replay_LBTK[layer]
            cache = None if cache_L is None else cache_L[layer]
            (x_BTD, cache), aux = one_layer((x_BTD, cache), (layer_state, replay_BTK, jnp.int32(0)))
            auxes.append(aux)
            new_cache.append(cache)
        return x_BTD, jax.tree.map(lambda *parts: jnp.stack(parts), *auxes), (None if cache_L is None else new_cache)


def unstack_layers(state: nnx.State) -> nnx.State:
    """`state` (a stacked Policy's, or a part of it: its params, its routing bias) as the state of the same
    Policy built with `stacked=False`: each segment's `block` variable [L, ...] becomes L variables
    `layers/<l>` [...], the leading "layers" axis dropped from their `axes`. Variables already per layer are
    kept as they are. Traced (jit, eval_shape): it slices values."""
    flat = []
    for path, var in nnx.to_flat_state(state):
        if len(path) > 2 and path[0] == "segments" and path[2] == "block":
            axes = var.get_metadata().get("axes")
            flat += [((*path[:2], "layers", layer, *path[3:]), var.replace(var[...][layer], axes=axes[1:]))
                     for layer in range(var.shape[0])]
        else:
            flat.append((path, var))
    return nnx.from_flat_state(flat)


class Policy(nnx.Module):
    """The decoder. `stacked=False`: every segment's layers hold arrays of their own (`Segment`); the
    sampler's inference copy (`unstack_layers` converts a stacked state)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, stacked: bool = True):
        self.cfg = cfg
        self.embed_tokens = make_param(rngs, cfg, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
        self.segments = nnx.List([Segment(kind, n, cfg, rngs, stacked) for kind, n in cfg.layer_segments()])
        self.norm = RMSNorm(cfg.hidden_size, cfg, rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = make_param(rngs, cfg, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"))

    def rope_dim(self) -> int:
        return self.cfg.qk_rope_head_dim if self.cfg.is_deepseek else self.cfg.head_dim

    def rope(self, positions_BT: jax.Array, within_rows: bool = False) -> tuple[jax.Array, jax.Array]:
        """The rotary cos and sin of `positions_BT` (`layers.rope_cos_sin`, frequencies from `model.rope`)."""
        return rope_cos_sin(positions_BT, inverse_frequencies(self.cfg, self.rope_dim()), cos_sin_scale(self.cfg),
                            within_rows=within_rows)

    def __call__(self, tokens_BT: jax.Array, positions_BT: jax.Array | None = None,
                 valid_BT: jax.Array | None = None, replay_LBTK: jax.Array | None = None,
                 segment_ids_BT: jax.Array | None = None) -> PolicyOutput:
        """Logits for every position. `valid_BT` marks real tokens (False: padding, never attended to);
        `positions_BT` defaults to 0..T-1 and must lie in [0, T) (a token's position counts the real tokens
        before it in its row or segment; outside, rotary gives NaN: `layers.rope_cos_sin`'s `within_rows`);
        `replay_LBTK` reuses the experts chosen per MoE layer; `segment_ids_BT` (packed rows) keeps attention
        within each segment (positions then restart per segment through `positions_BT`)."""
        return self.forward_embeddings(self.embed(tokens_BT), positions_BT, valid_BT, replay_LBTK, segment_ids_BT)

    def forward_embeddings(self, x_BTD: jax.Array, positions_BT: jax.Array | None = None,
                           valid_BT: jax.Array | None = None, replay_LBTK: jax.Array | None = None,
                           segment_ids_BT: jax.Array | None = None) -> PolicyOutput:
        """The forward pass from input embeddings (what `__call__` runs after the token lookup)."""
        b, t, _ = x_BTD.shape
        positions_BT = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions_BT is None else positions_BT
        valid_BT = jnp.ones((b, t), bool) if valid_BT is None else valid_BT.astype(bool)
        cos, sin = self.rope(positions_BT, within_rows=True)
        x_BTD, aux, _ = self.run_layers(x_BTD, cos, sin, causal_mask(valid_BT, t, segment_ids_BT), valid_BT,
                                         replay_LBTK)
        return PolicyOutput(self.logits(self.norm(x_BTD)), aux)

    def embed(self, tokens_BT: jax.Array) -> jax.Array:
        x_BTD = jnp.take(self.embed_tokens[...], tokens_BT, axis=0).astype(dtype_of(self.cfg.compute_dtype))
        return constrain(x_BTD, ("batch", "length", "act_embed"))

    def logits(self, x_BTD: jax.Array) -> jax.Array:
        # cast to fp32: log-probs and sampling need full-precision logits
        if self.cfg.tie_word_embeddings:
            w_DV = self.embed_tokens[...].astype(jnp.float32).T
        else:
            w_DV = self.lm_head[...].astype(jnp.float32)
        x_BTD = constrain(x_BTD, ("batch", "length", "act_embed"))
        logits = project(x_BTD.astype(jnp.float32), w_DV, "BTD,DV->BTV")
        return constrain(logits, ("batch", "length", "act_vocab"))

    def forward_cached(self, tokens_BT: jax.Array, positions_BT: jax.Array, valid_BT: jax.Array,
                       caches: list, cache_index: jax.Array, kv_valid_BS: jax.Array,
                       replay_LBTK: jax.Array | None = None, kv_block: int = 0) -> tuple[PolicyOutput, list]:
        """Forward for new tokens placed at cache slots [cache_index, cache_index + T).

        `kv_valid_BS` marks the cache slots holding real tokens (these new ones included); a query at slot s
        attends to the valid slots <= s. `cache_index` is a scalar, or [B] (one slot per row) when T = 1.
        `kv_block` > 0 (T = 1 only): attention reads the cache in blocks of that many slots up to the
        furthest row's slot (model.kv_cache.attend_blocks), unless the cache holds at most
        `DENSE_READ_BLOCKS` blocks (`reads_blockwise`); 0: the whole cache. Returns the output and the caches
        with these tokens' entries.
        """
        t, s = tokens_BT.shape[1], kv_valid_BS.shape[1]
        query_slot_BT = jnp.reshape(cache_index, (-1, 1)) + jnp.arange(t)[None, :]
        mask_BTS = kv_valid_BS[:, None, :] & (jnp.arange(s)[None, None, :] <= query_slot_BT[:, :, None])
        kv_read = KVRead(jnp.max(cache_index) + t, kv_block) if t == 1 and reads_blockwise(s, kv_block) else None
        cos, sin = self.rope(positions_BT)
        x_BTD, aux, caches = self.run_layers(self.embed(tokens_BT), cos, sin, mask_BTS, valid_BT.astype(bool),
                                             replay_LBTK, caches, cache_index, kv_read)
        return PolicyOutput(self.logits(self.norm(x_BTD)), aux), caches

    def for_decoding(self) -> "Policy":
        """The policy a decode loop runs: itself, or, when its stacked layers run unrolled (`scan_layers:
        false`), a copy holding each layer's parameters apart (`unstack_layers`; the same values, so the same
        outputs). Called before the loop, it slices each layer's weights out of their stack once per rollout:
        XLA does not hoist those slices out of a while loop, so the stacked policy copies every layer's
        weights at every decoded token."""
        if self.cfg.scan_layers or not any(segment.stacked for segment in self.segments):
            return self
        per_layer = nnx.eval_shape(lambda: Policy(self.cfg, nnx.Rngs(0), stacked=False))
        return nnx.merge(nnx.graphdef(per_layer), unstack_layers(nnx.state(self)))

    @property
    def attention_class(self):
        return attention_class(self.cfg)

    def init_cache(self, batch: int, length: int, dtype=None) -> list:
        """Empty caches per segment: GQA (K [L, B, K, H, S], V [L, B, K, S, H]); MLA (latent [L, B, S, C], rope
        key [L, B, S, R]). A segment whose layers run unrolled (`Segment.unrolled`) holds a list of L such
        tuples with L = 1. `cache_slot_axes` gives each entry's slot axis in the same structure."""
        cfg = self.cfg
        dtype = dtype or dtype_of(cfg.compute_dtype)
        shapes = self.attention_class.cache_shapes(cfg, batch, length)

        def entries(layers):
            return tuple(jnp.zeros((layers, *shape), dtype) for shape in shapes)
        return [[entries(1) for _ in range(seg.count)] if seg.unrolled else entries(seg.count)
                for seg in self.segments]

    def cache_logical_axes(self) -> list:
        """Each cache entry's logical axes (of the stacked [L, B, ...] entry; None for L), in `init_cache`'s
        structure."""
        axes = tuple((None, *entry) for entry in self.attention_class.CACHE_AXES)
        return [[axes] * seg.count if seg.unrolled else axes for seg in self.segments]

    def cache_slot_axes(self) -> list:
        """Each cache entry's slot axis (of the stacked [L, B, ...] entry), in `init_cache`'s structure."""
        axes = tuple(axis + 1 for axis in self.attention_class.CACHE_SLOT_AXES)
        return [[axes] * seg.count if seg.unrolled else axes for seg in self.segments]

    def run_layers(self, x_BTD, cos, sin, mask_BTS, valid_BT, replay_LBTK=None, caches=None, cache_index=None,
                   kv_read: KVRead | None = None):
        auxes, new_caches, moe_seen = [], [], 0
        for i, segment in enumerate(self.segments):
            replay = None
            if segment.kind == "moe" and replay_LBTK is not None:
                replay = replay_LBTK[moe_seen: moe_seen + segment.count]
            cache = None if caches is None else caches[i]
            x_BTD, aux, cache = segment(x_BTD, cos, sin, mask_BTS, valid_BT, replay, cache, cache_index,
                                        kv_read)
            new_caches.append(cache)
            if segment.kind == "moe":
                auxes.append(aux)
                moe_seen += segment.count
        return x_BTD, self._stack_aux(auxes, x_BTD.shape[:2]), (None if caches is None else new_caches)

    def _stack_aux(self, auxes: list[MoEAux], bt: tuple[int, int]) -> MoEAux:
        if not auxes:
            cfg = self.cfg
            return MoEAux(jnp.zeros((0, cfg.n_routed_experts)), jnp.zeros((0,)), jnp.zeros((0,)),
                          jnp.zeros((0, *bt, cfg.num_experts_per_tok), jnp.int32))
        return MoEAux(*(jnp.concatenate(parts, axis=0) for parts in zip(*auxes)))
