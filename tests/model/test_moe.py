"""Routing and dispatch: grouped kernels against a dense reference, a hand-computed DeepSeek routing case,
replay, aux losses, and the aux-loss-free bias update."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.model.config import ModelConfig
from r1jax.model.blocked import fitted_block_size
from r1jax.model.dispatch import local_expert_ffn, resolve_impl
from r1jax.model.moe import MoE
from r1jax.model.routing import expert_counts, load_balance_loss, route, router_z_loss, top_k, update_routing_bias
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.rules import Rules
from tests.model.tiny import FAMILIES


def dense_reference(x_TD, experts_TK, weights_TK, wg, wu, wd):
    """Every token through each of its experts, one at a time, in NumPy float64."""
    x, wg, wu, wd = (np.asarray(a, np.float64) for a in (x_TD, wg, wu, wd))
    out = np.zeros_like(x)
    silu = lambda z: z / (1 + np.exp(-z))
    for t in range(x.shape[0]):
        for e, w in zip(np.asarray(experts_TK[t]), np.asarray(weights_TK[t])):
            out[t] += w * ((silu(x[t] @ wg[e]) * (x[t] @ wu[e])) @ wd[e])
    return out


def dispatch_case(tokens, experts, top_k):
    keys = jax.random.split(jax.random.key(tokens + experts), 6)
    d, f = 16, 12
    x = jax.random.normal(keys[0], (tokens, d))
    logits = jax.random.normal(keys[1], (tokens, experts))
    weights, chosen = jax.lax.top_k(jax.nn.softmax(logits), top_k)
    wg, wu = (0.3 * jax.random.normal(k, (experts, d, f)) for k in keys[2:4])
    wd = 0.3 * jax.random.normal(keys[4], (experts, f, d))
    return x, chosen, weights, wg, wu, wd


CASES = [(37, 8, 2, 8), (64, 16, 4, 16), (5, 8, 3, 4), (6, 16, 2, 64)]  # last: a decode step, block fitted


@pytest.mark.parametrize("impl", ["blocked", "blocked_autodiff", "ragged"])
@pytest.mark.parametrize("tokens,experts,top_k,block", CASES)
def test_grouped_dispatch_equals_dense_reference(impl, tokens, experts, top_k, block):
    x, chosen, weights, wg, wu, wd = dispatch_case(tokens, experts, top_k)
    got = jax.jit(functools.partial(local_expert_ffn, impl=impl, block_size=block))(x, chosen, weights, wg, wu, wd)
    np.testing.assert_allclose(np.asarray(got), dense_reference(x, chosen, weights, wg, wu, wd), atol=1e-5)


def dense_loss(x, weights, wg, wu, wd, chosen):
    """A non-linear function of the dense, one-hot-combined expert outputs (every expert on every token)."""
    h = jax.nn.silu(jnp.einsum("td,edf->tef", x, wg)) * jnp.einsum("td,edf->tef", x, wu)
    y_TED = jnp.einsum("tef,efd->ted", h, wd)
    combine_TE = jnp.sum(jax.nn.one_hot(chosen, wg.shape[0]) * weights[..., None], axis=1)
    y = jnp.einsum("ted,te->td", y_TED, combine_TE)
    return jnp.sum(jnp.sin(y) * y)


@pytest.mark.parametrize("impl", ["blocked", "blocked_autodiff"])
@pytest.mark.parametrize("tokens,experts,top_k,block", CASES)
def test_blocked_gradients_equal_the_dense_formulas(impl, tokens, experts, top_k, block):
    """The written-out backward (and JAX's) against autodiff of the dense computation: inputs, all three
    weights and the routing weights, including experts that get no token."""
    x, chosen, weights, wg, wu, wd = dispatch_case(tokens, experts, top_k)
    sparse = lambda x, weights, wg, wu, wd: jnp.sum(
        jnp.sin(y := local_expert_ffn(x, chosen, weights, wg, wu, wd, impl=impl, block_size=block)) * y)
    args = (x, weights, wg, wu, wd)
    got = jax.jit(jax.grad(sparse, argnums=range(5)))(*args)
    expected = jax.jit(jax.grad(lambda *a: dense_loss(*a, chosen), argnums=range(5)))(*args)
    for name, g, e in zip(("x", "routing weights", "w_gate", "w_up", "w_down"), got, expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=2e-5, rtol=1e-4, err_msg=name)


def test_blocked_bfloat16_gradients_on_a_cpu_come_from_float32_products_and_sums():
    """bfloat16 operands on a CPU (model.blocked._on_cpu_in_float32): 512 tokens top-1 over 2 experts in
    blocks of 8, about 32 blocks per expert. Against float32 autodiff of the dense computation on the same
    bfloat16 values, the written-out backward's gradients stay within 0.75% for the weights (measured 0.29%,
    0.35%, 0.52%) and 1.2% for x and the routing weights (0.86%, 0.69%); with bfloat16 products and sums, as
    before, they were 1.05%, 1.01%, 1.26%, 1.89% and 1.78%. The gradients come back in bfloat16."""
    x, chosen, weights, wg, wu, wd = dispatch_case(512, 2, 1)
    args = tuple(a.astype(jnp.bfloat16) for a in (x, weights, wg, wu, wd))
    sparse = lambda x, weights, wg, wu, wd: jnp.sum(jnp.sin(y := local_expert_ffn(
        x, chosen, weights, wg, wu, wd, impl="blocked", block_size=8).astype(jnp.float32)) * y)
    got = jax.jit(jax.grad(sparse, argnums=range(5)))(*args)
    expected = jax.jit(jax.grad(lambda *a: dense_loss(*a, chosen), argnums=range(5)))(
        *(a.astype(jnp.float32) for a in args))
    for name, g, e, bound in zip(("x", "routing weights", "w_gate", "w_up", "w_down"), got, expected,
                                 (0.012, 0.012, 0.0075, 0.0075, 0.0075)):
        assert g.dtype == jnp.bfloat16, name
        error = float(jnp.max(jnp.abs(g.astype(jnp.float32) - e)) / jnp.max(jnp.abs(e)))
        assert error < bound, (name, error)


@pytest.mark.parametrize("copies,experts,block,fitted", [
    (128, 16, 128, 8),  # a decode step of 64 rows, top-2 over 16 experts: 8 copies per expert on average
    (12, 16, 64, 8),  # fewer copies than experts: the floor of 8 rows
    (100, 8, 64, 16),  # 12.5 per expert: the next power of two
    (20480, 16, 128, 128),  # a training batch: the configured block
    (256, 8, 32, 32),  # the default run's GRPO decode: unchanged
])
def test_block_size_fits_the_copies_per_expert(copies, experts, block, fitted):
    assert fitted_block_size(copies, experts, block) == fitted


def test_auto_kernel_per_backend_and_step():
    """`auto`: blocked on CPU; on TPU blocked except a decode step (ragged_dot's weight gradient compiles as a
    dense product over every local expert there: tests/rl/test_aot.py); GPU keeps ragged_dot."""
    got = {(b, d): resolve_impl("auto", decode=d, backend=b) for b in ("cpu", "tpu", "gpu") for d in (False, True)}
    assert got == {("cpu", False): "blocked", ("cpu", True): "blocked", ("tpu", False): "blocked",
                   ("tpu", True): "ragged", ("gpu", False): "ragged", ("gpu", True): "ragged"}
    assert resolve_impl("blocked_autodiff", decode=True, backend="tpu") == "blocked_autodiff"


def test_dispatch_with_expert_offset_uses_only_local_experts():
    keys = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(keys[0], (20, 8))
    weights, chosen = jax.lax.top_k(jax.nn.softmax(jax.random.normal(keys[1], (20, 8))), 2)
    wg, wu = (jax.random.normal(k, (8, 8, 4)) for k in keys[2:4])
    wd = jax.random.normal(keys[4], (8, 4, 8))
    halves = jax.jit(lambda x, weights, wg, wu, wd: [local_expert_ffn(
        x, chosen, weights, wg[s:s + 4], wu[s:s + 4], wd[s:s + 4], expert_offset=s) for s in (0, 4)])(
        x, weights, wg, wu, wd)  # one compiled program
    np.testing.assert_allclose(np.asarray(halves[0] + halves[1]),
                               dense_reference(x, chosen, weights, wg, wu, wd), atol=1e-4)


@pytest.mark.parametrize("impl", ["blocked", "ragged"])
def test_fewer_local_experts_than_top_k_dispatch_every_local_copy(impl):
    """One or two experts per device under top-3 routing: the ragged kernel then runs only tokens x local
    experts copies (every local one, whatever the routing), and the devices' outputs still add up. The offset
    is traced (as a device's is under shard_map): one compiled program per number of local experts."""
    x, chosen, weights, wg, wu, wd = dispatch_case(24, 8, 3)
    ffn = jax.jit(functools.partial(local_expert_ffn, impl=impl, block_size=8))
    for per_device in (1, 2):
        parts = [ffn(x, chosen, weights, wg[s:s + per_device], wu[s:s + per_device], wd[s:s + per_device],
                     expert_offset=jnp.int32(s)) for s in range(0, 8, per_device)]
        np.testing.assert_allclose(np.asarray(sum(parts)), dense_reference(x, chosen, weights, wg, wu, wd),
                                   atol=1e-4)
    # a token whose copies all go to one device's two experts: both are kept
    crowded = jnp.tile(jnp.array([[0, 1, 5]]), (24, 1))
    local = ffn(x, crowded, weights, wg[:2], wu[:2], wd[:2], expert_offset=jnp.int32(0))
    reference = dense_reference(x, crowded.at[:, 2].set(0), weights.at[:, 2].set(0), wg, wu, wd)
    np.testing.assert_allclose(np.asarray(local), reference, atol=1e-4)


@pytest.mark.parametrize("impl", ["blocked", "blocked_autodiff"])
def test_all_local_experts_skip_the_masks_with_identical_numbers(impl):
    # expert_offset None (every expert on this device, as without expert parallelism) drops the validity
    # masks; offset 0 over all experts keeps them. Outputs and gradients must be bitwise equal.
    keys = jax.random.split(jax.random.key(7), 5)
    x = jax.random.normal(keys[0], (20, 8))
    weights, chosen = jax.lax.top_k(jax.nn.softmax(jax.random.normal(keys[1], (20, 8))), 2)
    wg, wu = (jax.random.normal(k, (8, 8, 4)) for k in keys[2:4])
    wd = jax.random.normal(keys[4], (8, 4, 8))

    def value_and_grads(offset):
        f = lambda *a: jnp.sum(jnp.sin(local_expert_ffn(a[0], chosen, a[1], *a[2:], expert_offset=offset,
                                                        impl=impl, block_size=8)))
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4)))(x, weights, wg, wu, wd)

    for a, b in zip(jax.tree.leaves(value_and_grads(None)), jax.tree.leaves(value_and_grads(0))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

def _deepseek_router_case():
    cfg = ModelConfig(family="deepseek_v3", hidden_size=8, n_routed_experts=8, num_experts_per_tok=2,
                      n_group=4, topk_group=2, routed_scaling_factor=2.0, norm_topk_prob=True)
    scores = np.array([[0.9, 0.15, 0.5, 0.6, 0.8, 0.7, 0.2, 0.3]], np.float32)
    bias = np.array([0, 0, 0.3, 0, -0.5, 0, 0, 0.4], np.float32)
    x = np.log(scores / (1 - scores))  # with an identity router the logits are x, sigmoid(x) = scores
    return cfg, jnp.asarray(x), jnp.eye(8), jnp.asarray(bias), scores


def test_group_limited_sigmoid_routing_matches_hand_computed_case():
    # choice = scores + bias = [.9, .15, .8, .6, .3, .7, .2, .7]; group sums of pairs: 1.05, 1.4, 1.0, .9.
    # Groups 1 and 0 win, so expert 5 (.7, group 2) is out and expert 4 (score .8) is demoted by its bias.
    # Top-2 in groups {0, 1}: experts 0 (.9) and 2 (.8). Weights: unbiased scores .9, .5, normalised, x 2.
    cfg, x, router, bias, _ = _deepseek_router_case()
    r = route(x, router, bias, cfg)
    assert sorted(np.asarray(r.experts_TK[0]).tolist()) == [0, 2]
    weights = dict(zip(np.asarray(r.experts_TK[0]).tolist(), np.asarray(r.weights_TK[0]).tolist()))
    assert weights[0] == pytest.approx(2 * 0.9 / 1.4, rel=1e-5)
    assert weights[2] == pytest.approx(2 * 0.5 / 1.4, rel=1e-5)


def test_routing_without_bias_or_norm_uses_raw_scores():
    cfg, x, router, _, scores = _deepseek_router_case()
    cfg = dataclasses.replace(cfg, norm_topk_prob=False, n_group=1, topk_group=1)
    r = route(x, router, jnp.zeros(8), cfg)
    assert sorted(np.asarray(r.experts_TK[0]).tolist()) == [0, 4]  # .9 and .8 without bias or groups
    np.testing.assert_allclose(sorted(np.asarray(r.weights_TK[0])), sorted(2 * scores[0, [0, 4]]), rtol=1e-6)


def test_routing_replay_keeps_given_experts_and_recomputes_weights():
    cfg = ModelConfig(family="qwen3_moe", hidden_size=8, n_routed_experts=8, num_experts_per_tok=2)
    x = jax.random.normal(jax.random.key(1), (6, 8))
    router = jax.random.normal(jax.random.key(2), (8, 8))
    replay = jnp.tile(jnp.array([[3, 5]]), (6, 1))
    r = route(x, router, None, cfg, replay_TK=replay)
    assert np.array_equal(np.asarray(r.experts_TK), np.asarray(replay))
    probs = np.asarray(jax.nn.softmax(x @ router))
    expected = probs[:, [3, 5]] / probs[:, [3, 5]].sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(r.weights_TK), expected, rtol=1e-5)


