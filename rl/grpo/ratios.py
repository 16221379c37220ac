"""Importance ratios, registered by level, and truncated importance sampling against the sampler.

Conventions: `logp_BT` are the trainer policy's per-token log-probs of the completion tokens (float32,
differentiable), `old_logp_BT` those of the policy that produced the rollouts as the trainer computes them
(stop-gradient; with mu = 1 iteration they are `stop_gradient(logp_BT)`), `sampler_logp_BT` those the
inference engine reported. `valid_BT` (bool) marks completion tokens; prompt and padding may hold any
garbage (inf, NaN): every difference is masked with jnp.where and clamped BEFORE exp, so neither values nor
gradients see it.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

RatioFn = Callable[[jax.Array, jax.Array, jax.Array, float], jax.Array]


def masked_log_ratio_BT(a_BT: jax.Array, b_BT: jax.Array, valid_BT: jax.Array, max_logratio: float) -> jax.Array:
    """clip(a - b, -max_logratio, max_logratio) on valid tokens, exactly 0 elsewhere."""
    return jnp.clip(jnp.where(valid_BT, a_BT - b_BT, 0.0), -max_logratio, max_logratio)


def token_ratio_BT(logp_BT: jax.Array, old_logp_BT: jax.Array, valid_BT: jax.Array, max_logratio: float) -> jax.Array:
    # PPO / GRPO per-token ratio (Schulman et al. 2017; DeepSeekMath eq. 3): pi_theta(o_t) / pi_old(o_t).
    return jnp.exp(masked_log_ratio_BT(logp_BT, old_logp_BT, valid_BT, max_logratio))


def sequence_ratio_BT(
    logp_BT: jax.Array, old_logp_BT: jax.Array, valid_BT: jax.Array, max_logratio: float
) -> jax.Array:
    # GSPO (Zheng et al. 2025, eqs. 7 and 13, GSPO-token): s_i = exp(mean_t (logp - old_logp)) per sequence,
    # used per token as s_{i,t} = sg[s_i] * pi(o_t) / sg[pi(o_t)]: value s_i, gradient sg[s_i] * grad logp.
    diff_BT = jnp.where(valid_BT, logp_BT - old_logp_BT, 0.0)
    len_B = jnp.maximum(valid_BT.sum(axis=1), 1)
    s_B = jnp.exp(jnp.clip(diff_BT.sum(axis=1) / len_B, -max_logratio, max_logratio))
    unit_BT = jnp.exp(jnp.where(valid_BT, logp_BT - jax.lax.stop_gradient(logp_BT), 0.0))
    return jax.lax.stop_gradient(s_B)[:, None] * unit_BT


RATIO_LEVELS: dict[str, RatioFn] = {"token": token_ratio_BT, "sequence": sequence_ratio_BT}


def tis_weight_BT(
    old_logp_BT: jax.Array, sampler_logp_BT: jax.Array, valid_BT: jax.Array, cap: float, max_logratio: float
) -> jax.Array:
    # Truncated IS (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
    # Training"): min(pi_old / pi_sampler, C), a stop-gradient per-token weight; 1 on invalid tokens.
    log_w_BT = masked_log_ratio_BT(old_logp_BT, sampler_logp_BT, valid_BT, max_logratio)
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(log_w_BT), cap))
