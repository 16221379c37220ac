"""The optimizer: bitwise-unchanged skips of non-finite steps, schedules, norms, config validation."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax.errors import UserError
from r1jax.rl.grpo import OptimizerConfig, grad_norms, lr_schedule, make_optimizer
from r1jax.rl.grpo.config import SCHEDULES
from r1jax.rl.grpo.optimizer import DECAYS, applied_updates, skip_nonfinite


def make_params():
    return {
        "w": jnp.array([[1.0, -0.0], [0.0, -2.5]], jnp.float32),  # signed zeros: 0.0 + -0.0 would flip one
        "b": jnp.array([0.5, -0.0, 3.0], jnp.bfloat16),
    }


def grads_like(params, value):
    return jax.tree.map(lambda p: jnp.full_like(p, value), params)


def bitwise_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes()
        for x, y in zip(la, lb))


def test_non_finite_steps_change_nothing_but_the_counters():
    opt = make_optimizer(OptimizerConfig(lr=1e-2))

    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = make_params()
    state = opt.init(params)
    # (bad entry or None, expected (consecutive, total) skips); the first skip sees the signed zeros intact.
    plan = [(np.nan, (1, 1)), (None, (0, 1)), (np.inf, (1, 2)), (-np.inf, (2, 3)), (None, (0, 3))]
    for bad, counts in plan:
        grads = grads_like(params, 0.1)
        if bad is not None:
            grads["w"] = grads["w"].at[1, 0].set(bad)
        new_params, new_state = step(params, state, grads)
        if bad is None:
            assert not np.array_equal(new_params["w"], params["w"])
            assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in jax.tree.leaves(new_state))
        else:
            assert bitwise_equal(new_params, params)
            assert bitwise_equal(new_state.inner_state, state.inner_state)
        assert (int(new_state.consecutive_skips), int(new_state.total_skips)) == counts
        params, state = new_params, new_state


def test_adam_count_and_schedule_do_not_advance_on_skips():
    opt = make_optimizer(OptimizerConfig(lr=1.0, warmup_steps=4))
    params = make_params()
    state = opt.init(params)
    _, state = opt.update(grads_like(params, np.nan), state, params)
    counts = [x for x in jax.tree.leaves(state.inner_state) if np.asarray(x).dtype == np.int32]
    assert counts and all(int(c) == 0 for c in counts)
    assert int(applied_updates(state)) == 0  # what the trainer logs the rate of
    _, state = opt.update(grads_like(params, 0.1), state, params)
    _, state = opt.update(grads_like(params, 0.1), state, params)
    assert int(applied_updates(state)) == 2 and int(state.total_skips) == 1


def test_first_update_uses_the_scheduled_lr():
    cfg = OptimizerConfig(lr=0.1, warmup_steps=4, weight_decay=0.0, grad_clip_norm=None)
    opt = make_optimizer(cfg)
    params = {"w": jnp.ones(3)}
    updates, _ = opt.update({"w": jnp.array([1.0, -2.0, 0.5])}, opt.init(params), params)
    # Adam's first step is -lr * g / (|g| + eps) = -lr * sign(g).
    np.testing.assert_allclose(updates["w"], -0.1 / 4 * np.array([1.0, -1.0, 1.0]), rtol=1e-5)


def test_warmup_cosine_schedule_matches_formula():
    cfg = OptimizerConfig(lr=3e-6, schedule="warmup_cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    schedule = lr_schedule(cfg)

    def expected(step):
        if step < 10:
            return 3e-6 * (step + 1) / 10
        progress = min((step - 10) / 100, 1.0)
        return 3e-6 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    for step in [0, 4, 9, 10, 35, 60, 109, 110, 500]:
        np.testing.assert_allclose(schedule(step), expected(step), rtol=1e-5, err_msg=str(step))
    np.testing.assert_allclose(schedule(60), 3e-6 * 0.55, rtol=1e-5)  # half-way: mean of peak and floor


def test_constant_schedule_with_and_without_warmup():
    np.testing.assert_allclose([lr_schedule(OptimizerConfig(lr=2.0))(s) for s in (0, 7)], [2.0, 2.0])
    warm = lr_schedule(OptimizerConfig(lr=2.0, warmup_steps=4))
    np.testing.assert_allclose([warm(s) for s in (0, 1, 3, 100)], [0.5, 1.0, 2.0, 2.0])


def test_schedule_names_match_the_registry():
    assert set(SCHEDULES) == set(DECAYS)


def test_grad_norms_raw_and_clipped():
    grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]], jnp.bfloat16)}
    raw, clipped = grad_norms(grads, 1.0)
    assert float(raw) == pytest.approx(5.0) and float(clipped) == pytest.approx(1.0)
    after, _ = optax.clip_by_global_norm(1.0).update(grads, None)
    assert float(grad_norms(after, None)[0]) == pytest.approx(float(clipped), rel=1e-2)  # bf16 leaf
    assert tuple(map(float, grad_norms(grads, 10.0))) == pytest.approx((5.0, 5.0))
    assert np.isnan(grad_norms({"a": jnp.array([np.nan])}, 1.0)[1])


def test_grad_norm_is_bitwise_the_float32_sum_of_squares():
    """optax.tree.norm replaced a hand sum: the logged grad_norm must keep its bits (the default run's numbers)."""
    def hand_sum(grads):
        sq = [jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)]
        return jnp.sqrt(sum(sq, jnp.float32(0.0)))

    rng = np.random.default_rng(0)
    for scale in (1e-20, 1e-3, 1.0, 7e5, 1e19):
        grads = {"a": jnp.asarray(rng.normal(size=(37, 5)) * scale, jnp.float32),
                 "b": {"c": jnp.asarray(rng.normal(size=(3, 4, 129)) * scale, jnp.bfloat16),
                       "d": jnp.asarray(rng.normal() * scale, jnp.float32)}}
        for fn, ref in ((grad_norms, hand_sum), (jax.jit(grad_norms, static_argnums=1), jax.jit(hand_sum))):
            raw, clipped = fn(grads, 1.0)
            assert raw.dtype == jnp.float32 and raw.tobytes() == ref(grads).tobytes(), scale
            assert clipped.tobytes() == jnp.minimum(ref(grads), 1.0).tobytes()


