"""The GRPO objective on per-token log-probs: clipped surrogate, KL to the reference, TIS, aggregation.

Conventions: B rows (completions), T completion positions. `mask_BT` marks the completion tokens to train
on (prompt and padding are 0 and may hold garbage in every other input). `adv_B` is one advantage per row
(`adv_PG.reshape(-1)`). `weight_BT` comes from `rl.grpo.aggregation.token_weights_BT` with GLOBAL-batch
normalisers, so `loss = sum_{b,t} weight_BT * loss_BT` summed over micro-batches is the full-batch loss.
Per-token loss: loss_BT = keep_BT * tis_BT * pg_BT + beta * kl_BT, pg_BT the clipped surrogate (a loss:
minimised), keep_BT the token and sequence masks against the sampler (1 when off), tis_BT the TIS weight.
"""

import jax
import jax.numpy as jnp

from r1jax.rl.grpo.config import GRPOConfig
from r1jax.rl.grpo.kl import KL_ESTIMATORS
from r1jax.rl.grpo.ratios import RATIO_LEVELS, sequence_mask_B, tis_weight_BT, token_mask_BT
from r1jax.rl.grpo.stats import Stats, masked_max, masked_sum


def clipped_surrogate_BT(
    ratio_BT: jax.Array, adv_BT: jax.Array, clip_low: float, clip_high: float, dual_clip: float | None = None
) -> jax.Array:
    # PPO clip (Schulman et al. 2017) with decoupled eps_low / eps_high (DAPO clip-higher, Yu et al. 2025).
    unclipped_BT = -adv_BT * ratio_BT
    clipped_BT = -adv_BT * jnp.clip(ratio_BT, 1.0 - clip_low, 1.0 + clip_high)
    pg_BT = jnp.maximum(unclipped_BT, clipped_BT)
    if dual_clip is None:
        return pg_BT
    # Dual-clip PPO (Ye et al. 2020, "Mastering Complex Control in MOBA Games", eq. 5): for A < 0 the
    # loss is at most c * |A|, however large the ratio.
    return jnp.where(adv_BT < 0, jnp.minimum(pg_BT, -adv_BT * dual_clip), pg_BT)


def kl_penalty_BT(logp_BT: jax.Array, ref_logp_BT: jax.Array, valid_BT: jax.Array, estimator: str, max_logratio: float):
    """Per-token KL(pi_theta || pi_ref) estimate, 0 on invalid tokens; the reference is stop-gradient. The log
    ratio log(pi_ref / pi_theta) is clamped above only, where k3's exp would overflow: a token the policy
    makes far likelier than the reference (by more than e^max_logratio) keeps the penalty's gradient, which a
    clamp on both sides set to 0 exactly where the penalty should pull hardest."""
    ref_logp_BT = jax.lax.stop_gradient(jnp.asarray(ref_logp_BT, jnp.float32))  # float32 log-probs
    log_r_BT = jnp.minimum(jnp.where(valid_BT, ref_logp_BT - logp_BT, 0.0), max_logratio)
    return KL_ESTIMATORS[estimator](log_r_BT)


