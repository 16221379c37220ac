"""The GRPO stage: sample G completions per prompt, score them in the reward pool while the device computes
reference log-probs, group-normalise advantages, run mu updates, log, evaluate, checkpoint. With
`grpo.max_staleness` = k >= 1 the batches of the next k steps are sampled ahead by older weights and scored
while the devices update (rl.train.ahead).

With a sampler on devices of its own (`sampling.devices`, rl.sampler_devices; k >= 1) step n dispatches the
generation of batch n + k on the sampler's devices, then update n on the trainer's, and only then waits for
the generated tokens, decodes them and submits them to the reward pool (the `meanwhile` of the update). The
batch's behaviour log-probs are taken by the weights that sampled it, copied on the trainer's devices before
the update donates them (one more copy of the weights there while it runs). Every batch is sampled by the
same weights, with the same key and prompts, in the same order as with shared devices.

With `update.routing_replay` the reference log-probs (the KL term), like the old and the policy's log-probs,
are taken with the experts the sampler chose (rl.grpo.step.reference_logprobs): the KL is to a
routing-replayed reference, not to pi_ref routed by its own router."""

from __future__ import annotations

import collections
import functools
import math
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.errors import UserError
from r1jax.rl.data import make_iterator
from r1jax.rl.grpo.advantages import compute_advantages
from r1jax.rl.grpo.packing import pack_batch, padding_fraction, plan_packing
from r1jax.rl.grpo.step import make_grpo_step, reference_logprobs, rollout_batch
from r1jax.rl.sampler_layout import reshard_metrics
from r1jax.rl.train.ahead import (SampledBatch, behaviour_logp, dispatch_ahead, queue_saver, restore_queue,
                                  sampled_under)
from r1jax.rl.train.config import StageConfig
from r1jax.rl.train.context import StageContext, StageResult, StageStart
from r1jax.rl.train.dynamic_sampling import Round, fill_informative
from r1jax.rl.train.rollouts import (dispatch_sample, group_rewards, length_metrics, reflection_rate, reward_metrics,
                                     sample_and_submit, submit_sample)
from r1jax.rl.train.stage_sft import checkpoint_dir
from r1jax.rl.train.update_stage import UpdateStage
from r1jax.rl.update import reference_due, reset_reference
from r1jax.sharding.distributed import replicated
from r1jax.sharding.mesh import batch_axes