@pytest.mark.parametrize("field,value", [
    ("lr", -1e-6), ("schedule", "linear"), ("warmup_steps", -1), ("min_lr_ratio", 1.5), ("b2", 1.0),
    ("weight_decay", -0.1), ("grad_clip_norm", 0.0), ("max_consecutive_skips", 0), ("state_dtype", "float16"),
])
def test_bad_optimizer_config_names_the_field(field, value):
    with pytest.raises(UserError, match=rf"optimizer\.{field}\b"):
        OptimizerConfig(**{field: value})


def test_warmup_cosine_total_steps_is_null_or_after_the_warmup():
    assert OptimizerConfig(schedule="warmup_cosine", warmup_steps=10).total_steps is None  # each stage's steps
    with pytest.raises(UserError, match=r"optimizer\.total_steps"):
        OptimizerConfig(schedule="warmup_cosine", warmup_steps=10, total_steps=10)


def test_a_constant_schedule_refuses_an_end_it_would_ignore():
    with pytest.raises(UserError, match=r"optimizer\.total_steps = 100: expected null with schedule=constant"):
        OptimizerConfig(schedule="constant", total_steps=100)
    assert OptimizerConfig(schedule="constant").total_steps is None


def test_optimizer_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        OptimizerConfig().lr = 1.0


def adam_moments(state):
    """(mu, nu) of make_optimizer's state: skip wrapper -> chain(clip, adamw) -> adamw's chain -> Adam."""
    adam = state.inner_state[1][0]
    return adam.mu, adam.nu