def grpo_loss(
    logp_BT: jax.Array,
    adv_B: jax.Array,
    mask_BT: jax.Array,
    weight_BT: jax.Array,
    cfg: GRPOConfig,
    *,
    old_logp_BT: jax.Array | None = None,
    ref_logp_BT: jax.Array | None = None,
    sampler_logp_BT: jax.Array | None = None,
    entropy_BT: jax.Array | None = None,
) -> tuple[jax.Array, Stats]:
    """Returns (loss, stats): loss = sum weight_BT * loss_BT (a scalar to minimise), stats additive.

    old_logp_BT None means mu = 1 (old = stop_gradient(logp)). ref_logp_BT is read only when
    cfg.kl_coef > 0. sampler_logp_BT enables the sampler/trainer mismatch metrics and, with cfg.tis_cap and
    the token / sequence mask bands, truncated importance sampling and masking. entropy_BT (from
    `token_logp_and_entropy`) only feeds a metric.
    """
    valid_BT = jnp.asarray(mask_BT).astype(bool)
    logp_BT = jnp.asarray(logp_BT, jnp.float32)  # float32 log-probs: ratios and KL need the mantissa
    _check_inputs(cfg, logp_BT.shape, adv_B=adv_B, mask_BT=mask_BT, weight_BT=weight_BT, old_logp_BT=old_logp_BT,
                  ref_logp_BT=ref_logp_BT, sampler_logp_BT=sampler_logp_BT, entropy_BT=entropy_BT)
    if old_logp_BT is None:
        old_logp_BT = logp_BT
    old_logp_BT = jax.lax.stop_gradient(jnp.asarray(old_logp_BT, jnp.float32))  # float32 log-probs
    adv_BT = jnp.broadcast_to(jnp.asarray(adv_B, jnp.float32)[:, None], logp_BT.shape)

    ratio_BT = RATIO_LEVELS[cfg.ratio_level](logp_BT, old_logp_BT, valid_BT, cfg.max_logratio)
    pg_BT = clipped_surrogate_BT(ratio_BT, adv_BT, cfg.clip_low, cfg.clip_high, cfg.dual_clip)
    stats = _ratio_stats(ratio_BT, adv_BT, valid_BT, cfg)
    if sampler_logp_BT is not None:
        sampler_logp_BT = jnp.asarray(sampler_logp_BT, jnp.float32)  # float32 log-probs
        keep_BT, mask_stats = _sampler_masks(old_logp_BT, sampler_logp_BT, valid_BT, cfg)
        tis_BT = None
        if cfg.tis_cap is not None:
            tis_BT = tis_weight_BT(old_logp_BT, sampler_logp_BT, valid_BT, cfg.tis_cap, cfg.max_logratio)
            # 0 where a mask drops the token: a weight that is not finite there (a NaN sampler log-prob, which
            # the masks drop) times the surrogate made its gradient NaN through the select that zeroes it
            pg_BT = pg_BT * jnp.where(keep_BT, tis_BT, 0.0)
        stats |= _sampler_stats(old_logp_BT, sampler_logp_BT, valid_BT, tis_BT, cfg.tis_cap)
        pg_BT = jnp.where(keep_BT, pg_BT, 0.0)
        stats |= mask_stats
    weight_BT = jnp.where(valid_BT, jnp.asarray(weight_BT, jnp.float32), 0.0)
    stats["pg_loss"] = jnp.sum(weight_BT * jnp.where(valid_BT, pg_BT, 0.0))
    loss = stats["pg_loss"]
    if cfg.kl_coef > 0:
        k_BT = kl_penalty_BT(logp_BT, ref_logp_BT, valid_BT, cfg.kl_estimator, cfg.max_logratio)
        stats["kl_loss"] = cfg.kl_coef * jnp.sum(weight_BT * jnp.where(valid_BT, k_BT, 0.0))
        stats["kl_sum"] = masked_sum(k_BT, valid_BT)
        loss = loss + stats["kl_loss"]
    if entropy_BT is not None:
        stats["entropy_sum"] = masked_sum(jnp.asarray(entropy_BT, jnp.float32), valid_BT)
    stats["loss"] = loss
    return loss, jax.lax.stop_gradient(stats)


def _check_inputs(cfg: GRPOConfig, shape_BT: tuple[int, ...], **arrays) -> None:
    """Rejects missing inputs and silently-broadcasting shapes (a micro-batch's logp with the full adv)."""
    if cfg.kl_coef > 0 and arrays["ref_logp_BT"] is None:
        raise ValueError("grpo_loss: ref_logp_BT is required when kl_coef > 0")
    if cfg.corrects_sampler and arrays["sampler_logp_BT"] is None:
        raise ValueError("grpo_loss: sampler_logp_BT is required when tis_cap or a sampler mask is set")
    for name, x in arrays.items():
        expected = shape_BT[:1] if name == "adv_B" else shape_BT
        if x is not None and tuple(jnp.shape(x)) != tuple(expected):
            raise ValueError(f"grpo_loss: {name} has shape {jnp.shape(x)}, expected {expected}")


