"""The token draw's pieces against JAX's own: equal outputs, not close ones (the default run's numbers
must not move)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl.decoding import categorical, filter_logits, first_argmax, sample_token


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


def test_a_padded_vocabulary_id_is_never_drawn_and_log_probs_are_the_full_rows():
    """sample_token with vocab_size 3 of 5 ids, the padded ids likeliest: no draw reaches them (greedy, or
    filtered and not), and the log-prob is log softmax(logits / T) over the whole row, unfiltered (the trainer's
    `token_logp_and_entropy` scores the same row)."""
    logits = np.array([[1.0, 0.5, -1.0, 4.0, 3.0]], np.float32)
    draw = jax.jit(sample_token, static_argnames="vocab_size")  # one compilation for every case
    for temperature, top_k, top_p in ((0.0, 0, 1.0), (0.7, 0, 1.0), (0.7, 2, 0.9)):
        for seed in range(6):
            token, logp = draw(jnp.asarray(logits), jax.random.key(seed), jnp.float32(temperature),
                               jnp.int32(top_k), jnp.float32(top_p), vocab_size=3)
            x = logits[0].astype(np.float64) / (temperature or 1.0)
            logq = x - np.log(np.sum(np.exp(x)))
            assert int(token[0]) < 3, (temperature, top_k, seed)
            np.testing.assert_allclose(float(logp[0]), logq[int(token[0])], rtol=1e-5, atol=1e-6)
            if temperature == 0.0:
                assert int(token[0]) == 0  # the first maximum among the drawable ids


def test_an_unfiltered_draw_at_temperature_t_is_a_categorical_draw_from_logits_over_t():
    logits = jnp.asarray(np.random.default_rng(0).normal(0, 2, (64, 9)).astype(np.float32))
    key = jax.random.key(3)
    token, logp = sample_token(logits, key, jnp.float32(0.5), jnp.int32(0), jnp.float32(1.0))
    np.testing.assert_array_equal(np.asarray(token), np.asarray(jax.random.categorical(key, logits / 0.5, axis=-1)))
    x = np.asarray(logits, np.float64) / 0.5
    logq = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(np.asarray(logp), logq[np.arange(64), np.asarray(token)], rtol=1e-5, atol=1e-6)


def test_one_padded_id_past_the_tokenizer_is_never_drawn():
    """A model vocabulary one id past the tokenizer's (vocab_size 2 of 3), that id the likeliest by far."""
    logits = jnp.asarray([[1.0, 0.5, 9.0]])
    for temperature in (0.0, 0.7):
        for seed in range(4):
            token, _ = sample_token(logits, jax.random.key(seed), jnp.float32(temperature), jnp.int32(0),
                                    jnp.float32(1.0), vocab_size=2)
            assert int(token[0]) in (0, 1), (temperature, seed)


def test_a_top_k_at_or_past_the_vocabulary_keeps_every_id():
    logits = jnp.asarray([[0.3, -2.0, 1.5, 0.0, -7.0]])
    for top_k in (5, 6, 1000):
        np.testing.assert_array_equal(filter_logits(logits, jnp.int32(top_k), jnp.float32(1.0)), logits)
    kept = np.isfinite(np.asarray(filter_logits(logits, jnp.int32(4), jnp.float32(1.0))))
    np.testing.assert_array_equal(kept[0], [True, True, True, True, False])  # by hand: -7 is fifth


def test_a_config_that_filters_nothing_compiles_no_filter_and_draws_the_same_tokens():
    """top_k 0 and top_p 1 (every GRPO preset): the filter's branch was compiled though never taken, and its
    sort's layout copies of the [B, V] logits ran at every TPU decode step (qwen3_30b_a3b on v5p-16: 1.09 GB
    of 2.44 a step on a 2-layer proxy). Without it: the same draw and log-probs, bit for bit, and no sort."""
    from r1jax.rl.sampler import SamplingConfig

    assert not SamplingConfig().filters and SamplingConfig(top_p=0.95).filters and SamplingConfig(top_k=5).filters
    logits = jnp.asarray(np.random.RandomState(1).randn(6, 301).astype(np.float32) * 3)
    args = (jax.random.key(3), jnp.float32(0.7), jnp.int32(0), jnp.float32(1.0))

    def draw(filters):
        return jax.jit(lambda x, k, t, tk, tp: sample_token(x, k, t, tk, tp, 300, filters=filters))

    for got, want in zip(draw(False)(logits, *args), draw(True)(logits, *args)):
        np.testing.assert_array_equal(got, want)
    assert "stablehlo.sort" in draw(True).lower(logits, *args).as_text()
    assert "stablehlo.sort" not in draw(False).lower(logits, *args).as_text()


