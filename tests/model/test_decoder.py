"""Decoder behaviour: causality, padding, positions, dtype policy, remat, unrolled layers."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.model.decoder import unstack_layers
from r1jax.model.factory import decode_read_bytes, init_policy
from r1jax.model.layers import RMSNorm, project, rope_cos_sin
from tests.model.tiny import FAMILIES, QWEN


def forward(policy, tokens_BT, **arrays):
    """policy(tokens_BT, **arrays) as one compiled program (op by op, a forward took seconds of dispatching)."""
    graphdef, state = nnx.split(policy)
    return jax.jit(lambda s, t, a: nnx.merge(graphdef, s)(t, **a))(state, tokens_BT, arrays)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_at_t_do_not_depend_on_later_tokens(family):
    cfg = FAMILIES[family]
    policy = init_policy(cfg, seed=0)
    x = policy.embed(jax.random.randint(jax.random.key(1), (1, 8), 0, cfg.vocab_size))
    graphdef, state = nnx.split(policy)

    def per_position(state, emb):  # [T]: a scalar function of each position's logits
        return jnp.sum(nnx.merge(graphdef, state).forward_embeddings(emb).logits_BTV[0] ** 2, axis=-1)

    jac_TSD = np.asarray(jax.jit(jax.jacrev(per_position, argnums=1))(state, x))[:, 0]
    for t in range(8):
        assert np.all(jac_TSD[t, t + 1:] == 0), f"position {t} sees later tokens"
        assert np.abs(jac_TSD[t, : t + 1]).sum() > 0


def test_rotary_gathered_from_the_rows_positions_equals_the_direct_angles_and_marks_positions_outside():
    """The full-sequence forward's rotary (`within_rows`: gathered from a table of the row's T positions on a CPU)
    equals cos and sin of the positions themselves to the bit, checked against NumPy's float64 too; a position
    outside [0, T) gives NaN where it lies, not a clipped angle."""
    positions_BT = jnp.asarray([[0, 0, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 0, 1, 2, 7]], jnp.int32)
    inv_freq = 1.0 / 10_000.0 ** (jnp.arange(0, 16, 2, dtype=jnp.float32) / 16)
    direct = jax.jit(lambda p: rope_cos_sin(p, inv_freq))(positions_BT)
    gathered = jax.jit(lambda p: rope_cos_sin(p, inv_freq, within_rows=True))(positions_BT)
    for a, b in zip(direct, gathered):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    angles = np.asarray(positions_BT, np.float64)[..., None] * 10_000.0 ** (-np.arange(0, 16, 2) / 16)
    np.testing.assert_allclose(np.asarray(gathered[0]), np.cos(np.concatenate([angles] * 2, -1)), atol=1e-5)
    outside = jax.jit(lambda p: rope_cos_sin(p, inv_freq, within_rows=True))(positions_BT.at[1, 7].set(8))
    assert np.isnan(np.asarray(outside[0][1, 7])).all() and not np.isnan(np.asarray(outside[0][:, :7])).any()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padding_is_never_attended(family):
    """Garbage tokens in padded positions change no real position's logits, and a left-padded row with explicit
    positions gives the unpadded row's logits: the three batches run as the rows of one compiled forward."""
    cfg = FAMILIES[family]
    policy = init_policy(cfg, seed=0)
    tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, cfg.vocab_size)
    garbage = tokens.at[:, 6:].set(jax.random.randint(jax.random.key(3), (2, 3), 0, cfg.vocab_size))
    left = jnp.concatenate([jnp.zeros((2, 3), tokens.dtype), tokens[:, :6]], axis=1)
    arange, shifted = jnp.arange(9), jnp.maximum(jnp.arange(9) - 3, 0)
    positions = jnp.stack([arange] * 4 + [shifted] * 2)
    valid = jnp.stack([arange < 6] * 4 + [arange >= 3] * 2)
    logits = np.asarray(forward(policy, jnp.concatenate([tokens, garbage, left]), positions_BT=positions,
                                valid_BT=valid).logits_BTV)
    a, b, c = logits[0:2, :6], logits[2:4, :6], logits[4:6, 3:]
    np.testing.assert_allclose(a, b, atol=1e-6)
    # left padding with explicit positions gives the same logits as the unpadded sequence
    np.testing.assert_allclose(c, a, atol=1e-5)