def _ratio_stats(ratio_BT: jax.Array, adv_BT: jax.Array, valid_BT: jax.Array, cfg: GRPOConfig) -> Stats:
    """Token counts where each clip binds (changes the loss), ratio mean and max."""
    clip_low_BT = (adv_BT < 0) & (ratio_BT < 1.0 - cfg.clip_low)
    clip_high_BT = (adv_BT > 0) & (ratio_BT > 1.0 + cfg.clip_high)
    stats = {
        "token_count": masked_sum(jnp.ones_like(ratio_BT), valid_BT),
        "ratio_sum": masked_sum(ratio_BT, valid_BT),
        "ratio_max": masked_max(ratio_BT, valid_BT),
        "clip_low_frac_sum": masked_sum(clip_low_BT.astype(jnp.float32), valid_BT),
        "clip_high_frac_sum": masked_sum(clip_high_BT.astype(jnp.float32), valid_BT),
    }
    if cfg.dual_clip is not None:
        dual_BT = (adv_BT < 0) & (ratio_BT > cfg.dual_clip)
        stats["dual_clip_frac_sum"] = masked_sum(dual_BT.astype(jnp.float32), valid_BT)
    return stats


def _sampler_stats(
    old_logp_BT: jax.Array, sampler_logp_BT: jax.Array, valid_BT: jax.Array, tis_BT: jax.Array | None, cap
) -> Stats:
    """Sampler/trainer mismatch |old_logp - sampler_logp|; with TIS, the weights' mean and cap hits."""
    absdiff_BT = jnp.abs(jnp.where(valid_BT, old_logp_BT - sampler_logp_BT, 0.0))
    stats = {
        "sampler_logp_absdiff_sum": masked_sum(absdiff_BT, valid_BT),
        "sampler_logp_absdiff_max": masked_max(absdiff_BT, valid_BT),
    }
    if tis_BT is not None:
        stats["tis_weight_sum"] = masked_sum(tis_BT, valid_BT)
        stats["tis_capped_frac_sum"] = masked_sum((tis_BT >= cap).astype(jnp.float32), valid_BT)
    return stats


def _sampler_masks(old_logp_BT: jax.Array, sampler_logp_BT: jax.Array, valid_BT: jax.Array,
                   cfg: GRPOConfig) -> tuple[jax.Array, Stats]:
    """The tokens the IcePop token mask and the geometric sequence mask keep (all, without masks), and the
    share of valid tokens each drops (`token_mask_frac`, `seq_mask_frac`: a row's tokens count for the row)."""
    stats, keep_BT = {}, jnp.ones(valid_BT.shape, bool)
    if cfg.token_mask_low is not None or cfg.token_mask_high is not None:
        token_BT = token_mask_BT(old_logp_BT, sampler_logp_BT, valid_BT, cfg.token_mask_low, cfg.token_mask_high)
        keep_BT &= token_BT
        stats["token_mask_frac_sum"] = masked_sum((~token_BT).astype(jnp.float32), valid_BT)
    if cfg.seq_mask_low is not None or cfg.seq_mask_high is not None:
        keep_B = sequence_mask_B(old_logp_BT, sampler_logp_BT, valid_BT, cfg.seq_mask_low, cfg.seq_mask_high)
        keep_BT &= keep_B[:, None]
        dropped_BT = jnp.broadcast_to(~keep_B[:, None], valid_BT.shape).astype(jnp.float32)
        stats["seq_mask_frac_sum"] = masked_sum(dropped_BT, valid_BT)
    return keep_BT, stats
