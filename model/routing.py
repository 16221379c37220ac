"""Routers and their auxiliaries, in float32, with Hugging Face's semantics.

- deepseek_v3: sigmoid scores; `e_score_correction_bias` shifts scores for *selection only*; group-limited
  routing keeps the `topk_group` groups with the best top-2 sums; weights are the unbiased scores of the
  chosen experts, optionally normalised, times `routed_scaling_factor`.
- qwen3_moe: softmax over experts, top-k, optionally renormalised.

Routing replay: given `replay_TK` (experts chosen earlier, e.g. by the sampler), selection is skipped and
the weights are recomputed from the current scores at those experts, so gradients still flow.

Aux outputs are sums over the tokens this function sees; under a mesh the arrays are global, so XLA's
reductions are global too (never one shard's view).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from r1jax.model.config import ModelConfig
from r1jax.sharding.context import active_rules, constrain


class Routing(NamedTuple):
    experts_TK: jax.Array  # int32 expert index per token copy
    weights_TK: jax.Array  # float32 combine weight per token copy
    probs_TE: jax.Array  # float32 router probabilities summing to 1 per token, for the balance loss
    logits_TE: jax.Array  # float32 router logits, for the z-loss


def route(x_TD: jax.Array, router_DE: jax.Array, bias_E: jax.Array | None, cfg: ModelConfig,
          replay_TK: jax.Array | None = None) -> Routing:
    # cast to fp32: routing decisions must not depend on the compute dtype
    x_TD = _split_like_router(x_TD.astype(jnp.float32))
    logits_TE = jnp.einsum("TD,DE->TE", x_TD, router_DE.astype(jnp.float32))
    if cfg.is_deepseek:
        probs_TE = jax.nn.sigmoid(logits_TE)
        experts_TK = replay_TK if replay_TK is not None else _select_grouped(probs_TE + bias_E, cfg)
        weights_TK = jnp.take_along_axis(probs_TE, experts_TK, axis=-1)
        if cfg.norm_topk_prob:
            weights_TK = weights_TK / (jnp.sum(weights_TK, axis=-1, keepdims=True) + 1e-20)
        weights_TK = weights_TK * cfg.routed_scaling_factor
        # the balance loss uses scores normalised over experts (DeepSeek-V3 eq. 18's s'_{i,t})
        probs_TE = probs_TE / jnp.sum(probs_TE, axis=-1, keepdims=True)
    else:
        probs_TE = jax.nn.softmax(logits_TE, axis=-1)
        if replay_TK is None:
            weights_TK, experts_TK = top_k(probs_TE, cfg.num_experts_per_tok)
        else:
            experts_TK = replay_TK
            weights_TK = jnp.take_along_axis(probs_TE, experts_TK, axis=-1)
        if cfg.norm_topk_prob:
            weights_TK = weights_TK / jnp.sum(weights_TK, axis=-1, keepdims=True)
    return Routing(experts_TK.astype(jnp.int32), weights_TK, probs_TE, logits_TE)


def _split_like_router(x_TD: jax.Array) -> jax.Array:
    """`x_TD` hinted to be split over the hidden size as the router's weight is (`embed_in`), where the rows'
    mesh axes leave those axes free (the inference layout: `embed_in` on `tensor`): each device multiplies its
    share of the hidden size and the small partial logits are summed, as sharding.rules intends. Left to XLA's
    propagation, DeepSeek's tiny inference-layout rollout with stop ids gathered the whole router weight in the
    decode loop at every token. The input is pinned first as the residual stream the other readers take (rows
    split, hidden whole): the split alone spread back to the MoE dispatch and shared experts, which then gathered
    their input. In the training layouts the weight's hidden axis is `fsdp`, which also splits the rows: there
    the update gathers it, as every weight."""
    rules = active_rules()
    if rules is None or set(rules.mesh_axes("batch")) & set(rules.mesh_axes("embed_in")):
        return x_TD
    x_TD = constrain(x_TD, ("batch", "act_embed"))
    return constrain(x_TD, ("batch", "embed_in"))


def _select_grouped(choice_TE: jax.Array, cfg: ModelConfig) -> jax.Array:
    """DeepSeek-V3's group-limited top-k on bias-shifted scores."""
    t, e = choice_TE.shape
    per_group = e // cfg.n_group
    group_scores_TG = jnp.sum(top_k(choice_TE.reshape(t, cfg.n_group, per_group), 2)[0], axis=-1)
    _, groups_TK = top_k(group_scores_TG, cfg.topk_group)
    group_mask_TG = jnp.sum(jax.nn.one_hot(groups_TK, cfg.n_group, dtype=jnp.int32), axis=1) > 0
    expert_mask_TE = jnp.repeat(group_mask_TG, per_group, axis=-1)
    masked_TE = jnp.where(expert_mask_TE, choice_TE, -jnp.inf)
    return top_k(masked_TE, cfg.num_experts_per_tok)[1]


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`jax.lax.top_k` over the last axis: the k largest values and their indices, ties to the lower index.
    Under a mesh, as a stable sort: XLA's partitioner sorts each device's own rows, where for `lax.top_k` it
    gathers every row to every device (at each MoE layer of every decode step, when the rows are split)."""
    if active_rules() is None:
        return jax.lax.top_k(x, k)
    order = jnp.argsort(-x, axis=-1, stable=True)[..., :k].astype(jnp.int32)
    return jnp.take_along_axis(x, order, axis=-1), order


def expert_counts(experts_TK: jax.Array, valid_T: jax.Array, num_experts: int) -> jax.Array:
    """Token copies routed to each expert, padding excluded: float32 [E]."""
    onehot_TKE = jax.nn.one_hot(experts_TK, num_experts, dtype=jnp.float32)
    return jnp.einsum("TKE,T->E", onehot_TKE, valid_T.astype(jnp.float32))


def load_balance_loss(probs_TE: jax.Array, counts_E: jax.Array, valid_T: jax.Array) -> jax.Array:
    """One layer's Switch-Transformer balance loss: E * sum_e f_e * P_e.

    f_e = copies routed to e per real token (sums to top-k); P_e = mean router probability of e. The update
    averages it over layers (a per-layer loss, as Switch, Megatron and DeepSeek-V3 apply it); HF's
    `load_balancing_loss_func` pools every layer's tokens before the product, which equals this for one layer
    only.
    """
    valid = valid_T.astype(jnp.float32)
    tokens = jnp.maximum(jnp.sum(valid), 1.0)
    frac_E = counts_E / tokens
    mean_prob_E = jnp.einsum("TE,T->E", probs_TE, valid) / tokens
    return probs_TE.shape[-1] * jnp.sum(frac_E * mean_prob_E)


def router_z_loss(logits_TE: jax.Array, valid_T: jax.Array) -> jax.Array:
    """ST-MoE's z-loss: mean over real tokens of logsumexp(logits)^2."""
    valid = valid_T.astype(jnp.float32)
    lse_T = jax.nn.logsumexp(logits_TE, axis=-1)
    return jnp.sum(lse_T**2 * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def update_routing_bias(bias_LE: jax.Array, counts_LE: jax.Array, rate: float) -> jax.Array:
    """DeepSeek-V3's aux-loss-free balancing: raise the bias of under-loaded experts, lower over-loaded.

    bias_e += rate * sign(mean_load - load_e), per layer, from the global expert load of the last step.
    """
    mean_L1 = jnp.mean(counts_LE, axis=-1, keepdims=True)
    return bias_LE + rate * jnp.sign(mean_L1 - counts_LE).astype(bias_LE.dtype)
