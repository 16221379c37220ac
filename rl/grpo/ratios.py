"""Importance ratios, registered by level, and the corrections against the sampler: truncated importance
sampling (a weight) and token / sequence masking (a keep mask).

Conventions: `logp_BT` are the trainer policy's per-token log-probs of the completion tokens (float32,
differentiable), `old_logp_BT` those of the policy that produced the rollouts as the trainer computes them
(stop-gradient; with mu = 1 iteration they are `stop_gradient(logp_BT)`), `sampler_logp_BT` those the
inference engine reported. `valid_BT` (bool) marks completion tokens; prompt and padding may hold any
garbage (inf, NaN): every difference is masked with jnp.where and clamped BEFORE exp, so neither values nor
gradients see it.
"""

import math
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
    mean_B = diff_BT.sum(axis=1) / len_B
    s_B = jnp.exp(jnp.clip(mean_B, -max_logratio, max_logratio))
    # A row whose mean log-ratio is clamped has a constant ratio, so its gradient is 0, as the clamp's own
    # derivative says; the unit factor stays exactly 1 in value either way.
    inside_B = jax.lax.stop_gradient(jnp.abs(mean_B) <= max_logratio)
    unit_BT = jnp.exp(jnp.where(valid_BT & inside_B[:, None], logp_BT - jax.lax.stop_gradient(logp_BT), 0.0))
    return jax.lax.stop_gradient(s_B)[:, None] * unit_BT


RATIO_LEVELS: dict[str, RatioFn] = {"token": token_ratio_BT, "sequence": sequence_ratio_BT}


def tis_weight_BT(
    old_logp_BT: jax.Array, sampler_logp_BT: jax.Array, valid_BT: jax.Array, cap: float, max_logratio: float
) -> jax.Array:
    # Truncated IS (Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
    # Training"): min(pi_old / pi_sampler, C), a stop-gradient per-token weight; 1 on invalid tokens.
    log_w_BT = masked_log_ratio_BT(old_logp_BT, sampler_logp_BT, valid_BT, max_logratio)
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(log_w_BT), cap))


def outside_band(log_ratio: jax.Array, low: float | None, high: float | None) -> jax.Array:
    """True where exp(log_ratio) lies outside [low, high] (None: no bound on that side) or is NaN; the
    comparison is in log space so no exp overflows."""
    inside = ~jnp.isnan(log_ratio)
    if low is not None:
        inside &= log_ratio >= math.log(low)
    if high is not None:
        inside &= log_ratio <= math.log(high)
    return ~inside


def token_mask_BT(old_logp_BT: jax.Array, sampler_logp_BT: jax.Array, valid_BT: jax.Array, low: float | None,
                  high: float | None) -> jax.Array:
    # IcePop (Ant Group's Ling team, "Small Leak Can Sink a Great Ship: Boost RL Training on MoE with IcePop!",
    # 2025, used for Ring-1T): a token whose trainer/sampler ratio pi_old / pi_sampler lies outside
    # [alpha, beta] is dropped from the policy gradient. True = kept; invalid tokens are kept (they weigh 0).
    diff_BT = jnp.where(valid_BT, old_logp_BT - sampler_logp_BT, 0.0)
    return jax.lax.stop_gradient(~outside_band(diff_BT, low, high))


def sequence_mask_B(old_logp_BT: jax.Array, sampler_logp_BT: jax.Array, valid_BT: jax.Array, low: float | None,
                    high: float | None) -> jax.Array:
    # Sequence-level masked importance sampling (Liu, Li et al. 2025, "When Speed Kills Stability:
    # Demystifying RL Collapse from the Training-Inference Mismatch") in its length-normalised, geometric-mean
    # form: a row whose exp(mean_t (old_logp - sampler_logp)) lies outside [low, high] is dropped. True = kept.
    diff_BT = jnp.where(valid_BT, old_logp_BT - sampler_logp_BT, 0.0)
    mean_B = diff_BT.sum(axis=1) / jnp.maximum(valid_BT.sum(axis=1), 1)
    return jax.lax.stop_gradient(~outside_band(mean_B, low, high))