def tokens_2x8(cfg):
    """The [2, 8] tokens of the gradient tests (and of the bfloat16 one, which reads the same float32 run)."""
    return jax.random.randint(jax.random.key(6), (2, 8), 0, cfg.vocab_size)


@functools.cache
def output_and_gradients(cfg):
    """(policy output, gradient of mean(logits^2)) of init_policy(cfg, seed=0) on `tokens_2x8`, one compiled
    program; cached: the scan's run is compared with the unrolled, the remat and the bfloat16 runs."""
    graphdef, state = nnx.split(init_policy(cfg, seed=0))
    tokens = tokens_2x8(cfg)

    def loss(s):
        out = nnx.merge(graphdef, s)(tokens)
        return jnp.mean(out.logits_BTV ** 2), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    return out, grads


def test_aux_has_one_row_per_moe_layer_and_bfloat16_compute_stays_close():
    """The float32 run's aux has one row per MoE layer; the bfloat16 (remat) forward's logits are float32 and
    differ from float32's by more than nothing and less than bfloat16 rounding allows."""
    cfg = FAMILIES["deepseek_v3"]
    assert cfg.mlp_only_layers == ()  # the same config (and program) as test_unrolled_layers_match_the_scan's
    out32, _ = output_and_gradients(cfg)
    moe_layers = sum(cfg.layer_is_moe(i) for i in range(cfg.num_hidden_layers))
    assert out32.aux.counts_E.shape == (moe_layers, cfg.n_routed_experts)
    assert out32.aux.experts_BTK.shape == (moe_layers, 2, 8, cfg.num_experts_per_tok)
    bf16 = dataclasses.replace(cfg, compute_dtype="bfloat16", remat=True)
    out16 = forward(init_policy(bf16, seed=0), tokens_2x8(cfg))
    assert out16.logits_BTV.dtype == jnp.float32  # logits always in float32
    # measured max |bf16 - f32| = 0.0026 on logits spanning 0.81 (bf16 keeps 8 bits of mantissa); 0.006 is
    # under 3x that. A positive difference shows the bf16 compute really ran.
    difference = np.abs(np.asarray(out16.logits_BTV - out32.logits_BTV)).max()
    assert 1e-4 < difference < 0.006, difference


