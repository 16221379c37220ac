"""The jitted GRPO update step: micro-batching is exact (bfloat16 gradients are summed in float32, the state
keeps its dtypes), NaNs are skipped bitwise, sharding changes nothing, the routing bias follows the load by
the sign rule, the router losses enter with their coefficients, remat is in the program only when asked for,
unrolled layers give the scan's losses and gradients, and beta = 0 needs no reference policy."""

import dataclasses
import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax.model.factory import init_policy
from r1jax.model.layers import RoutingBias
from r1jax.model.moe import MoEAux
from r1jax.rl.grpo.aggregation import global_normalisers, token_weights_BT
from r1jax.rl.grpo.config import GRPOConfig, OptimizerConfig
from r1jax.rl.grpo.optimizer import make_optimizer, skip_nonfinite
from r1jax.rl.grpo.step import grpo_micro_loss, make_grpo_step
from r1jax.rl.update import (TrainState, UpdateConfig, add_router_losses, expert_load_metrics, init_train_state,
                             micro_split)
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import state_shardings
from r1jax.sharding.rules import Rules
from tests.model.tiny import DEEPSEEK

CFG = dataclasses.replace(DEEPSEEK, num_hidden_layers=2)
# at the sampling temperature 0.7 (not 1): every step divides its policy's and reference's logits by it
GRPO = GRPOConfig(group_size=4, kl_coef=0.05, loss_aggregation="token_mean", temperature=0.7)
SGD = skip_nonfinite(optax.sgd(1.0))  # params move by exactly -grad: steps compare gradients
NO_KL = dataclasses.replace(GRPO, kl_coef=0.0)
# the 3-layer preset: one dense layer, then two MoE layers stacked in one segment; its steps with the router's
# aux loss and bias updates on are shared by the routing-bias, sharding and unrolled-layers tests
ROUTED = dict(rate=0.01, cfg=DEEPSEEK)


def synthetic_batch(rows=8, length=12, prompt=4, seed=0):
    keys = jax.random.split(jax.random.key(seed), 4)
    tokens = jax.random.randint(keys[0], (rows, length), 1, CFG.vocab_size)
    lengths = jax.random.randint(keys[1], (rows,), 2, length - prompt + 1)
    valid = jnp.arange(length)[None] < (prompt + lengths)[:, None]
    mask = (jnp.arange(1, length)[None] >= prompt) & valid[:, 1:]
    norms = global_normalisers(mask, length - prompt)
    return {"tokens": tokens, "positions": jnp.broadcast_to(jnp.arange(length), (rows, length)), "valid": valid,
            "mask": mask, "weight": token_weights_BT(mask, GRPO.loss_aggregation, norms),
            "sampler_logp": jnp.where(mask, -2.0 + 0.1 * jax.random.normal(keys[2], mask.shape), 0.0),
            "adv": jax.random.normal(keys[3], (rows,))}


def make(update=UpdateConfig(aux_loss_coef=0.0), grpo=GRPO, optimizer=SGD, with_ref=True, rate=0.0, cfg=CFG):
    """One (state, jitted step) per setting, however the test spells it: tests asking for the same one share
    its compiled program (each compile costs seconds, each run milliseconds)."""
    return _make(update, grpo, optimizer, with_ref, rate, cfg)


