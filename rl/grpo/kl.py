"""Per-token estimators of KL(pi_theta || pi_ref) from samples of pi_theta, registered by name.

Each takes `log_r_BT = ref_logp - logp` (the log of r = pi_ref / pi_theta), already masked to 0 on prompt
and padding tokens and clamped, so every estimator is 0 there and no exp sees garbage. Source for all
three: J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

KLFn = Callable[[jax.Array], jax.Array]


def kl_k1(log_r_BT: jax.Array) -> jax.Array:
    # k1 = -log r (Schulman 2020): unbiased, high variance, can be negative.
    return -log_r_BT


def kl_k2(log_r_BT: jax.Array) -> jax.Array:
    # k2 = (log r)^2 / 2 (Schulman 2020): biased, low variance, non-negative.
    return 0.5 * jnp.square(log_r_BT)


def kl_k3(log_r_BT: jax.Array) -> jax.Array:
    # k3 = (r - 1) - log r (Schulman 2020): unbiased, non-negative; DeepSeekMath eq. 4 / DeepSeek-R1 use it.
    return jnp.expm1(log_r_BT) - log_r_BT


KL_ESTIMATORS: dict[str, KLFn] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
