"""Per-token log-probs and entropy of the sampled tokens at the sampling temperature.

Conventions: `logits_BTV[b, t]` is the distribution of `targets_BT[b, t]` (the caller shifts: logits of
positions 0..T-2 against tokens 1..T-1). `mask_BT` marks completion tokens; on prompt and padding the
logits are replaced by 0 before the softmax and the targets by token 0, so garbage there (inf, NaN,
out-of-range ids) reaches neither values nor gradients, and both outputs are exactly 0 there. Dividing by
the sampling temperature makes the trainer score the distribution the sampler drew from. On valid
tokens the logits must be finite (mask padded vocabulary entries with a large finite negative such as
-1e9, not -inf: the entropy's p * x is 0 * -inf = NaN otherwise).
"""

import jax
import jax.numpy as jnp


def token_logp_and_entropy(
    logits_BTV: jax.Array,
    targets_BT: jax.Array,
    mask_BT: jax.Array,
    temperature: float = 1.0,
    *,
    with_entropy: bool = True,
) -> tuple[jax.Array, jax.Array | None]:
    """Returns (logp_BT float32, entropy_BT float32 or None), both 0 on masked tokens."""
    valid_BT = jnp.asarray(mask_BT).astype(bool)
    x_BTV = logits_BTV.astype(jnp.float32) / temperature  # cast to fp32 for the log-softmax
    x_BTV = jnp.where(valid_BT[..., None], x_BTV, 0.0)
    logz_BT = jax.nn.logsumexp(x_BTV, axis=-1)
    targets_BT = jnp.where(valid_BT, targets_BT, 0)
    target_logit_BT = jnp.take_along_axis(x_BTV, targets_BT[..., None], axis=-1)[..., 0]
    logp_BT = jnp.where(valid_BT, target_logit_BT - logz_BT, 0.0)
    if not with_entropy:
        return logp_BT, None
    # H = logZ - sum_v p_v x_v, with p = softmax(x).
    entropy_BT = logz_BT - jnp.sum(jax.nn.softmax(x_BTV, axis=-1) * x_BTV, axis=-1)
    return logp_BT, jnp.where(valid_BT, entropy_BT, 0.0)