def run_grpo(ctx: StageContext, index: int, stage: StageConfig, start: StageStart) -> StageResult:
    cfg = ctx.config
    g = cfg.grpo
    iterator = make_iterator(cfg.data, batch_size=g.prompts_per_step)
    if start.resume is not None:  # before the weights are restored: a changed data file stops the resume
        iterator.set_state(start.resume["data_state"], stage=stage.name, checkpoint=checkpoint_dir(ctx, start))
    sampler = ctx.sampler(cfg.seed * 1000 + index)
    make_step = lambda graphdef, opt, clip: make_grpo_step(graphdef, opt, g, cfg.update, ctx.model, clip)
    runner = UpdateStage(ctx, index, stage, start, with_ref=g.kl_coef > 0, make_step=make_step,
                         updates_per_step=g.num_iterations)
    # reference, old (mu > 1) and behaviour log-probs, over the update's micro-batches
    ref_fn = jax.jit(functools.partial(reference_logprobs, micro_batches=cfg.update.micro_batches),
                     static_argnums=(0, 3))
    queue: collections.deque[SampledBatch] = collections.deque()  # batches sampled, not yet updated on
    if start.resume is not None:
        sampler.key = jax.random.wrap_key_data(jnp.asarray(start.resume["sampler_key"], jnp.uint32))
        restored = restore_queue(start.resume, lambda targets: ctx.checkpoints.restore_trees(
            start.resume["checkpoint"], targets), lambda rollout, ahead: _device_batch(ctx, runner, rollout, ahead),
            cfg.update.routing_replay, sampled_under(cfg))
        queue = restored.batches
        if restored.note:  # batches sampled under settings this run changed: their prompts are drawn again
            iterator.set_state(restored.rewind)
            ctx.console.log(restored.note)
        if len(queue) > g.max_staleness:  # a smaller k than the saved run's: the queue drains (rl.train.ahead)
            oldest = max(runner.global_step + i - b.version for i, b in enumerate(queue))
            ctx.console.log(f"grpo.max_staleness={g.max_staleness}: the next {len(queue)} steps update on the "
                            f"checkpoint's {len(queue)} batch(es) sampled ahead (staleness up to {oldest}, as "
                            f"their rows log); later batches are sampled at most {g.max_staleness} step(s) ahead")
    # the sampler on devices of its own: the last batch ahead is generated while the update runs
    overlap = bool(ctx.sampler_devices)
    for note in g.notes() if ctx.primary else ():
        ctx.console.log(note)
    ctx.console.start_stage(stage.name, stage.steps, runner.stage_step)
    failed_steps = 0  # steps in a row in which no completion was scored (reward_pool.max_failed_steps)
    while runner.stage_step < stage.steps:
        step_start = time.time()
        # the batches of this step and the next max_staleness ones, each sampled by the weights of now
        while len(queue) < g.max_staleness + (not overlap) and runner.stage_step + len(queue) < stage.steps:
            queue.append(_draw(ctx, iterator, sampler, runner, ref_fn, ahead=len(queue)))
        finish_ahead = None
        if overlap and dispatch_ahead(len(queue), g.max_staleness, stage.steps - runner.stage_step):
            finish_ahead = _dispatch_draw(ctx, iterator, sampler, runner, ref_fn, queue)
        sampled = queue.popleft()
        batch = sampled.batch
        # the reference forward is dispatched first: it runs while the host waits for the rewards
        ref_logp = ref_fn(ctx.graphdef, runner.state.ref, batch, g.temperature) if g.kl_coef > 0 else None
        wait_start = time.time()
        results = sampled.collect(ctx.pool)
        host_wait = time.time() - wait_start
        failed_steps = 0 if any(r.status == "ok" for r in results) else failed_steps + 1
        if halts_unscored(failed_steps, cfg.reward_pool.max_failed_steps):
            raise UserError(_unscored(stage, runner.stage_step + 1, failed_steps, results))
        adv_PG, adv_metrics = compute_advantages(group_rewards(results, g.group_size), g.advantage_estimator,
                                                 g.adv_eps, g.adv_std)
        batch["adv"] = ctx.place({"adv": adv_PG.reshape(-1)}, runner.global_step + 1)["adv"]
        if ref_logp is not None:
            batch["ref_logp"] = ref_logp
        if g.num_iterations > 1 and "old_logp" not in batch:  # mu > 1: ratios against the policy before the
            batch["old_logp"] = ref_fn(ctx.graphdef, runner.policy, batch, g.temperature)  # first of mu updates
        staleness = runner.global_step - sampled.version
        update_start = time.time()
        metrics = runner.update(batch, g.num_iterations, meanwhile=finish_ahead)
        update_seconds = time.time() - update_start
        finish_ahead = None  # lets go of its copy of the sampling weights
        if runner.state.ref is not None and reference_due(runner.stage_step, g.ref_reset_every):
            runner.state = reset_reference(runner.state)
        lengths = length_metrics(sampled.rollout, cfg.sampling.max_new_tokens, ctx.tokenizer.eos_ids)
        row = {**metrics, **reward_metrics(results, cfg.rewards.names), **lengths,
               **{k: float(v) for k, v in adv_metrics.items()}, **sampled.layout,
               "reflection_rate": reflection_rate(sampled.texts, cfg.eval.reflection_words),
               "pool/recycled": ctx.pool.metrics()["reward_pool/recycled"],
               "tokens_per_s": sampled.generated / max(sampled.seconds, 1e-9),
               "step_time_s": time.time() - step_start, "time/sample_s": sampled.seconds,
               "time/rollout_s": update_start - step_start, "time/update_s": update_seconds,
               "time/host_wait_s": host_wait, "staleness": staleness, **reshard_metrics(sampler), **sampled.extra}
        if cfg.eval.every and (runner.stage_step + 1) % cfg.eval.every == 0 and runner.stage_step + 1 < stage.steps:
            row["eval/pass@1"] = runner.evaluate(sampler, runner.global_step + 1)["pass@1"]
        # after the evaluation, which draws from the sampler's key: a resume continues from the same key
        meta = {"data_state": iterator.get_state(), "sampler_key": _key_data(sampler.key)}
        runner.finish_step(row, meta, saved_with=queue_saver(queue, ctx.pool, cfg.update.routing_replay))
    return runner.finish_stage({"data_state": iterator.get_state(), "sampler_key": _key_data(sampler.key)},
                               sampler)


