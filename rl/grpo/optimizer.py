"""AdamW with a learning-rate schedule, global-norm clipping, and skipping of non-finite updates.

`make_optimizer(cfg)` is `skip_nonfinite(chain(clip_by_global_norm, adamw(schedule)))`. A step whose
gradients or updates hold a NaN or inf is skipped: the returned updates are all -0.0, so
`optax.apply_updates` leaves params bitwise unchanged (x + (-0.0) == x for every float x, -0.0 included,
whereas x + 0.0 turns -0.0 into +0.0), the inner optimizer state is kept bitwise, and the skip counters in
`SkipState` advance. The schedule's step count lives in the inner state, so skipped steps do not advance
the learning-rate schedule.

Kept instead of optax's own, which behave differently:
- `skip_nonfinite`, not `optax.apply_if_finite`: that one checks only the gradients, returns +0.0 updates
  (turning -0.0 params into +0.0), and applies non-finite updates after `max_consecutive_errors`; here the
  trainer halts instead (`optimizer.max_consecutive_skips`, read from `consecutive_skips`).
- `lr_schedule`, not `optax.warmup_cosine_decay_schedule`: that one is `init_value` at step 0 and peaks at
  `warmup_steps` (here the first update already moves: lr * (step + 1) / warmup_steps), and its float32
  cosine rounds differently (about a quarter of the steps differ in the last bit).
`optimizer.state_dtype` keeps Adam's moments in that dtype whatever the parameters' (`state_in`): float32
moments beside bfloat16 parameters, or bfloat16 moments beside float32 ones; unset, optax's own rule holds
(moments in the parameters' dtype) and nothing is wrapped.
`grad_norms` is `optax.tree.norm` of the float32 gradients (the same compiled program as the hand sum it
replaced); gradient clipping is `optax.clip_by_global_norm`.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from r1jax.model.layers import matrices
from r1jax.rl.grpo.config import OptimizerConfig


def _cosine_factor(cfg: OptimizerConfig, step: jax.Array) -> jax.Array:
    # Cosine decay (Loshchilov & Hutter 2017, SGDR) from 1 at warmup_steps to min_lr_ratio at total_steps.
    # total_steps None: the trainer sets it to each stage's steps; elsewhere (compile, bench) only shapes matter
    total = cfg.total_steps if cfg.total_steps is not None else cfg.warmup_steps + 1
    progress = jnp.clip((step - cfg.warmup_steps) / (total - cfg.warmup_steps), 0.0, 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


DECAYS: dict[str, Callable[[OptimizerConfig, jax.Array], jax.Array]] = {
    "constant": lambda cfg, step: jnp.ones_like(step),
    "warmup_cosine": _cosine_factor,
}


def lr_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """lr(step) = lr * min(1, (step + 1) / warmup_steps) * decay(step); the first update already moves."""

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)  # float32 step: the ratios below are fractional
        warmup = jnp.minimum(1.0, (step + 1.0) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        return cfg.lr * warmup * DECAYS[cfg.schedule](cfg, step)

    return schedule


class SkipState(NamedTuple):
    inner_state: Any
    consecutive_skips: jax.Array  # int32, reset to 0 by every applied step
    total_skips: jax.Array  # int32


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def skip_nonfinite(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Wraps `inner` so that a step with non-finite grads or updates changes nothing but the skip counters."""

    def init_fn(params):  # two distinct zeros: a donated state must not hold one buffer twice
        return SkipState(inner.init(params), jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32))

    def update_fn(grads, state: SkipState, params=None):
        updates, inner_state = inner.update(grads, state.inner_state, params)
        ok = _all_finite(grads) & _all_finite(updates)
        inner_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), inner_state, state.inner_state)
        updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.full_like(u, -0.0)), updates)
        skipped = (~ok).astype(jnp.int32)
        consecutive = jnp.where(ok, 0, state.consecutive_skips + 1)
        return updates, SkipState(inner_state, consecutive, state.total_skips + skipped)

    return optax.GradientTransformation(init_fn, update_fn)


def state_in(inner: optax.GradientTransformation, dtype: str) -> optax.GradientTransformation:
    """`inner` with its floating-point state in `dtype`: initialised from the parameters cast to `dtype`
    (optax's Adam makes mu and nu like the parameters); gradients narrower than `dtype` are widened first, so
    float32 moments of bfloat16 parameters are computed in float32; every update's new state is cast to the
    dtypes of the old (float32 arithmetic on bfloat16 moments is stored back in bfloat16). Integer state
    such as step counts is untouched."""

    def floating(fn):
        return lambda x: fn(x) if jnp.issubdtype(x.dtype, jnp.floating) else x

    def init_fn(params):
        return inner.init(jax.tree.map(floating(lambda p: p.astype(dtype)), params))

    def update_fn(updates, state, params=None):
        updates = jax.tree.map(floating(lambda g: g.astype(jnp.promote_types(g.dtype, dtype))), updates)
        updates, new_state = inner.update(updates, state, params)
        return updates, jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, state)

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) on clipped gradients, skipping non-finite steps; with
    `cfg.decay_norms` false, 1-D parameters (norm scales) are not decayed."""
    mask = None if cfg.decay_norms else matrices  # model.layers: what a parameter's axes say
    adamw = optax.adamw(lr_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                        mask=mask)
    if cfg.state_dtype is not None:
        adamw = state_in(adamw, cfg.state_dtype)
    clip = [] if cfg.grad_clip_norm is None else [optax.clip_by_global_norm(cfg.grad_clip_norm)]
    return skip_nonfinite(optax.chain(*clip, adamw))


def applied_updates(opt_state) -> jax.Array:
    """How many updates `make_optimizer`'s state has applied: its schedule's count (skipped steps excluded)."""
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
    counts = [x.count for x in jax.tree.leaves(opt_state, is_leaf=is_schedule) if is_schedule(x)]
    if len(counts) != 1:
        raise ValueError(f"expected one learning-rate schedule in the optimizer state, found {len(counts)}")
    return counts[0]


def grad_norms(grads, max_norm: float | None) -> tuple[jax.Array, jax.Array]:
    """(raw global L2 norm, norm after clip_by_global_norm(max_norm)); NaN/inf propagate to both."""
    raw = optax.tree.norm(jax.tree.map(lambda g: g.astype(jnp.float32), grads))  # float32 accumulation
    return raw, raw if max_norm is None else jnp.minimum(raw, max_norm)
