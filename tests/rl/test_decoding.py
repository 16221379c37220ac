"""The token draw's pieces against JAX's own: equal outputs, not close ones (the default run's numbers
must not move)."""

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.rl.decoding import categorical, first_argmax


def _rows_with_ties_nans_and_infs() -> np.ndarray:
    rng = np.random.RandomState(0)
    rows = rng.randint(-3, 4, (12, 37)).astype(np.float32)  # small integers: many tied maxima
    rows[1] = -np.inf
    rows[2] = 5.0
    rows[3, [4, 20]] = np.nan
    rows[4, 0], rows[4, 9] = np.inf, np.nan  # a NaN after the maximum still wins, as in jnp.argmax
    rows[5, [3, 7]] = np.inf
    rows[6, :] = -0.0
    rows[6, 5] = 0.0
    return rows


def test_first_argmax_equals_jnp_argmax_on_ties_nans_and_infinities():
    rows = jnp.asarray(_rows_with_ties_nans_and_infs())
    got = first_argmax(rows)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, jnp.argmax(rows, axis=-1))
    np.testing.assert_array_equal(np.asarray(got)[[1, 3, 4]], [0, 4, 9])


def test_categorical_draws_what_jax_random_categorical_draws():
    logits = jax.random.normal(jax.random.key(1), (64, 300)) * 3
    for seed in range(5):
        key = jax.random.fold_in(jax.random.key(7), seed)
        np.testing.assert_array_equal(jax.jit(categorical)(key, logits),
                                      jax.jit(lambda k, x: jax.random.categorical(k, x, axis=-1))(key, logits))