def halts_unscored(failed_steps: int, max_failed_steps: int) -> bool:
    """Whether `failed_steps` steps in a row in which no completion was scored halt the run: at
    reward_pool.max_failed_steps of them, never for 0."""
    return failed_steps > 0 and failed_steps == max_failed_steps


def _unscored(stage, step: int, steps: int, results) -> str:
    counts = collections.Counter(r.status for r in results)
    first = next((r.error for r in results if r.error), None)
    return (f"stage {stage.name}: no completion was scored in {steps} steps in a row (reward_pool.max_failed_steps="
            f"{steps}); halting at step {step}, before its update: "
            + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            + (f", e.g. {first[:300]}" if first else "")
            + "; fix the reward (rewards.names, reward_pool.import_modules) or the pool (reward_pool.timeout_s, "
              "memory_mb) and resume: the latest checkpoint holds")


def _draw(ctx: StageContext, iterator, sampler, runner: UpdateStage, ref_fn, ahead: int) -> SampledBatch:
    """The next batch, sampled by the current policy and submitted to the reward pool (with dynamic sampling:
    scored), on the mesh; `ahead`: batches already queued before it. With max_staleness >= 1 it carries its
    behaviour log-probs (rl.train.ahead)."""
    g = ctx.config.grpo
    pending, results, extra, data_state = None, None, {}, iterator.get_state()
    if g.dynamic_sampling:
        draw = lambda: _scored_round(ctx, next(iterator), sampler, runner)
        filled = fill_informative(draw, g.prompts_per_step, g.group_size, g.max_resample_rounds,
                                  ctx.tokenizer.pad_id)
        rollout, _, texts, results, seconds = filled.round
        extra = {"dynamic/rounds": filled.rounds, "dynamic/informative_groups": filled.informative}
        # the batch's reward/* leave out the all-correct groups the filter drops: the policy's own, unfiltered
        extra.update({key.replace("reward/", "reward_sampled/", 1): value for key, value in
                      reward_metrics(filled.drawn, ctx.config.rewards.names).items() if key.startswith("reward/")})
        generated = filled.tokens
    else:
        sampled = _sample(ctx, next(iterator), sampler, runner)
        rollout, texts, seconds, pending = sampled.rollout, sampled.texts, sampled.seconds, sampled.pending
        generated = float(np.asarray(rollout.lengths_B).sum())
    batch, layout = _training_batch(ctx, runner, ref_fn, rollout, runner.policy, ahead)
    return SampledBatch(rollout, texts, seconds, generated, extra, runner.global_step, batch, layout, pending,
                        results, sampled_under(ctx.config), data_state)


