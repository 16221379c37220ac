"""Group-relative advantage estimators, registered by name.

Conventions: rewards arrive as `rewards_PG` (P prompts x G completions per prompt, float). A flat batch is
prompt-major: row b = p * G + g, so `adv_PG.reshape(-1)` is `adv_B` in the rollout batch's order. Every
estimator subtracts the group mean (the group baseline); they differ only in the scale. A group whose
rewards are all equal (zero variance) gets exactly zero advantage, whatever the estimator and eps: the mean
of identical floats need not equal them bit for bit, and a tiny residual divided by eps would be noise.
Standard deviations are population ones (ddof = 0, so G = 1 is finite) unless `ddof = 1` asks for the sample
std (TRL's and verl's torch.std); `STD_KINDS` maps the config's names to ddof.

The estimators take NumPy or JAX arrays alike (array methods only); `compute_advantages`, what a GRPO step calls,
runs on the host in NumPy: the rewards arrive there from the reward pool, and on a device each of its dozen
operations was a program of its own, traced, compiled and dispatched (rl.train.stage_grpo places the result).
"""

import warnings
from collections.abc import Callable

import jax
import numpy as np

AdvantageFn = Callable[[jax.Array, float, int], jax.Array]
STD_KINDS = {"population": 0, "sample": 1}


def _centred_PG(rewards_PG: jax.Array) -> jax.Array:
    return rewards_PG - rewards_PG.mean(axis=1, keepdims=True)


def grpo_advantages(rewards_PG: jax.Array, eps: float, ddof: int = 0) -> jax.Array:
    # GRPO (DeepSeekMath, Shao et al. 2024, eq. 4; used by DeepSeek-R1): (r - mean_G) / (std_G + eps).
    return _centred_PG(rewards_PG) / (rewards_PG.std(axis=1, keepdims=True, ddof=ddof) + eps)


def dr_grpo_advantages(rewards_PG: jax.Array, eps: float, ddof: int = 0) -> jax.Array:
    # Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", §3.1): r - mean_G, no std division.
    del eps, ddof
    return _centred_PG(rewards_PG)


def batch_std_advantages(rewards_PG: jax.Array, eps: float, ddof: int = 0) -> jax.Array:
    # Group mean, batch std (Liu et al. 2025, "Tricks or Traps? A Deep Dive into RL for LLM Reasoning",
    # Lite PPO; TRL's scale_rewards="batch"): (r - mean_G) / (std over all P*G rewards + eps).
    return _centred_PG(rewards_PG) / (rewards_PG.std(ddof=ddof) + eps)


ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {
    "grpo": grpo_advantages,
    "dr_grpo": dr_grpo_advantages,
    "batch_std": batch_std_advantages,
}


def nonzero_std_mask_P(rewards_PG: jax.Array) -> jax.Array:
    """True for prompts whose group rewards are not all equal (DAPO dynamic sampling keeps these)."""
    return rewards_PG.max(axis=1) > rewards_PG.min(axis=1)


def compute_advantages(
    rewards_PG, estimator: str = "grpo", eps: float = 1e-6, std: str = "population"
) -> tuple[np.ndarray, dict[str, float]]:
    """Returns (adv_PG float32 NumPy, metrics) with metrics["frac_reward_zero_std"] the share of zero-variance
    groups. `std` is a key of STD_KINDS; the logged reward_std stays the population std whatever it is."""
    rewards_PG = np.asarray(rewards_PG, np.float32)  # float32 statistics whatever the rewards arrive as
    keep_P = nonzero_std_mask_P(rewards_PG)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # eps 0 or G 1 at ddof 1: only in groups masked below
        adv_PG = ADVANTAGE_ESTIMATORS[estimator](rewards_PG, eps, STD_KINDS[std])
    adv_PG = np.where(keep_P[:, None], adv_PG, np.float32(0.0)).astype(np.float32)
    metrics = {
        "frac_reward_zero_std": 1.0 - float(keep_P.mean()),
        "reward_mean": float(rewards_PG.mean()),
        "reward_std": float(rewards_PG.std()),
    }
    return adv_PG, metrics
