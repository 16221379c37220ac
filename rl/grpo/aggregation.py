"""Loss aggregation as per-token weights, registered by name; exact under micro-batching.

Every aggregation is `loss = sum_{b,t} weight_BT[b, t] * loss_BT[b, t]`. The weights of a row depend only
on that row's mask and on normalisers of the GLOBAL batch (`Normalisers`), never on the rest of the
micro-batch, so with the batch split along B (whole rows per micro-batch) the sum of micro-batch losses is
the full-batch loss, and so is the sum of their gradients. Two equivalent ways to use it:
  * compute `weight_BT = token_weights_BT(mask_BT_full, name, global_normalisers(mask_BT_full, L))` once and
    slice it along B with the rest of the batch, or
  * compute `norms = global_normalisers(mask_BT_full, L)` once and call `token_weights_BT(mask_mb_BT,
    name, norms)` per micro-batch.
Weights are float32 and exactly 0 on prompt and padding tokens.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Normalisers(NamedTuple):
    """Global-batch normalisers (a pytree: safe to pass through jit)."""

    num_sequences: jax.Array  # rows (completions) in the global batch, B_global
    num_tokens: jax.Array  # valid completion tokens in the global batch
    max_completion_length: jax.Array  # Dr.GRPO's constant: the sampler's max new tokens, not the padded T


def global_normalisers(mask_BT: jax.Array, max_completion_length: int) -> Normalisers:
    """Normalisers from the mask of the whole (global) batch."""
    mask_BT = jnp.asarray(mask_BT)
    return Normalisers(
        num_sequences=jnp.asarray(mask_BT.shape[0], jnp.float32),
        num_tokens=mask_BT.astype(jnp.float32).sum(),  # float32 counts: exact up to 2^24 tokens
        max_completion_length=jnp.asarray(max_completion_length, jnp.float32),
    )


AggregationFn = Callable[[jax.Array, Normalisers], jax.Array]


def seq_mean_token_mean_weights(mask_BT: jax.Array, norms: Normalisers) -> jax.Array:
    # GRPO (DeepSeekMath eq. 3, DeepSeek-R1): (1/B) sum_i (1/|o_i|) sum_t; an empty row gets weight 0.
    len_B = mask_BT.sum(axis=1)
    return mask_BT / (jnp.maximum(len_B, 1.0)[:, None] * norms.num_sequences)


def token_mean_weights(mask_BT: jax.Array, norms: Normalisers) -> jax.Array:
    # DAPO (Yu et al. 2025, eq. 10, token-level policy gradient loss): (1 / sum_i |o_i|) sum_i sum_t.
    return mask_BT / jnp.maximum(norms.num_tokens, 1.0)


def constant_weights(mask_BT: jax.Array, norms: Normalisers) -> jax.Array:
    # Dr.GRPO (Liu et al. 2025, §3.1): sum_i sum_t / (B * max_completion_length), a length-free constant.
    return mask_BT / (norms.num_sequences * norms.max_completion_length)


AGGREGATIONS: dict[str, AggregationFn] = {
    "seq_mean_token_mean": seq_mean_token_mean_weights,
    "token_mean": token_mean_weights,
    "constant": constant_weights,
}


def token_weights_BT(mask_BT: jax.Array, aggregation: str, norms: Normalisers) -> jax.Array:
    """Per-token loss weights for the rows in `mask_BT`, normalised by the global `norms`."""
    mask_BT = jnp.asarray(mask_BT).astype(jnp.float32)  # float32 weights whatever the mask dtype
    return AGGREGATIONS[aggregation](mask_BT, norms)