def _dispatch_draw(ctx: StageContext, iterator, sampler, runner: UpdateStage, ref_fn, queue) -> Callable[[], None]:
    """The next batch's generation dispatched on the sampler's own devices with the current weights, which are
    also copied on the trainer's for its behaviour log-probs; what appends it to `queue` once the update is
    dispatched: waits for its tokens, decodes and submits them, places the batch and takes those log-probs.
    (Without dynamic sampling, which max_staleness >= 1 excludes.)"""
    g = ctx.config.grpo
    version, ahead, behaviour = runner.global_step, len(queue), _copy_weights(runner.policy)
    data_state = iterator.get_state()  # before its prompts
    generating = dispatch_sample(sampler, runner.policy, ctx.tokenizer, ctx.config.tokenizer.template,
                                 next(iterator), g.group_size, ctx.config.tokenizer.template_vars,
                                 temperature=g.temperature)
    # the moment its tokens are ready, stamped aside: `finish` runs after the update's dispatch (and its first
    # compile), which `time/sample_s` and `tokens_per_s` counted as sampling (6.1 s for a 0.03 s generation)
    ready: list[float] = []
    stamp = threading.Thread(target=lambda: (jax.block_until_ready(generating.rollout.tokens_BT),
                                             ready.append(time.time())), daemon=True)
    stamp.start()

    def finish() -> None:
        sampled = submit_sample(generating, ctx.tokenizer, ctx.pool)
        stamp.join()
        seconds = ready[0] - generating.start if ready else sampled.seconds
        generated = float(np.asarray(sampled.rollout.lengths_B).sum())
        batch, layout = _training_batch(ctx, runner, ref_fn, sampled.rollout, behaviour, ahead)
        queue.append(SampledBatch(sampled.rollout, sampled.texts, seconds, generated, {}, version, batch,
                                  layout, sampled.pending, settings=sampled_under(ctx.config), data_state=data_state))
    return finish


# distinct buffers: the update donates the weights it is given
_copy_weights = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def _training_batch(ctx: StageContext, runner: UpdateStage, ref_fn, rollout, behaviour: tuple, ahead: int):
    """`_device_batch`, with the behaviour log-probs under `behaviour` (the weights that sampled the rollout)
    when batches are sampled ahead (max_staleness >= 1)."""
    g = ctx.config.grpo
    batch, layout = _device_batch(ctx, runner, rollout, ahead)
    if g.max_staleness > 0:
        batch["old_logp"] = behaviour_logp(ref_fn, ctx.graphdef, behaviour, batch, g.temperature)
    return batch, layout


def _device_batch(ctx: StageContext, runner: UpdateStage, rollout, ahead: int = 0):
    """The placed training batch (advantages filled in later) and the layout's metrics: `padding_fraction`
    of the padded rows and, with `grpo.pack`, `padding_fraction_packed` of the packed rows the forward runs
    on. `ahead`: how many steps after the next one it is for."""
    g, cfg = ctx.config.grpo, ctx.config
    rows = rollout.tokens_BT.shape[0]
    if g.pack:  # packing lays out every row on the host: under several processes, positions and routes too
        rollout = rollout._replace(positions_BT=replicated(rollout.positions_BT),
                                   experts_LBTK=replicated(rollout.experts_LBTK) if cfg.update.routing_replay
                                   else rollout.experts_LBTK)
    batch = rollout_batch(rollout, np.zeros((rows,), np.float32), g, cfg.sampling.max_new_tokens,
                          with_replay=cfg.update.routing_replay)
    valid_BT = np.asarray(rollout.valid_BT)
    layout = {"padding_fraction": padding_fraction(valid_BT)}
    if g.pack:
        devices = math.prod(ctx.mesh.shape[a] for a in batch_axes(ctx.mesh, ctx.rules))
        plan = plan_packing(valid_BT, cfg.update.micro_batches, devices, g.pack_length, g.pack_shapes)
        batch = pack_batch(batch, plan)
        layout["padding_fraction_packed"] = padding_fraction(valid_BT, plan.src_RT.size)
    return ctx.place(batch, runner.global_step + 1 + ahead), layout


def _sample(ctx: StageContext, problems: list[dict], sampler, runner: UpdateStage):
    """G completions of each problem under the current policy, submitted to the reward pool."""
    g = ctx.config.grpo
    return sample_and_submit(sampler, runner.policy, ctx.tokenizer, ctx.config.tokenizer.template, problems,
                             ctx.pool, g.group_size, ctx.config.tokenizer.template_vars, temperature=g.temperature)


def _scored_round(ctx: StageContext, problems: list[dict], sampler, runner: UpdateStage) -> Round:
    sampled = _sample(ctx, problems, sampler, runner)
    return Round(sampled.rollout, sampled.problems, sampled.texts, ctx.pool.collect(sampled.pending),
                 sampled.seconds)


def _key_data(key) -> list[int]:
    return np.asarray(jax.random.key_data(key)).tolist()