def test_remat_gives_identical_gradients():
    """Remat (jax.checkpoint per layer) recomputes the same logits and gradients: qwen3_moe's three MoE layers
    in one scanned segment, the config test_unrolled_layers_match_the_scan compiles."""
    cfg = dataclasses.replace(FAMILIES["qwen3_moe"], mlp_only_layers=())
    (out, grads), (out_remat, grads_remat) = output_and_gradients(cfg), output_and_gradients(
        dataclasses.replace(cfg, remat=True))
    np.testing.assert_allclose(np.asarray(out_remat.logits_BTV), np.asarray(out.logits_BTV), atol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_remat)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_unrolled_layers_match_the_scan(family):
    # model.scan_layers: false runs the same layers one by one; only XLA's fusion (float rounding) differs.
    # Measured: logits differ by <= 1.2e-7 and gradients by <= 2.3e-9 here; the tolerances are ~10-40x that.
    cfg = dataclasses.replace(FAMILIES[family], mlp_only_layers=())  # Qwen: one 3-layer MoE segment
    (scanned, grads_scanned), (unrolled, grads_unrolled) = (
        output_and_gradients(cfg), output_and_gradients(dataclasses.replace(cfg, scan_layers=False)))
    assert any(count > 1 for kind, count in cfg.layer_segments())  # a segment really is unrolled
    np.testing.assert_allclose(np.asarray(unrolled.logits_BTV), np.asarray(scanned.logits_BTV), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(unrolled.aux.experts_BTK), np.asarray(scanned.aux.experts_BTK))
    np.testing.assert_allclose(np.asarray(unrolled.aux.counts_E), np.asarray(scanned.aux.counts_E))
    for a, b in zip(jax.tree.leaves(grads_unrolled), jax.tree.leaves(grads_scanned)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_unrolled_decoding_matches_the_scan(family):
    # scan_layers: false also decodes layer by layer: each layer's cache a buffer of its own ([1, B, ...]) and,
    # in the sampler's loop, each layer's weights sliced out of their stack once per rollout (`for_decoding`)
    from r1jax.rl.sampler import Sampler, SamplingConfig

    cfg = dataclasses.replace(FAMILIES[family], mlp_only_layers=())  # Qwen: one 3-layer MoE segment
    scanned, unrolled = init_policy(cfg, seed=0), init_policy(dataclasses.replace(cfg, scan_layers=False), seed=0)
    segment = max(range(len(cfg.layer_segments())), key=lambda i: cfg.layer_segments()[i][1])
    count = cfg.layer_segments()[segment][1]
    assert count > 1
    stacked_cache, own_caches = scanned.init_cache(2, 5)[segment], unrolled.init_cache(2, 5)[segment]
    assert all(c.shape[:2] == (count, 2) and c.shape[axis] == 5
               for c, axis in zip(stacked_cache, scanned.cache_slot_axes()[segment]))
    assert len(own_caches) == count and all(c.shape == (1,) + s.shape[1:] for entries in own_caches
                                            for c, s in zip(entries, stacked_cache))
    assert scanned.for_decoding() is scanned
    per_layer = unrolled.for_decoding()
    assert not per_layer.segments[segment].stacked
    np.testing.assert_array_equal(  # layer 1's weights are layer 1's slice of the stack
        np.asarray(per_layer.segments[segment].layers[1].self_attn.o_proj[...]),
        np.asarray(unrolled.segments[segment].block.self_attn.o_proj[...][1]))

    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    for overrides in ({}, {"kv_block": 4, "slots": 3}):  # the dense read, fixed batch; block-wise, continuous
        config = SamplingConfig(max_new_tokens=12, prompt_buckets=(8,), temperature=1.0, **overrides)
        rollouts = [Sampler(nnx.graphdef(p), config, stop_ids=(), pad_id=0).generate(
                    nnx.state(p), prompts, samples=2, key=jax.random.key(3)) for p in (scanned, unrolled)]
        np.testing.assert_array_equal(np.asarray(rollouts[1].tokens_BT), np.asarray(rollouts[0].tokens_BT))
        np.testing.assert_array_equal(np.asarray(rollouts[1].experts_LBTK), np.asarray(rollouts[0].experts_LBTK))
        np.testing.assert_allclose(np.asarray(rollouts[1].logprobs_BN), np.asarray(rollouts[0].logprobs_BN),
                                   atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_a_decode_step_reads_cast_weights_narrow_and_float32_uses_whole(tied):
    """The HBM-read limit of `r1jax compile` (rl.aot_report): float32 parameters of a bfloat16 model are read as
    the bfloat16 copies the decode loop holds, but routers, norm scales and the LM head as they are (used in
    float32), and an untied embedding table not at all (it counted float32 and whole: 2x for the r1zero preset).
    Counted by hand for QWEN: layer 1 dense (mlp_only_layers), 0 and 2 MoE."""
    cfg = dataclasses.replace(QWEN, param_dtype="float32", compute_dtype="bfloat16", tie_word_embeddings=tied)
    d, v, n, k, h, e, f, i = 32, 128, 4, 2, 8, 8, 16, 64
    attention = (d * n * h + 2 * d * k * h + n * h * d) * 2 + 2 * h * 4  # projections narrow; q/k norms float32
    layer_norms = 2 * d * 4
    moe = 3 * e * d * f * 2 + d * e * 4  # experts narrow, router float32
    dense = 3 * d * i * 2
    expected = 3 * (attention + layer_norms) + 2 * moe + dense + d * 4 + v * d * 4  # final norm, LM head
    assert decode_read_bytes(cfg) == expected
    narrow = dataclasses.replace(cfg, param_dtype="bfloat16")  # already narrow: float32 uses read at 2 bytes
    assert decode_read_bytes(narrow) == expected - (2 * 3 * h + 3 * 2 * d + 2 * d * e + d + v * d) * 2


@pytest.mark.parametrize("x_dtype, w_dtype", [("float32", "float32"), ("bfloat16", "bfloat16"),
                                             ("float32", "bfloat16")])
@pytest.mark.parametrize("spec, x_shape, w_shape", [("BTD,DF->BTF", (2, 5, 16), (16, 12)),
                                                    ("BTD,DNH->BTNH", (2, 5, 16), (16, 3, 4)),
                                                    ("BTNH,NHD->BTD", (2, 5, 3, 4), (3, 4, 16))])
def test_projection_gradients_equal_the_einsums(x_dtype, w_dtype, spec, x_shape, w_shape):
    """model.layers.project: a weight product (heads in or out) with its weight gradient's operands the other
    way round (a faster product on a CPU); both gradients equal autodiff's of the plain einsum, in the primals'
    dtypes (a float32 input gave a bfloat16 weight a float32 gradient)."""
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape).astype(x_dtype)
    w = jax.random.normal(kw, w_shape).astype(w_dtype)
    y, pullback = jax.vjp(lambda a, b: project(a, b, spec), x, w)
    y_ref, pullback_ref = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), x, w)
    np.testing.assert_array_equal(y, y_ref)
    dy = jax.random.normal(kg, y.shape).astype(y.dtype)
    tolerance = 1e-5 if x_dtype == w_dtype == "float32" else 2e-2
    for got, want in zip(pullback(dy), pullback_ref(dy)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tolerance,
                                   atol=tolerance * 4)