def test_an_unfiltered_draw_on_vocabulary_split_logits_moves_no_logits_and_draws_what_whole_rows_draw():
    """The sampler's layout leaves the LM head's logits split over `tensor`. Without filters the draw and the
    log-prob reduce each shard's slice (all-reduces of a few values a row), where taking each row whole first
    moved the logits in an all-to-all (qwen3_30b_a3b on v5p-16: 233 MB of HBM and 29 MB over the interconnect
    a decode step). The tokens are jax.random.categorical's on the whole rows (ids past `usable` never drawn); the
    log-probs NumPy's over the whole rows (summed across the shards in another order: to float rounding)."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from r1jax.sharding.context import use_mesh
    from r1jax.sharding.decode_stats import program_costs
    from r1jax.sharding.mesh import ShardingConfig, build_mesh
    from r1jax.sharding.rules import Rules

    rows, vocab, usable, temperature = 8, 512, 509, 0.7
    logits = np.random.RandomState(2).randn(rows, vocab).astype(np.float32) * 3
    mesh = build_mesh(ShardingConfig(data=1, fsdp=1, expert=2, tensor=4))
    split = jax.device_put(logits, NamedSharding(mesh, P("expert", "tensor")))
    draw = jax.jit(lambda x, k: sample_token(x, k, jnp.float32(temperature), jnp.int32(0), jnp.float32(1.0), usable,
                                             filters=False))
    scaled = np.where(np.arange(vocab) < usable, logits / np.float32(temperature), -np.inf)
    for seed in range(3):
        key = jax.random.key(seed)
        with use_mesh(mesh, Rules.preset("inference")):
            token, logp = draw(split, key)
        np.testing.assert_array_equal(token, jax.random.categorical(key, jnp.asarray(scaled), axis=-1))
        whole = logits.astype(np.float64) / np.float32(temperature)
        lse = np.log(np.exp(whole - whole.max(-1, keepdims=True)).sum(-1)) + whole.max(-1)
        np.testing.assert_allclose(logp, whole[np.arange(rows), np.asarray(token)] - lse, atol=1e-5)
    with use_mesh(mesh, Rules.preset("inference")):
        collectives = program_costs(draw.lower(split, key).compile().as_text())[0]
    # a few float32 values a row at most (maxima, sums, the drawn index and logit): no [rows, vocab] slice moves
    assert collectives["all-to-all"] == collectives["all-gather"] == 0, collectives
    assert sum(collectives.values()) <= rows * 8 * 4, collectives


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_an_unfiltered_draw_on_split_logits_breaks_a_tie_across_shards_at_the_first_index(temperature):
    """Equal maxima on different vocabulary shards, so large that the Gumbel noise is lost in them (a tie in the
    draw too): the first index, as NumPy's argmax, where the split draw joins each shard's maximum and first index.
    A larger logit past `usable` is never drawn yet counts in the logsumexp; the -inf entries elsewhere in each row
    leave the drawn logit (`picked`, a masked sum) exact."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    from r1jax.sharding.context import use_mesh
    from r1jax.sharding.mesh import ShardingConfig, build_mesh
    from r1jax.sharding.rules import Rules

    rows, vocab, usable = 8, 64, 60
    logits = np.full((rows, vocab), -np.inf, np.float32)
    logits[:, 1::2] = 0.0
    for row in range(rows):  # ties on shards 1 + row % 3 and 6 of the 8 (8 ids each), a larger one in the padding
        logits[row, [8 * (1 + row % 3) + 3, 53]] = 1e12
    logits[:, 62] = 2e12
    mesh = build_mesh(ShardingConfig(data=1, fsdp=1, expert=1, tensor=8))
    split = jax.device_put(logits, NamedSharding(mesh, P(None, "tensor")))
    draw = jax.jit(lambda x, k: sample_token(x, k, jnp.float32(temperature), jnp.int32(0), jnp.float32(1.0), usable,
                                             filters=False))
    with use_mesh(mesh, Rules.preset("inference")):
        token, logp = draw(split, jax.random.key(0))
    want = np.argmax(np.where(np.arange(vocab) < usable, logits, -np.inf), axis=-1)
    np.testing.assert_array_equal(token, want)
    np.testing.assert_array_equal(want, 8 * (1 + np.arange(rows) % 3) + 3)
    np.testing.assert_array_equal(logp, np.full(rows, -1e12, np.float32))  # 1e12 - (2e12 + log 1)
