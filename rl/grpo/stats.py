"""Loss metrics as additive pytrees, so micro-batches combine exactly.

A stats dict maps names to float32 scalars, combined by the name's suffix:
  `*_sum`  summed over micro-batches, then divided by `token_count` (valid tokens) in `finalize_stats`;
  `*_max`  combined by maximum (every such quantity is >= 0, so 0 is the identity);
  others   summed and reported as they are (the loss terms, already normalised by the global batch).
"""

import jax
import jax.numpy as jnp

Stats = dict[str, jax.Array]


def masked_sum(x_BT: jax.Array, valid_BT: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(valid_BT, x_BT, 0.0), dtype=jnp.float32)


def masked_max(x_BT: jax.Array, valid_BT: jax.Array) -> jax.Array:
    """Max over valid tokens of a non-negative quantity; 0 when there are none."""
    return jnp.max(jnp.where(valid_BT, x_BT, 0.0), initial=0.0).astype(jnp.float32)


def combine_stats(a: Stats, b: Stats) -> Stats:
    """Stats of the union of two disjoint sets of rows."""
    return {k: jnp.maximum(a[k], b[k]) if k.endswith("_max") else a[k] + b[k] for k in a}


def finalize_stats(stats: Stats) -> Stats:
    """Turns `X_sum` into the token mean `X`; keeps `X_max`, `token_count` and the additive entries."""
    count = jnp.maximum(stats["token_count"], 1.0)
    return {(k[: -len("_sum")] if k.endswith("_sum") else k): (v / count if k.endswith("_sum") else v)
            for k, v in stats.items()}
