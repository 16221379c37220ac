"""MoE layer step at 8 vs 64 experts: same top-k, same active parameters per token.

One MoE layer (router, dropless dispatch, routed experts, shared experts) of the config's width runs
forward and backward (gradients for its parameters and its input) on T tokens, jitted, on one device.
Active parameters per token of the layer: router D * E + 3 * D * F * (top-k + shared experts). The router
grows with E, so the 64-expert layer's expert width F is the one that brings its active parameters closest
to the 8-expert layer's (F itself when the router is negligible). Goal: 64 experts cost <= 1.3x the time of
8, i.e. dispatch cost does not grow with the number of experts (`ragged_dot` on CPU fails it: 7x slower at
64 experts than at 8 for the same FLOPs, see model.dispatch).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.model.config import ModelConfig
from r1jax.model.moe import MoE
from r1jax.rl.bench.timing import best_seconds_in_turns

EXPERTS = (8, 64)


def moe_active_params(cfg: ModelConfig) -> int:
    """Parameters one token uses in a MoE layer: the router, its top-k routed experts, the shared ones."""
    shared = cfg.n_shared_experts if cfg.is_deepseek else 0
    return cfg.hidden_size * cfg.n_routed_experts + 3 * cfg.hidden_size * cfg.moe_intermediate_size * (
        cfg.num_experts_per_tok + shared)


def with_experts(cfg: ModelConfig, experts: int, active: int | None = None) -> ModelConfig:
    """`cfg` with `experts` routed experts; with `active`, the expert width that matches it best."""
    groups = min(cfg.n_group, experts // 2)  # DeepSeek's grouped routing needs >= 2 experts a group
    cfg = dataclasses.replace(cfg, n_routed_experts=experts, n_group=groups,
                              topk_group=min(cfg.topk_group, groups))
    if active is None:
        return cfg
    per_width = moe_active_params(dataclasses.replace(cfg, moe_intermediate_size=1)) - cfg.hidden_size * experts
    width = max(1, round((active - cfg.hidden_size * experts) / per_width))
    return dataclasses.replace(cfg, moe_intermediate_size=width)


def moe_step_call(cfg: ModelConfig, tokens: int, seed: int = 0):
    """A no-argument function: the MoE layer's jitted forward and backward over `tokens` random tokens."""
    graphdef, state = nnx.split(MoE(cfg, nnx.Rngs(seed), stack=()))
    x_BTD = jax.random.normal(jax.random.key(seed + 1), (1, tokens, cfg.hidden_size), jnp.float32)
    valid_BT = jnp.ones((1, tokens), bool)

    def loss(state, x_BTD):
        y_BTD, aux = nnx.merge(graphdef, state)(x_BTD, valid_BT)
        return jnp.mean(y_BTD.astype(jnp.float32) ** 2) + aux.load_balance_loss

    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda: step(state, x_BTD)


def moe_figures(model: ModelConfig, tokens: int, repeats: int = 3) -> dict:
    few, many = EXPERTS
    base = with_experts(model, few)
    wide = with_experts(model, many, active=moe_active_params(base))
    seconds = dict(zip((few, many), best_seconds_in_turns(moe_step_call(base, tokens), moe_step_call(wide, tokens),
                                                          repeats=repeats)))
    return {"moe_tokens": tokens, "moe_top_k": model.num_experts_per_tok,
            "moe_expert_width": {str(few): base.moe_intermediate_size, str(many): wide.moe_intermediate_size},
            "moe_active_params": {str(few): moe_active_params(base), str(many): moe_active_params(wide)},
            "moe_step_ms": {str(e): 1e3 * s for e, s in seconds.items()},
            f"moe_step_ratio_{many}_vs_{few}": seconds[many] / seconds[few]}