@pytest.mark.parametrize("param_dtype,state_dtype,moments", [
    ("bfloat16", "float32", "float32"), ("float32", "bfloat16", "bfloat16"),
    ("bfloat16", None, "bfloat16"), ("float32", None, "float32"),  # unset: optax's rule, the params' dtype
])
def test_adam_moments_are_kept_in_the_state_dtype(param_dtype, state_dtype, moments):
    cfg = OptimizerConfig(lr=1e-3, b1=0.9, b2=0.95, state_dtype=state_dtype)
    opt = make_optimizer(cfg)
    params = {"w": jnp.asarray([[0.5, -1.25], [2.0, 0.75]], param_dtype)}
    grads = {"w": jnp.asarray([[0.3, -0.7], [0.1, 0.05]], param_dtype)}
    state = opt.init(params)
    for _ in range(2):  # the dtype survives updates (Adam's arithmetic promotes mixed dtypes)
        updates, state = jax.jit(opt.update)(grads, state, params)
        for tree in adam_moments(state):
            assert tree["w"].dtype == jnp.dtype(moments)
    params = optax.apply_updates(params, updates)
    assert params["w"].dtype == jnp.dtype(param_dtype)
    mu, nu = adam_moments(opt.update(grads, opt.init(params), params)[1])  # one step from zero moments
    # computed in the wider of the two dtypes (unset: optax's own bfloat16 arithmetic), then stored
    g = grads["w"].astype(jnp.promote_types(param_dtype, state_dtype or param_dtype))
    np.testing.assert_array_equal(mu["w"], ((1 - 0.9) * g).astype(moments))
    np.testing.assert_array_equal(nu["w"], ((1 - 0.95) * (g * g)).astype(moments))


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_decay_norms_false_spares_every_norm_scale_and_decays_every_matrix(family):
    from flax import nnx
    from r1jax.model.factory import init_policy
    from tests.model.tiny import FAMILIES

    _, params, _ = nnx.split(init_policy(FAMILIES[family]), nnx.Param, ...)
    lr, decay = 0.5, 0.1

    @jax.jit  # both optimizers' first steps in one program (eagerly, each of their ops on each leaf compiled)
    def first_steps(params):
        zero = jax.tree.map(jnp.zeros_like, params)  # Adam's step is 0: what moves a weight is decay alone
        moved = {}
        for decay_norms in (True, False):
            opt = make_optimizer(OptimizerConfig(lr=lr, weight_decay=decay, decay_norms=decay_norms))
            updates, _ = opt.update(zero, opt.init(params), params)
            moved[decay_norms] = optax.apply_updates(params, updates)
        return moved

    moved = {k: jax.tree_util.tree_leaves_with_path(v) for k, v in first_steps(params).items()}
    before = jax.tree_util.tree_leaves_with_path(params)
    norms = 0
    for (path, p), (_, all_decayed), (_, masked) in zip(before, moved[True], moved[False]):
        p, all_decayed, masked = (np.asarray(x, np.float32) for x in (p, all_decayed, masked))
        np.testing.assert_allclose(all_decayed, p * (1 - lr * decay), rtol=1e-6, atol=1e-7)  # optax's rule
        if "norm" in jax.tree_util.keystr(path):  # named so by the model (stacked layers' ones are 2-D)
            norms += 1
            np.testing.assert_array_equal(masked, p)
        else:
            np.testing.assert_allclose(masked, p * (1 - lr * decay), rtol=1e-6, atol=1e-7)
    assert norms >= 3  # a segment's two (input, post-attention) and the final one


def test_decay_norms_must_be_a_bool():
    with pytest.raises(UserError, match=r"optimizer\.decay_norms"):
        OptimizerConfig(decay_norms="no")


def test_a_step_is_skipped_when_either_the_gradients_or_the_updates_are_not_finite():
    """Finite gradients that the inner optimizer turns into an infinite update, and a NaN gradient that it
    zeroes: both steps are skipped (updates -0.0, Adam's state kept, counters advanced)."""
    params = {"w": jnp.array([1.0, -2.0])}
    cases = [(optax.chain(optax.scale_by_adam(), optax.scale(np.inf)), jnp.array([0.1, 0.2])),
             (optax.chain(optax.scale_by_adam(), optax.set_to_zero()), jnp.array([np.nan, 0.2]))]
    for inner, grad in cases:
        opt = skip_nonfinite(inner)
        state = opt.init(params)
        updates, new_state = opt.update({"w": grad}, state, params)
        assert bitwise_equal(updates, {"w": jnp.array([-0.0, -0.0])})
        assert bitwise_equal(new_state.inner_state, state.inner_state)
        assert (int(new_state.consecutive_skips), int(new_state.total_skips)) == (1, 1)


def test_applied_updates_refuses_a_state_with_two_schedules():
    params = {"w": jnp.ones(2)}
    two = optax.chain(optax.adamw(lr_schedule(OptimizerConfig())), optax.adamw(lr_schedule(OptimizerConfig())))
    with pytest.raises(ValueError, match="found 2"):
        applied_updates(two.init(params))