def test_counts_and_balance_loss_exclude_padding_and_match_hf_formula():
    experts = jnp.array([[0, 1], [1, 2], [3, 0]])
    valid = jnp.array([True, True, False])
    counts = expert_counts(experts, valid, 4)
    assert np.asarray(counts).tolist() == [1, 2, 1, 0]
    probs = jnp.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.5, 0.3, 0.1], [9.0, 9.0, 9.0, 9.0]])
    loss = load_balance_loss(probs, counts, valid)
    frac = np.array([1, 2, 1, 0]) / 2  # per real token
    mean_prob = (np.array([0.4, 0.3, 0.2, 0.1]) + np.array([0.1, 0.5, 0.3, 0.1])) / 2
    assert float(loss) == pytest.approx(4 * np.sum(frac * mean_prob), rel=1e-6)


def test_router_z_loss_is_the_mean_squared_logsumexp_over_real_tokens():
    logits = 3.0 * np.random.default_rng(0).normal(size=(5, 8))
    valid = np.array([True, True, False, True, False])
    expected = np.mean([np.log(np.sum(np.exp(row))) ** 2 for row in logits[valid]])  # float64
    got = router_z_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(valid))
    assert float(got) == pytest.approx(expected, rel=1e-5)  # float32 logsumexp of O(10) values: ~1e-7 relative


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_moe_layer_aux_losses_equal_numpy_on_its_router_logits(family):
    cfg = FAMILIES[family]
    layer = MoE(cfg, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 5, cfg.hidden_size))
    valid = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
    graphdef, state = nnx.split(layer)
    _, aux = jax.jit(lambda s, x, valid: nnx.merge(graphdef, s)(x, valid))(state, x, valid)  # one program
    real = np.asarray(valid).reshape(-1)
    logits = (np.asarray(x, np.float64).reshape(10, -1) @ np.asarray(layer.router[...], np.float64))[real]
    z = np.mean(np.log(np.exp(logits).sum(-1)) ** 2)
    if cfg.is_deepseek:  # DeepSeek-V3 eq. 18: sigmoid scores normalised over experts
        scores = 1 / (1 + np.exp(-logits))
        probs = scores / scores.sum(-1, keepdims=True)
    else:  # Switch / HF Qwen3-MoE: softmax over experts, top-k of them chosen
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        top = np.sort(np.argsort(-logits, axis=-1)[:, :cfg.num_experts_per_tok], axis=-1)
        assert np.array_equal(np.sort(np.asarray(aux.experts_BTK).reshape(10, -1)[real], axis=-1), top)
    chosen = np.asarray(aux.experts_BTK).reshape(10, -1)[real]
    fraction = np.bincount(chosen.reshape(-1), minlength=cfg.n_routed_experts) / real.sum()  # per real token
    balance = cfg.n_routed_experts * np.sum(fraction * probs.mean(0))
    # float32 against float64 on O(1) values: agreement to ~1e-6 relative
    assert float(aux.z_loss) == pytest.approx(z, rel=1e-5)
    assert float(aux.load_balance_loss) == pytest.approx(balance, rel=1e-5)