@pytest.mark.parametrize("scale", [1.0, 1e-4])
def test_rms_norm_equals_numpy_where_its_epsilon_matters(scale):
    """x / sqrt(mean(x^2) + eps) * w against NumPy, on activations of ~1 and of ~1e-4 (where eps is 100x the
    mean square: 1 / (sqrt(ms) + eps) differed by 10x there and by 1e-6 at ~1, below HF parity's tolerance)."""
    cfg = dataclasses.replace(QWEN, rms_norm_eps=1e-6)
    norm = RMSNorm(16, cfg, nnx.Rngs(0))
    norm.weight[...] = jnp.linspace(0.5, 1.5, 16)
    x = scale * np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6) * np.linspace(0.5, 1.5, 16)
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x)), np.float64), want, rtol=1e-5, atol=0)


def test_each_moe_segment_replays_its_own_layers_routes():
    """`replay_LBTK` is stacked over the MoE layers of every MoE segment in order: with MoE layers 0, 1 | dense 2 |
    MoE 3 (two MoE segments, the first of two layers), each layer keeps exactly the experts given for it (a
    second segment reading the first's rows, or counting its offset by segments, survived the tests: their
    models have one MoE segment, or MoE segments of one layer each)."""
    cfg = dataclasses.replace(QWEN, num_hidden_layers=4, mlp_only_layers=(2,))
    assert cfg.layer_segments() == (("moe", 2), ("dense", 1), ("moe", 1))
    tokens = jax.random.randint(jax.random.key(3), (2, 6), 0, cfg.vocab_size)
    # layer l routes every token to experts (l, l + 4): no two layers alike
    replay = jnp.broadcast_to(jnp.array([[layer, layer + 4] for layer in range(3)])[:, None, None, :], (3, 2, 6, 2))
    out = forward(init_policy(cfg, seed=0), tokens, replay_LBTK=replay)
    np.testing.assert_array_equal(np.asarray(out.aux.experts_BTK), np.asarray(replay))


def test_unstacked_layers_keep_one_logical_axis_per_dimension():
    """unstack_layers drops the "layers" axis from each sliced variable's `axes` (sharding.rules reads one name
    per dimension): every variable of the per-layer state names as many axes as it has dimensions, none of
    them "layers"; keeping the stack's axes survived the tests."""
    state = unstack_layers(nnx.state(init_policy(QWEN, seed=0), nnx.Param))
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata().get("axes")
        assert len(axes) == var.ndim and "layers" not in axes, (path, axes, var.shape)
