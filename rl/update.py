"""The one jitted update step shared by every stage (SFT, GRPO): micro-batches, optimizer, MoE bias.

`make_update_step(graphdef, optimizer, micro_loss, cfg)` returns `step(state, batch) -> (state, metrics)`:
- the batch (a dict of arrays, rows on axis 0) is split into `micro_batches` strided micro-batches
  (micro-batch i holds rows i, i + M, ...: with rows sharded contiguously over devices every micro-batch
  still spans all devices); gradients, loss stats and expert counts are summed over them in a `lax.scan`;
  losses are normalised by global-batch quantities inside `micro_loss`, so the sum equals the full batch
  (except the MoE router losses: the balance loss f . P and the z-loss are each micro-batch's, averaged, as
  MaxText has them; f . P is not linear, so they and their gradients move a little with M);
  with M > 1 that sum is float32 whatever the parameters' dtype (bfloat16 parameters: each micro-batch
  gradient is widened, not the running sum rounded to bfloat16 M times), laid out like the parameters; with
  M = 1 the gradients are autodiff's, in the parameters' dtype;
- optax update (AdamW, clipping, non-finite skipping: rl.grpo.optimizer); the optimizer state keeps its
  dtypes (optax's Adam would keep a float32 first moment of float32 gradients beside bfloat16 parameters)
  and `optax.apply_updates` the parameters' (bfloat16 parameters stay bfloat16);
- DeepSeek's aux-loss-free balancing: the routing bias moves by the global expert load of this step,
  outside the optimizer (unchanged on a skipped step, like the parameters).

`micro_loss(params, bias, ref, micro_batch) -> (loss, (stats, counts_LE))` where stats follow
rl.grpo.stats (additive, finalized once).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from r1jax.model.config import ModelConfig
from r1jax.errors import UserError
from r1jax.model.layers import RoutingBias
from r1jax.model.routing import update_routing_bias
from r1jax.rl.grpo.optimizer import grad_norms
from r1jax.rl.grpo.stats import combine_stats, finalize_stats
from r1jax.sharding.context import constrain
from r1jax.sharding.params import path_keys


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    micro_batches: int = 1  # gradient accumulation: the batch is split into this many micro-batches
    aux_loss_coef: float = 0.001  # Switch load-balancing loss weight (HF Qwen3-MoE router_aux_loss_coef)
    z_loss_coef: float = 0.0  # router z-loss weight (ST-MoE uses 1e-3)
    # the training forward reuses the experts the sampler chose (R3); so does the reference's, so the KL is to
    # pi_ref routed as the sampler routed, not by its own router (rl.grpo.step.reference_logprobs)
    routing_replay: bool = False

    def __post_init__(self) -> None:
        if self.micro_batches < 1:
            raise UserError(f"update.micro_batches={self.micro_batches}: must be >= 1")
        for name in ("aux_loss_coef", "z_loss_coef"):
            if not 0 <= getattr(self, name) <= 100:  # 1e308 made the loss inf
                raise UserError(f"update.{name}={getattr(self, name)}: must be in [0, 100]")


@struct.dataclass
class TrainState:
    params: Any  # nnx.State of the trainable parameters
    bias: Any  # nnx.State of the routing biases (not trained by the optimizer)
    opt_state: Any
    step: jax.Array
    ref: Any = None  # (params, bias) of the reference policy, or None when no KL term is used


def split_policy(policy) -> tuple[Any, Any, Any]:
    """(graphdef, params, bias) of a Policy."""
    return nnx.split(policy, nnx.Param, RoutingBias)


def init_train_state(policy, optimizer: optax.GradientTransformation, with_ref: bool) -> tuple[Any, TrainState]:
    graphdef, params, bias = split_policy(policy)
    ref = (jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, bias)) if with_ref else None
    return graphdef, TrainState(params, bias, optimizer.init(params), jnp.zeros([], jnp.int32), ref)


def reference_due(stage_step: int, every: int) -> bool:
    """Whether the reference resets after the update of the stage's step `stage_step` (0-based): after each
    `every`-th step of the stage (grpo.ref_reset_every; R1: 400), never for 0."""
    return every > 0 and (stage_step + 1) % every == 0


def reset_reference(state: TrainState) -> TrainState:
    """The reference policy becomes a copy of the current one (R1: every 400 steps)."""
    return state.replace(ref=(jax.tree.map(jnp.copy, state.params), jax.tree.map(jnp.copy, state.bias)))


def micro_split(batch: dict, micro: int) -> dict:
    """[B, ...] -> [M, B / M, ...] with micro-batch i = rows i, i + M, i + 2M, ..."""
    def split(x):
        rows = x.shape[0]
        if rows % micro:
            raise UserError(f"batch of {rows} rows does not split into update.micro_batches={micro}")
        return jnp.swapaxes(x.reshape(rows // micro, micro, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def add_router_losses(loss, stats, aux, update: UpdateConfig, micro_batches: int):
    """Adds the weighted balance and z losses (each micro-batch contributes 1 / M of its own: not the full
    batch's balance loss, which is not linear in the micro-batches; module docstring)."""
    if aux.load_balance_loss.shape[0]:
        balance = jnp.mean(aux.load_balance_loss) / micro_batches
        z = jnp.mean(aux.z_loss) / micro_batches
        loss = loss + update.aux_loss_coef * balance + update.z_loss_coef * z
        stats = {**stats, "aux_loss": jax.lax.stop_gradient(balance), "z_loss": jax.lax.stop_gradient(z)}
    return loss, (stats, jax.lax.stop_gradient(aux.counts_E))


def expert_load_metrics(counts_LE: jax.Array) -> dict[str, jax.Array]:
    """min / max / coefficient of variation of the per-expert load, as fractions of the mean load."""
    if counts_LE.shape[0] == 0:
        return {}
    mean_L1 = jnp.maximum(jnp.mean(counts_LE, axis=-1, keepdims=True), 1e-9)
    load_LE = counts_LE / mean_L1
    return {"expert_load/min": jnp.min(load_LE), "expert_load/max": jnp.max(load_LE),
            "expert_load/cv": jnp.mean(jnp.std(load_LE, axis=-1))}


def make_update_step(graphdef, optimizer: optax.GradientTransformation, micro_loss: Callable,
                     cfg: UpdateConfig, model: ModelConfig, bias_rate: float | None,
                     grad_clip_norm: float | None) -> Callable:
    """`bias_rate` None: the model's `routing_bias_update_rate`; 0 turns the bias update off."""
    segments = model.layer_segments()
    bias_rate = model.routing_bias_update_rate if bias_rate is None else bias_rate

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

        def micro_step(grads_sum, micro_batch):
            (_, (stats, counts)), grads = grad_fn(state.params, state.bias, state.ref, micro_batch)
            return _accumulate(grads_sum, grads), (stats, counts)

        if cfg.micro_batches == 1:
            (_, (stats, counts_LE)), grads = grad_fn(state.params, state.bias, state.ref, batch)
        else:  # one scan over the micro-batches: the forward and backward are traced and compiled once
            zeros = _accumulate(_grad_zeros(state.params))
            grads, (stats_M, counts_MLE) = jax.lax.scan(micro_step, zeros, micro_split(batch, cfg.micro_batches))
            per_micro = [jax.tree.map(lambda x, i=i: x[i], (stats_M, counts_MLE)) for i in range(cfg.micro_batches)]
            stats, counts_LE = per_micro[0]
            for more_stats, more_counts in per_micro[1:]:  # in micro-batch order, as they were accumulated
                stats, counts_LE = combine_stats(stats, more_stats), counts_LE + more_counts
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        # a donated, checkpointed state keeps its avals: float32 gradients must not widen bfloat16 moments
        opt_state = jax.tree.map(lambda new, old: new.astype(old.dtype), opt_state, state.opt_state)
        params = optax.apply_updates(state.params, updates)  # cast back to each parameter's dtype
        applied = opt_state.consecutive_skips == 0
        bias = state.bias
        if bias_rate and jax.tree.leaves(bias):
            bias = jax.tree.map(lambda old, new: jnp.where(applied, new, old), bias,
                                _updated_bias(segments, bias, counts_LE, bias_rate))
        raw_norm, clipped_norm = grad_norms(grads, grad_clip_norm)
        metrics = {**finalize_stats(stats), **expert_load_metrics(counts_LE),
                   "grad_norm": raw_norm, "grad_norm_clipped": clipped_norm,
                   "skipped": (~applied).astype(jnp.int32), "consecutive_skips": opt_state.consecutive_skips,
                   "total_skips": opt_state.total_skips}
        new_state = state.replace(params=params, bias=bias, opt_state=opt_state, step=state.step + 1)
        return new_state, metrics

    return step


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _grad_zeros(params):
    """Zeros to sum micro-batch gradients in: float32, or the parameter's dtype where that is wider. A bfloat16
    running sum rounds every partial sum to 8 significant bits (relative L2 error ~3e-3 at M = 8)."""
    return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), params)