def test_bias_update_rises_for_under_loaded_and_falls_for_over_loaded_experts_by_the_rate():
    bias_LE = jnp.array([[0.1, -0.2, 0.0, 0.05], [0.3, 0.3, 0.3, 0.3]])
    counts_LE = jnp.array([[10.0, 2.0, 4.0, 0.0], [3.0, 3.0, 3.0, 3.0]])  # layer means 4 and 3
    got = np.asarray(update_routing_bias(bias_LE, counts_LE, rate=0.01))
    # layer 0: expert 0 over-loaded (10 > 4) falls, experts 1 and 3 under-loaded rise, expert 2 (= mean) stays;
    # layer 1: balanced, unchanged
    np.testing.assert_allclose(got, [[0.09, -0.19, 0.0, 0.06], [0.3, 0.3, 0.3, 0.3]], rtol=1e-6)


def test_bias_update_moves_skewed_load_towards_balance():
    cfg = ModelConfig(family="deepseek_v3", hidden_size=16, n_routed_experts=8, num_experts_per_tok=2,
                      n_group=1, topk_group=1)
    x = jax.random.normal(jax.random.key(0), (512, 16)).at[:, 0].set(1.0)  # feature 0 is constant
    router = 0.3 * jax.random.normal(jax.random.key(1), (16, 8))
    router = router.at[0].set(jnp.array([1.5, 1.0, 0, 0, 0, 0, 0, 0]))  # experts 0 and 1 favoured
    valid = jnp.ones(512, bool)
    bias = jnp.zeros((1, 8))

    @jax.jit
    def load(b):
        return expert_counts(route(x, router, b[0], cfg).experts_TK, valid, 8)

    step = jax.jit(lambda b: update_routing_bias(b, load(b)[None], rate=0.005))  # one program per update
    first = np.asarray(load(bias))
    for _ in range(100):
        bias = step(bias)
    last = np.asarray(load(bias))
    cv = lambda c: c.std() / c.mean()
    assert cv(last) < 0.5 * cv(first), (first, last)
    assert last.max() < first.max()


