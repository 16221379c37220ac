"""The mixture-of-experts feed-forward layer: router, routed experts, optional shared experts.

Returns its auxiliaries explicitly (`MoEAux`) instead of hiding them in module state.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.model.config import ModelConfig
from r1jax.model.dispatch import expert_ffn, resolve_impl
from r1jax.model.layers import MLP, RoutingBias, Stack, make_param
from r1jax.model.routing import expert_counts, load_balance_loss, route, router_z_loss
from r1jax.sharding.context import constrain


class MoEAux(NamedTuple):
    counts_E: jax.Array  # float32 token copies per expert (padding excluded), global over the mesh
    load_balance_loss: jax.Array  # float32 scalar: this layer's Switch balance loss
    z_loss: jax.Array  # float32 scalar
    experts_BTK: jax.Array  # int32 chosen experts, for routing replay


def router_config(cfg: ModelConfig) -> ModelConfig:
    """`cfg` as the router's parameter is made: DeepSeek-V3's router is float32 whatever param_dtype, as
    transformers keeps it (`_keep_in_fp32_modules_strict`: a bfloat16 hub checkpoint stores it float32);
    Qwen3-MoE's is a plain nn.Linear in the model's dtype. Routing computes in float32 either way."""
    return dataclasses.replace(cfg, param_dtype="float32") if cfg.is_deepseek else cfg


class MoE(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, stack: Stack = ()):
        d, e, f = cfg.hidden_size, cfg.n_routed_experts, cfg.moe_intermediate_size
        # float32 for DeepSeek-V3 (router_config); axes as sharding.rules' embed_in
        self.router = make_param(rngs, router_config(cfg), (d, e), ("embed_in", None), stack)
        if cfg.is_deepseek:
            self.e_score_correction_bias = RoutingBias(jnp.zeros(tuple(stack) + (e,), jnp.float32),
                                                       axes=("layers",) * len(stack) + (None,))
        self.gate_proj = make_param(rngs, cfg, (e, d, f), ("experts", "embed", "expert_mlp"), stack)
        self.up_proj = make_param(rngs, cfg, (e, d, f), ("experts", "embed", "expert_mlp"), stack)
        self.down_proj = make_param(rngs, cfg, (e, f, d), ("experts", "expert_mlp", "embed"), stack)
        if cfg.is_deepseek and cfg.n_shared_experts:
            self.shared_experts = MLP(f * cfg.n_shared_experts, cfg, rngs, stack)
        self.cfg = cfg

    def __call__(self, x_BTD: jax.Array, valid_BT: jax.Array,
                 replay_BTK: jax.Array | None = None) -> tuple[jax.Array, MoEAux]:
        cfg = self.cfg
        b, t, d = x_BTD.shape
        x_TD = x_BTD.reshape(b * t, d)
        valid_T = valid_BT.reshape(-1)
        bias = self.e_score_correction_bias[...] if cfg.is_deepseek else None
        replay = None if replay_BTK is None else replay_BTK.reshape(b * t, -1)
        with jax.named_scope("routing"):
            routing = route(x_TD, self.router[...], bias, cfg, replay)
        decode = t == 1  # one token per row: a decode step (model.config's moe_decode_* fields)
        impl = resolve_impl(cfg.moe_decode_impl or cfg.moe_impl if decode else cfg.moe_impl, decode=decode)
        # positions holding no token (padding, rows past their end, empty decode slots) send their copies to
        # expert E, no device's, with weight 0 (as model.dispatch._pad_tokens' rows): no group, block, chunk or
        # exchange counts them, so they cost no expert compute and crowd no device's experts (a batch's pads
        # all routed alike, or replayed to one expert set, made that expert's device the step's straggler);
        # their routed output is exactly 0 (dispatch._zero_unrouted)
        real_T1 = valid_T[:, None]
        with jax.named_scope("dispatch"):
            y_TD = expert_ffn(x_TD, jnp.where(real_T1, routing.experts_TK, cfg.n_routed_experts),
                              jnp.where(real_T1, routing.weights_TK, 0), self.gate_proj[...],
                              self.up_proj[...], self.down_proj[...], impl=impl,
                              block_size=cfg.moe_block_size, used_blocks_only=cfg.moe_decode_used_blocks and decode,
                              chunked=decode)
        y_BTD = constrain(y_TD.reshape(b, t, d), ("batch", "length", "act_embed"))
        if cfg.is_deepseek and cfg.n_shared_experts:
            y_BTD = y_BTD + self.shared_experts(x_BTD)
        counts_E = expert_counts(routing.experts_TK, valid_T, cfg.n_routed_experts)
        aux = MoEAux(counts_E, load_balance_loss(routing.probs_TE, counts_E, valid_T),
                     router_z_loss(routing.logits_TE, valid_T), routing.experts_TK.reshape(b, t, -1))
        return y_BTD, aux
