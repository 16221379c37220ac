"""The model-independent half of GRPO: advantages, the clipped-surrogate loss, KL, aggregation, optimizer.

Dimensions: P prompts, G completions per prompt (group size), B = P * G rows in prompt-major order
(b = p * G + g), T completion positions, V vocab. Log-probs are float32. `mask_BT` marks the completion
tokens trained on; prompt and padding positions may hold garbage in any input and are masked with
jnp.where before any exp, so they reach neither values nor gradients.

A train step, per rollout batch:
  adv_PG, m = compute_advantages(rewards_PG, cfg.advantage_estimator, cfg.adv_eps, cfg.adv_std)
  norms = global_normalisers(mask_BT_full, max_completion_length)      # once, on the GLOBAL batch
  per micro-batch (whole rows):
    logp_BT, ent_BT = token_logp_and_entropy(logits_BTV, targets_BT, mask_BT, cfg.temperature)
    loss, stats = grpo_loss(logp_BT, adv_B, mask_BT, token_weights_BT(mask_BT, cfg.loss_aggregation, norms),
                            cfg, old_logp_BT=..., ref_logp_BT=..., sampler_logp_BT=..., entropy_BT=ent_BT)
  sum the losses (and grads), combine_stats the stats, finalize_stats once.
"""

from r1jax.rl.grpo.advantages import ADVANTAGE_ESTIMATORS, compute_advantages, nonzero_std_mask_P
from r1jax.rl.grpo.aggregation import AGGREGATIONS, Normalisers, global_normalisers, token_weights_BT
from r1jax.rl.grpo.config import GRPOConfig, OptimizerConfig
from r1jax.rl.grpo.kl import KL_ESTIMATORS
from r1jax.rl.grpo.logprobs import token_logp_and_entropy
from r1jax.rl.grpo.losses import clipped_surrogate_BT, grpo_loss, kl_penalty_BT
from r1jax.rl.grpo.optimizer import SkipState, grad_norms, lr_schedule, make_optimizer, skip_nonfinite
from r1jax.rl.grpo.ratios import RATIO_LEVELS, masked_log_ratio_BT, tis_weight_BT
from r1jax.rl.grpo.stats import combine_stats, finalize_stats

__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGGREGATIONS", "KL_ESTIMATORS", "RATIO_LEVELS",
    "GRPOConfig", "OptimizerConfig", "Normalisers", "SkipState",
    "compute_advantages", "nonzero_std_mask_P",
    "global_normalisers", "token_weights_BT",
    "token_logp_and_entropy", "masked_log_ratio_BT", "tis_weight_BT",
    "clipped_surrogate_BT", "kl_penalty_BT", "grpo_loss",
    "combine_stats", "finalize_stats",
    "make_optimizer", "skip_nonfinite", "grad_norms", "lr_schedule",
]