def test_top_k_under_a_mesh_picks_what_lax_top_k_picks_ties_to_the_lower_index():
    """Under a mesh the router's top-k is a stable sort (it runs on each device's rows); the same values and
    indices as `jax.lax.top_k`: ties to the lower index, -inf (DeepSeek's masked groups) last, negatives."""
    rng = np.random.RandomState(0)
    x = rng.randint(-3, 4, (16, 8)).astype(np.float32)  # many ties
    x[::3, 5:] = -np.inf
    x[1] = 0.0  # a row all tied
    x = jnp.asarray(x)
    expected = jax.lax.top_k(x, 3)
    with use_mesh(build_mesh(ShardingConfig(data=2, fsdp=1, expert=4, tensor=1)), Rules.preset("inference")):
        got = jax.jit(lambda x: top_k(x, 3))(x)
    assert np.array_equal(np.asarray(got[1]), np.asarray(expected[1]))
    assert np.array_equal(np.asarray(got[0]), np.asarray(expected[0]))
    assert np.asarray(got[1])[1].tolist() == [0, 1, 2]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padding_costs_no_expert_compute_and_real_tokens_match_the_unpadded_batch(family, monkeypatch):
    """Positions holding no token send their copies to expert E (no device's) with weight 0, so no kernel
    computes them and no device's experts are crowded by them; their routed output is exactly 0, and each real
    token's output is what it is with the pads left out (under a replayed route that sends every pad to
    experts 0..K-1, as `rl.decoding.padding_routes` records). The routed part is compared with NumPy's dense
    reference; DeepSeek's shared expert still runs on every position (dense: pads cost it nothing extra)."""
    import r1jax.model.moe as moe
    cfg = FAMILIES[family]
    layer = MoE(cfg, nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(5), (2, 6, cfg.hidden_size))
    valid = jnp.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], bool)
    k, e = cfg.num_experts_per_tok, cfg.n_routed_experts
    replay = jnp.where(valid[..., None], (jnp.arange(12).reshape(2, 6, 1) + jnp.arange(k)) % e, jnp.arange(k))
    seen = {}
    original = moe.expert_ffn

    def recording(x_TD, experts_TK, weights_TK, *args, **kwargs):  # traced: the program returns them
        seen.update(experts=experts_TK, weights=weights_TK)
        return original(x_TD, experts_TK, weights_TK, *args, **kwargs)

    monkeypatch.setattr(moe, "expert_ffn", recording)
    graphdef, state = nnx.split(layer)

    def run(state, x, valid, replay):  # the layer, its expert inputs and its shared expert: one program
        layer = nnx.merge(graphdef, state)
        y, aux = layer(x, valid, replay)
        shared = layer.shared_experts(x) if cfg.is_deepseek and cfg.n_shared_experts else jnp.zeros_like(x)
        return y, aux, shared, seen["experts"], seen["weights"]

    y, aux, shared, experts, weights = jax.jit(run)(state, x, valid, replay)
    seen.update(experts=np.asarray(experts), weights=np.asarray(weights))
    real = np.asarray(valid).reshape(-1)
    assert np.all(seen["experts"][~real] == e) and np.all(seen["weights"][~real] == 0)
    assert np.array_equal(seen["experts"][real], np.asarray(replay).reshape(-1, k)[real])
    assert np.array_equal(np.asarray(aux.experts_BTK), np.asarray(replay))  # the record keeps the routes
    routed = np.asarray(y - shared).reshape(12, -1)
    assert np.all(routed[~real] == 0)
    reference = dense_reference(np.asarray(x).reshape(12, -1)[real], seen["experts"][real],
                                seen["weights"][real], layer.gate_proj[...], layer.up_proj[...],
                                layer.down_proj[...])
    np.testing.assert_allclose(routed[real], reference, atol=2e-5)