@functools.cache
def _make(update, grpo, optimizer, with_ref, rate, cfg):
    graphdef, state = init_train_state(init_policy(cfg, 0), optimizer, with_ref=with_ref)
    return state, jax.jit(make_grpo_step(graphdef, optimizer, grpo, update, cfg, None, bias_rate=rate))


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_four_micro_batches_equal_one_batch():
    batch = synthetic_batch()
    state, one = make(UpdateConfig(micro_batches=1, aux_loss_coef=0.0))
    _, four = make(UpdateConfig(micro_batches=4, aux_loss_coef=0.0))
    a, metrics_a = one(state, batch)
    b, metrics_b = four(state, batch)
    for x, y in zip(leaves(a.params), leaves(b.params)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    for key in ("loss", "pg_loss", "kl", "entropy", "token_count"):
        assert float(metrics_a[key]) == pytest.approx(float(metrics_b[key]), abs=1e-6), key


def products(jaxpr) -> int:
    """dot_general equations in a jaxpr and every jaxpr nested in it (scan and loop bodies, custom rules)."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "dot_general"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += products(sub)
    return count


def test_micro_batches_trace_the_forward_and_backward_once():
    """The update program holds one forward and one backward whatever the micro-batch count (a scan body runs
    them M times): compiling M = 4 costs what M = 1 does, not twice as much."""
    batch = synthetic_batch()
    state, one = make(UpdateConfig(micro_batches=1, aux_loss_coef=0.0))
    _, four = make(UpdateConfig(micro_batches=4, aux_loss_coef=0.0))
    counts = [products(jax.make_jaxpr(step)(state, batch).jaxpr) for step in (one, four)]
    assert counts[0] > 0 and counts[1] == counts[0], counts


BF16 = dataclasses.replace(CFG, param_dtype="bfloat16")


def _gradient_recorder() -> optax.GradientTransformation:
    """Passes the gradients the step handed it on unchanged and keeps them, as its state, in float32."""
    wide = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)
    keep = lambda grads, state, params=None: (grads, wide(grads))
    return optax.GradientTransformation(wide, keep)


@functools.cache
def bf16_step():
    """bfloat16 parameters, 4 micro-batches, beta = 0 (no reference policy), routing-bias rate 0.01, one step:
    the gradients recorded on their way to AdamW (moments in the parameters' bfloat16). The bfloat16, NaN and
    beta-zero tests read this one compiled step."""
    optimizer = skip_nonfinite(optax.chain(_gradient_recorder(), make_optimizer(OptimizerConfig(lr=1e-3))))
    update = UpdateConfig(micro_batches=4, aux_loss_coef=0.0)
    graphdef, state = init_train_state(init_policy(BF16, 0), optimizer, with_ref=False)
    step = jax.jit(make_grpo_step(graphdef, optimizer, NO_KL, update, BF16, None, bias_rate=0.01))
    batch = synthetic_batch()
    new, metrics = step(state, batch)
    return graphdef, update, state, batch, new, metrics, step


def test_bfloat16_micro_batch_gradients_are_summed_in_float32():
    """bfloat16 parameters, 4 micro-batches: the step hands the optimizer the float32 sum of the 4 micro-batch
    gradients, not a running bfloat16 sum rounded at every add."""
    graphdef, update, state, batch, new, *_ = bf16_step()
    handed = leaves(new.opt_state.inner_state[0])
    loss = grpo_micro_loss(graphdef, NO_KL, update, 4)
    grad = jax.jit(jax.grad(lambda params, mb: loss(params, state.bias, state.ref, mb)[0]))
    micro = micro_split(batch, 4)
    per_micro = [leaves(grad(state.params, jax.tree.map(lambda x, i=i: x[i], micro))) for i in range(4)]
    assert any(g.dtype == jnp.bfloat16 for g in per_micro[0])  # gradients in the parameters' dtypes
    wide = [sum(g[k].astype(np.float32) for g in per_micro) for k in range(len(handed))]
    narrow = [functools.reduce(lambda a, b: (a + b).astype(jnp.bfloat16), (g[k] for g in per_micro))
              for k in range(len(handed))]

    def error(tree):  # relative L2 distance from the float32 sum, over all parameters
        flat = lambda t: np.concatenate([np.asarray(x, np.float32).ravel() for x in t])
        return np.linalg.norm(flat(tree) - flat(wide)) / np.linalg.norm(flat(wide))

    assert error(narrow) > 1e-3  # what summing in bfloat16 costs here (measured 2.0e-3; the step's: 0)
    assert error(handed) < error(narrow) / 20, (error(handed), error(narrow))


def test_bfloat16_parameters_and_adam_state_keep_their_dtypes_through_micro_batches():
    """float32 gradient sums reach AdamW (moments in the parameters' bfloat16): the step returns the state's
    dtypes unchanged, so a donated state is reused and a checkpoint restores into the same arrays."""
    _, _, state, _, new, metrics, _ = bf16_step()
    assert int(metrics["skipped"]) == 0
    dtypes = lambda tree: [x.dtype for x in jax.tree.leaves(tree)]
    adam = state.opt_state.inner_state[1]  # the recorder's state, inner_state[0], is float32
    assert jnp.bfloat16 in dtypes(adam) and jnp.bfloat16 in dtypes(state.params)  # router: float32
    assert dtypes(new.params) == dtypes(state.params) and dtypes(new.opt_state) == dtypes(state.opt_state)
    assert any(not np.array_equal(x, y) for x, y in zip(leaves(new.params), leaves(state.params)))


def test_nan_gradients_leave_state_bitwise_unchanged():
    """A NaN advantage skips the step: parameters, AdamW's moments, the recorded gradients and the routing bias
    keep their bytes (the bfloat16 step's, after one real step: non-trivial optimizer state); the next finite
    batch steps again, the skip counted."""
    *_, state, _, step = bf16_step()
    bad = synthetic_batch(seed=2)
    bad["adv"] = bad["adv"].at[3].set(jnp.nan)
    new, metrics = step(state, bad)
    assert int(metrics["skipped"]) == 1 and int(metrics["consecutive_skips"]) == 1
    for name in ("params", "opt_state", "bias"):
        old_leaves, new_leaves = leaves(getattr(state, name)), leaves(getattr(new, name))
        names = jax.tree_util.tree_leaves_with_path(getattr(state, name))
        for (path, _), x, y in zip(names, old_leaves, new_leaves):
            if "consecutive_skips" in str(path) or "total_skips" in str(path):
                continue
            assert x.tobytes() == y.tobytes(), f"{name}{jax.tree_util.keystr(path)} changed"
    recovered, metrics = step(new, synthetic_batch(seed=3))
    assert int(metrics["skipped"]) == 0 and int(metrics["consecutive_skips"]) == 0
    assert int(metrics["total_skips"]) == 1


# data x fsdp x expert; the tensor axis's gradients are tests/model/test_sharded_forward.py's (both families)
@pytest.mark.parametrize("mesh_shape", [(2, 2, 2, 1)], ids=lambda s: "x".join(map(str, s)))
def test_sharded_step_equals_single_device(mesh_shape):
    batch = synthetic_batch()
    # the single-device step is the routing-bias test's with 2 micro-batches
    state, step = make(UpdateConfig(micro_batches=2, aux_loss_coef=0.01), **ROUTED)
    expected, expected_metrics = step(state, batch)
    mesh = build_mesh(ShardingConfig(*mesh_shape))
    rules = Rules.preset("fsdp_expert_tensor")
    placed = jax.device_put(state, _state_shardings(state, mesh, rules))
    rows = NamedSharding(mesh, P(("data", "fsdp", "expert")))
    with use_mesh(mesh, rules):
        got, metrics = step(placed, jax.device_put(batch, rows))
    for x, y in zip(leaves(got.params) + leaves(got.bias), leaves(expected.params) + leaves(expected.bias)):
        np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
    for key in ("loss", "kl", "aux_loss", "expert_load/cv"):
        assert float(metrics[key]) == pytest.approx(float(expected_metrics[key]), abs=1e-5), key


def _state_shardings(state: TrainState, mesh, rules):
    params = state_shardings(state.params, mesh, rules)
    bias = state_shardings(state.bias, mesh, rules)
    replicated = NamedSharding(mesh, P())
    opt = jax.tree.map(lambda _: replicated, state.opt_state)  # SGD has no per-parameter state
    return TrainState(params, bias, opt, replicated, (params, bias))


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_routing_bias_moves_by_the_sign_rule_on_global_load(micro_batches):
    # the 3-layer preset: one dense layer, then two MoE layers stacked in one segment (bias [2, 8]); with
    # micro-batches, the load is every micro-batch's summed, not the first's. The aux loss is on (its gradient
    # moves the router's weights, never the bias): the steps are the sharding and unrolled-layers tests'.
    state, step = make(UpdateConfig(micro_batches=micro_batches, aux_loss_coef=0.01), **ROUTED)
    batch = synthetic_batch()
    new, metrics = step(state, batch)
    # the load the step saw, recounted from a forward pass of the same policy on the same real tokens
    forward = nnx.jit(lambda policy, b: policy(b["tokens"], b["positions"], b["valid"]).aux.counts_E)
    counts_LE = np.asarray(forward(init_policy(DEEPSEEK, 0), batch))
    assert counts_LE.shape == (2, 8) and counts_LE.sum() == 2 * 2 * int(batch["valid"].sum())  # top-2, 2 layers
    mean_L1 = counts_LE.mean(-1, keepdims=True)
    assert float(metrics["expert_load/max"]) == pytest.approx((counts_LE / mean_L1).max(), rel=1e-6)
    # DeepSeek-V3: under-loaded experts (load < mean) rise by the rate, over-loaded ones fall, exact ones stay
    expected = 0.01 * np.sign(mean_L1 - counts_LE)
    (old_bias,), (new_bias,) = leaves(state.bias), leaves(new.bias)
    np.testing.assert_allclose(new_bias - old_bias, expected, rtol=1e-6, atol=0)
    assert np.any(expected > 0) and np.any(expected < 0)  # both directions occur in this batch


def test_router_losses_enter_the_loss_with_their_coefficients():
    aux = MoEAux(counts_E=jnp.ones((2, 8)), load_balance_loss=jnp.array([1.2, 1.6]), z_loss=jnp.array([4.0, 6.0]),
                 experts_BTK=jnp.zeros((2, 1, 1, 2), jnp.int32))
    update = UpdateConfig(aux_loss_coef=0.01, z_loss_coef=0.001)
    loss, (stats, counts) = add_router_losses(jnp.float32(0.5), {}, aux, update, micro_batches=2)
    # each of the 2 micro-batches adds half of its layer-mean losses: balance 1.4 / 2, z 5.0 / 2
    assert float(stats["aux_loss"]) == pytest.approx(0.7) and float(stats["z_loss"]) == pytest.approx(2.5)
    assert float(loss) == pytest.approx(0.5 + 0.01 * 0.7 + 0.001 * 2.5, rel=1e-6)
    assert np.array_equal(np.asarray(counts), np.ones((2, 8)))


def test_z_loss_coefficient_adds_its_gradient_to_the_step():
    # SGD(1): params move by -grad, so two steps that differ only in z_loss_coef differ by -coef * grad(z),
    # z being the layer mean of the router z-loss of the batch's forward pass
    batch = synthetic_batch()
    state, plain = make(UpdateConfig(aux_loss_coef=0.0, z_loss_coef=0.0))
    _, with_z = make(UpdateConfig(aux_loss_coef=0.0, z_loss_coef=0.1))
    a, _ = plain(state, batch)
    b, metrics = with_z(state, batch)
    graphdef, params, bias = nnx.split(init_policy(CFG, 0), nnx.Param, RoutingBias)

    def z_loss(p):
        out = nnx.merge(graphdef, p, bias)(batch["tokens"], batch["positions"], batch["valid"])
        return jnp.mean(out.aux.z_loss)

    z, grad = jax.jit(jax.value_and_grad(z_loss))(params)
    assert float(metrics["z_loss"]) == pytest.approx(float(z), rel=1e-5)
    moved = 0.0
    for x, y, g in zip(leaves(b.params), leaves(a.params), leaves(grad)):
        np.testing.assert_allclose(x - y, -0.1 * g, atol=2e-6, rtol=0)  # measured <= 1e-7 (float32 rounding)
        moved = max(moved, np.abs(0.1 * g).max())
    assert moved > 1e-3  # the z-loss term is not lost in the tolerance


def primitive_names(jaxpr) -> set[str]:
    """The primitives of a jaxpr and of every jaxpr nested in its equations (scan bodies, pjit, cond, ...)."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(sub, "eqns"):
                    names |= primitive_names(sub)
    return names


@pytest.mark.parametrize("remat", [False, True])
def test_remat_puts_a_checkpoint_in_the_step_only_when_on(remat):
    # the training step's gradient rematerialises each layer only if model.remat asks for it (JAX's
    # `jax.checkpoint` primitive is named "remat2" or "checkpoint" depending on the version)
    cfg = dataclasses.replace(CFG, remat=remat)
    graphdef, state = init_train_state(init_policy(cfg, 0), SGD, with_ref=True)
    step = make_grpo_step(graphdef, SGD, GRPO, UpdateConfig(aux_loss_coef=0.0), cfg, None, bias_rate=0.0)
    names = primitive_names(jax.make_jaxpr(step)(state, synthetic_batch()).jaxpr)
    assert "scan" in names  # the walk reaches the layer scan, where the checkpoint lives
    assert any("remat" in n or "checkpoint" in n for n in names) == remat


def test_beta_zero_needs_no_reference():
    _, _, state, _, new, metrics, _ = bf16_step()  # beta = 0, built with_ref=False
    assert state.ref is None
    assert "kl" not in metrics and int(new.step) == 1


def test_the_reference_forward_in_the_step_is_at_the_sampling_temperature():
    """With no precomputed ref_logp the step runs the reference itself; at grpo.temperature 0.7 (GRPO's) a
    reference equal to the policy has KL 0 only when both forwards divide by it. The four-micro-batch test's
    single-batch step."""
    state, step = make()
    _, metrics = step(state, synthetic_batch())
    assert abs(float(metrics["kl"])) < 1e-6


def test_unrolled_layers_give_the_scans_losses_and_gradients():
    # model.scan_layers: false changes only XLA's fusion (float rounding). With SGD at lr 1 the parameters
    # move by exactly -grad, so equal new parameters are equal gradients. Measured: parameters within
    # 7.5e-9, the metrics equal; the tolerances leave room for another XLA's fusion choices.
    batch = synthetic_batch()
    results = []
    for scan in (True, False):  # scanned: the routing-bias test's step
        cfg = dataclasses.replace(DEEPSEEK, scan_layers=scan)  # a 2-layer MoE segment to unroll
        state, step = make(UpdateConfig(aux_loss_coef=0.01), rate=0.01, cfg=cfg)
        results.append(step(state, batch))
    (scanned, scanned_metrics), (unrolled, unrolled_metrics) = results
    for x, y in zip(leaves(unrolled.params) + leaves(unrolled.bias), leaves(scanned.params) + leaves(scanned.bias)):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    for key in ("loss", "pg_loss", "kl", "entropy", "aux_loss", "grad_norm"):
        assert float(unrolled_metrics[key]) == pytest.approx(float(scanned_metrics[key]), rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_each_targets_log_prob_comes_from_the_logits_one_position_before(temperature):
    """logp[b, t] = log softmax(logits[b, t] / T)[tokens[b, t + 1]], against NumPy on the model's own logits: an
    off-by-one in the alignment passed every test but the learning one (the losses compare like with like)."""
    from r1jax.rl.grpo.step import reference_logprobs
    from r1jax.rl.update import split_policy

    policy = init_policy(CFG, 0)
    graphdef, params, bias = split_policy(policy)
    batch = synthetic_batch()
    got = np.asarray(reference_logprobs(graphdef, (params, bias), batch, temperature))
    logits = np.asarray(policy(batch["tokens"], batch["positions"], batch["valid"]).logits_BTV, np.float64)
    scaled = logits / temperature
    log_softmax = scaled - scaled.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    tokens = np.asarray(batch["tokens"])
    want = np.take_along_axis(log_softmax[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
    mask = np.asarray(batch["mask"])
    assert got.shape == mask.shape and mask.sum() > 10
    np.testing.assert_allclose(got[mask], want[mask], atol=2e-5)


@pytest.mark.parametrize("aggregation", ["constant", "token_mean", "seq_mean_token_mean"])
def test_rollout_batch_targets_and_weights_by_hand(aggregation):
    """A hand-built Rollout (prompt 2 wide, budget 4, max_new_tokens 6 > the completion's 4 columns): the mask
    marks the targets that are completion tokens, sampler log-probs sit under them, and the weights are the
    aggregation's with Dr.GRPO's constant the sampler's budget (B x 6), not the padded width."""
    from r1jax.rl.decoding import Rollout
    from r1jax.rl.grpo.step import rollout_batch
    valid_BT = np.array([[0, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], bool)  # completions of 3 and 1 tokens
    logprobs_BN = np.array([[-0.1, -0.2, -0.3, 0.0], [-0.4, 0.0, 0.0, 0.0]], np.float32)
    rollout = Rollout(tokens_BT=jnp.arange(12, dtype=jnp.int32).reshape(2, 6), valid_BT=jnp.asarray(valid_BT),
                      positions_BT=jnp.zeros((2, 6), jnp.int32), logprobs_BN=jnp.asarray(logprobs_BN),
                      lengths_B=jnp.array([3, 1], jnp.int32), experts_LBTK=jnp.zeros((1, 2, 6, 2), jnp.int32),
                      steps=jnp.int32(3))
    batch = rollout_batch(rollout, np.array([0.5, -0.5], np.float32), GRPOConfig(loss_aggregation=aggregation), 6)
    mask = np.array([[0, 1, 1, 1, 0], [0, 1, 0, 0, 0]], bool)  # target t is token t + 1
    np.testing.assert_array_equal(np.asarray(batch["mask"]), mask)
    np.testing.assert_allclose(np.asarray(batch["sampler_logp"])[mask], [-0.1, -0.2, -0.3, -0.4])
    scale = {"constant": np.full((2, 1), 2 * 6.0), "token_mean": np.full((2, 1), 4.0),
             "seq_mean_token_mean": np.array([[2 * 3.0], [2 * 1.0]])}[aggregation]
    np.testing.assert_allclose(np.asarray(batch["weight"]), mask / scale, rtol=1e-6)


def test_expert_load_is_each_layers_counts_over_its_mean_by_hand():
    """Layer 0 routes 1 and 3 tokens (loads 0.5, 1.5: std 0.5), layer 1 two and two (std 0): cv is the layers'
    mean std, 0.25 (the std over all layers' loads together is 0.354); no MoE layer, no figures."""
    metrics = expert_load_metrics(jnp.array([[1.0, 3.0], [2.0, 2.0]]))
    assert {k: float(v) for k, v in metrics.items()} == pytest.approx(
        {"expert_load/min": 0.5, "expert_load/max": 1.5, "expert_load/cv": 0.25})
    assert float(expert_load_metrics(jnp.array([[0.0, 1.0]]))["expert_load/max"]) == 2.0  # a mean below 1 token
    assert expert_load_metrics(jnp.zeros((0, 4))) == {}


def test_each_moe_segments_bias_moves_by_its_own_layers_load():
    """Segments dense, moe x2, dense, moe x1: the second MoE segment's one layer is counts row 2 (the MoE layers'
    third), not row 1 or row 0; each row's sign rule by hand (+rate below the layer's mean load, -rate above)."""
    from r1jax.rl.update import _updated_bias

    segments = (("dense", 1), ("moe", 2), ("dense", 1), ("moe", 1))
    bias = {"segments": {1: {"b": jnp.zeros((2, 3))}, 3: {"b": jnp.zeros((1, 3))}}}
    counts_LE = jnp.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 4.0, 0.0]])
    new = _updated_bias(segments, bias, counts_LE, 0.5)
    assert new["segments"][1]["b"].tolist() == [[0.5, 0.0, -0.5], [-0.5, 0.0, 0.5]]
    assert new["segments"][3]["b"].tolist() == [[0.0, -0.5, 0.5]]
