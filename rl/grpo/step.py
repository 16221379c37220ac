"""The GRPO update step: the per-micro-batch loss on the policy, and rollout -> training batch.

Training batch (a dict; rows on axis 0, targets aligned with `tokens[:, 1:]`, so per-token arrays are
[B, T - 1]): `tokens`, `positions`, `valid` [B, T]; `mask` (completion targets), `weight` (loss weights from
the GLOBAL batch), `sampler_logp` [B, T - 1]; `adv` [B]; optionally `old_logp` [B, T - 1] (mu > 1: log-probs
recomputed before the first update), `ref_logp` [B, T - 1] (reference log-probs computed ahead, see
`reference_logprobs`) and `replay` [B, L, T, K] (routing replay). A packed batch (`rl.grpo.packing.pack_batch`)
has its forward inputs (`tokens`, `positions`, `valid`, `replay`) in packed rows with `segments`, `target_mask`
and `unpack`; log-probs come back padded, so the loss code is the same for both layouts.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from r1jax.model.config import ModelConfig
from r1jax.rl.grpo.aggregation import global_normalisers, token_weights_BT
from r1jax.rl.grpo.config import GRPOConfig
from r1jax.rl.grpo.logprobs import token_logp_and_entropy
from r1jax.rl.grpo.losses import grpo_loss
from r1jax.rl.grpo.packing import unpack_targets
from r1jax.rl.update import UpdateConfig, add_router_losses, make_update_step, micro_split


def rollout_batch(rollout, adv_B, cfg: GRPOConfig, max_new_tokens: int, with_replay: bool = False) -> dict:
    """The training batch for a sampler Rollout (rl.sampler) and one advantage per row: one jitted program (op by
    op, its dozen scatters, sums and divisions were as many programs, each traced, compiled and dispatched)."""
    return _rollout_batch(rollout, adv_B, cfg.loss_aggregation, max_new_tokens, with_replay)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _rollout_batch(rollout, adv_B, aggregation: str, max_new_tokens: int, with_replay: bool) -> dict:
    tokens_BT = rollout.tokens_BT
    p = rollout.prompt_length
    mask_BT = jnp.zeros(tokens_BT[:, 1:].shape, bool).at[:, p - 1:].set(rollout.completion_mask_BN)
    sampler_logp_BT = jnp.zeros(mask_BT.shape, jnp.float32).at[:, p - 1:].set(rollout.logprobs_BN)
    norms = global_normalisers(mask_BT, max_new_tokens)
    batch = {
        "tokens": tokens_BT, "positions": rollout.positions_BT, "valid": rollout.valid_BT, "mask": mask_BT,
        "weight": token_weights_BT(mask_BT, aggregation, norms), "sampler_logp": sampler_logp_BT,
        "adv": jnp.asarray(adv_B, jnp.float32),
    }
    if with_replay:
        batch["replay"] = jnp.moveaxis(rollout.experts_LBTK, 1, 0)
    return batch


def _policy_logp(graphdef, params, bias, mb: dict, temperature: float, replay, with_entropy: bool):
    policy = nnx.merge(graphdef, params, bias)
    packed = "segments" in mb
    out = policy(mb["tokens"], mb["positions"], mb["valid"], replay, mb["segments"] if packed else None)
    targets = mb["target_mask"] if packed else mb["mask"]
    logp, entropy = token_logp_and_entropy(out.logits_BTV[:, :-1], mb["tokens"][:, 1:], targets, temperature,
                                           with_entropy=with_entropy)
    if packed:  # back to the padded layout the loss reads
        logp = unpack_targets(logp, mb["unpack"], mb["mask"])
        entropy = None if entropy is None else unpack_targets(entropy, mb["unpack"], mb["mask"])
    return logp, entropy, out.aux


def grpo_micro_loss(graphdef, cfg: GRPOConfig, update: UpdateConfig, micro_batches: int) -> Callable:
    def loss_fn(params, bias, ref, mb):
        replay = jnp.moveaxis(mb["replay"], 0, 1) if "replay" in mb else None
        logp, entropy, aux = _policy_logp(graphdef, params, bias, mb, cfg.temperature, replay, True)
        ref_logp = mb.get("ref_logp")  # precomputed by `reference_logprobs` while rewards are scored
        if cfg.kl_coef > 0 and ref_logp is None:
            ref_logp, _, _ = _policy_logp(graphdef, *jax.lax.stop_gradient(ref), mb, cfg.temperature, replay,
                                          False)
        loss, stats = grpo_loss(logp, mb["adv"], mb["mask"], mb["weight"], cfg, old_logp_BT=mb.get("old_logp"),
                                ref_logp_BT=ref_logp, sampler_logp_BT=mb["sampler_logp"], entropy_BT=entropy)
        return add_router_losses(loss, stats, aux, update, micro_batches)
    return loss_fn


def reference_logprobs(graphdef, ref, batch: dict, temperature: float, micro_batches: int = 1) -> jax.Array:
    """log-probs of the batch's targets under the reference policy ([B, T - 1]); jit it and dispatch it
    before waiting on the reward pool, so the reference forward overlaps reward scoring. Also the old
    log-probs (mu > 1) and the behaviour log-probs of a batch sampled ahead. Runs over the update's
    `micro_batches` strided micro-batches one after another, as the update does: a packed batch's `unpack`
    indexes within its micro-batch (`rl.grpo.packing`), and a forward holds one micro-batch's logits at a
    time.

    With routing replay (`update.routing_replay`: the batch holds `replay`) this forward reuses the experts
    the sampler chose, as the policy's does (and so does `grpo_micro_loss`'s own reference forward when
    `ref_logp` is absent): the KL term is measured against a routing-replayed reference, pi_ref routed as the
    sampler routed, not pi_ref with its own router's choices."""
    def logp(mb):
        replay = jnp.moveaxis(mb["replay"], 0, 1) if "replay" in mb else None
        return _policy_logp(graphdef, *ref, mb, temperature, replay, False)[0]

    if micro_batches == 1:
        return logp(batch)
    logp_MBT = jax.lax.map(logp, micro_split(batch, micro_batches))
    return jnp.swapaxes(logp_MBT, 0, 1).reshape(-1, logp_MBT.shape[-1])  # row i + k M <- micro-batch i's row k


def make_grpo_step(graphdef, optimizer: optax.GradientTransformation, cfg: GRPOConfig, update: UpdateConfig,
                   model: ModelConfig, grad_clip_norm: float | None, bias_rate: float | None = None) -> Callable:
    """`step(state, batch) -> (state, metrics)`, not yet jitted (the trainer jits with shardings)."""
    loss_fn = grpo_micro_loss(graphdef, cfg, update, update.micro_batches)
    return make_update_step(graphdef, optimizer, loss_fn, update, model, bias_rate, grad_clip_norm)