def _accumulate(grads_sum, grads=None):
    """grads_sum + grads (widened to the sum's dtype; `grads` None: the sum alone), each sum constrained to
    its parameter's logical axes, so the scan's carry is sharded like the parameters by rule, not left to
    sharding propagation (which chose the same layout on the meshes tried, at the same memory)."""
    def one(acc, grad=None):
        value = acc.get_value() if grad is None else acc.get_value() + grad.get_value().astype(acc.dtype)
        axes = acc.get_metadata().get("axes")
        return acc.replace(value if axes is None else constrain(value, axes))

    trees = (grads_sum,) if grads is None else (grads_sum, grads)
    return jax.tree.map(one, *trees, is_leaf=_is_variable)


def _updated_bias(segments, bias, counts_LE, rate):
    """Apply the sign rule to every MoE segment's stacked bias ([L_seg, E]), layers in model order.

    Pure: works on the bias tree by path (segments.<i>....), never mutating module state under trace."""
    offsets, start = {}, 0
    for index, (kind, count) in enumerate(segments):
        if kind == "moe":
            offsets[index] = (start, count)
            start += count

    def one(path, leaf):
        first, count = offsets[int(path_keys(path)[1])]
        return update_routing_bias(leaf, counts_LE[first:first + count], rate)

    return jax.tree_util.tree_map_with_path(one, bias)
