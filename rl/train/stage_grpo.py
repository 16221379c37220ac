"""The GRPO stage: sample G completions per prompt, score them in the reward pool while the device computes
reference log-probs, group-normalise advantages, run mu updates, log, evaluate, checkpoint."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from rl.data import make_iterator
from rl.grpo.advantages import compute_advantages, nonzero_std_mask_P
from rl.grpo.step import make_grpo_step, reference_logprobs, rollout_batch
from rl.train.config import StageConfig
from rl.train.rollouts import (decode_completions, encode_prompts, length_metrics, merge_rollouts,
                               reflection_rate, reward_metrics, submit, take_rows)
from rl.train.stages import UpdateStage
from rl.update import reset_reference


def run_grpo(trainer, index: int, stage: StageConfig, resume: dict | None) -> None:
    cfg = trainer.config
    g = cfg.grpo
    iterator = make_iterator(cfg.data, batch_size=g.prompts_per_step)
    sampler = trainer.sampler(cfg.seed * 1000 + index)
    make_step = lambda graphdef, opt, clip: make_grpo_step(graphdef, opt, g, cfg.update, trainer.model_config, clip)
    runner = UpdateStage(trainer, index, stage, resume, with_ref=g.kl_coef > 0, make_step=make_step)
    if resume is not None:
        iterator.set_state(resume["data_state"])
        sampler.key = jax.random.wrap_key_data(jnp.asarray(resume["sampler_key"], jnp.uint32))
    ref_fn = jax.jit(reference_logprobs, static_argnums=(0, 3))
    trainer.console.start_stage(stage.name, stage.steps, runner.stage_step)
    while runner.stage_step < stage.steps:
        start = time.time()
        if g.dynamic_sampling:
            rollout, problems, texts, results, sample_seconds = _collect(trainer, iterator, sampler, runner)
            batch, ref_logp = _device_batch(trainer, runner, rollout, ref_fn)
        else:  # score on the host while the device computes the reference log-probs
            rollout, problems, texts, sample_seconds = _sample(trainer, iterator, sampler, runner)
            handle = submit(trainer.pool, problems, texts, rollout, g.group_size)
            batch, ref_logp = _device_batch(trainer, runner, rollout, ref_fn)
            results = trainer.pool.collect(handle)
        rewards_PG = np.array([r.total for r in results], np.float32).reshape(-1, g.group_size)
        adv_PG, adv_metrics = compute_advantages(jnp.asarray(rewards_PG), g.advantage_estimator, g.adv_eps)
        batch["adv"] = trainer.place_batch({"adv": adv_PG.reshape(-1)})["adv"]
        if ref_logp is not None:
            batch["ref_logp"] = ref_logp
        if g.num_iterations > 1:  # mu > 1: ratios against the policy before the first of the mu updates
            batch["old_logp"] = ref_fn(trainer.graphdef, (runner.state.params, runner.state.bias), batch,
                                       g.temperature)
        metrics = runner.update(batch, g.num_iterations)
        if runner.state.ref is not None and g.ref_reset_every and (runner.stage_step + 1) % g.ref_reset_every == 0:
            runner.state = reset_reference(runner.state)
        row = {**metrics, **reward_metrics(results, cfg.rewards.names), **length_metrics(rollout,
               cfg.sampling.max_new_tokens), **{k: float(v) for k, v in adv_metrics.items()},
               "reflection_rate": reflection_rate(texts), "pool/recycled": trainer.pool.metrics().get("recycled", 0),
               "tokens_per_s": float(np.asarray(rollout.lengths_B).sum()) / max(sample_seconds, 1e-9),
               "step_time_s": time.time() - start}
        meta = {"data_state": iterator.get_state(), "sampler_key": _key_data(sampler.key)}
        if cfg.eval.every and (runner.stage_step + 1) % cfg.eval.every == 0 and runner.stage_step + 1 < stage.steps:
            row["eval/pass@1"] = trainer.run_eval(stage, sampler, trainer.policy)["pass@1"]
        runner.finish_step(row, meta)
    runner.finish_stage({"data_state": iterator.get_state(), "sampler_key": _key_data(sampler.key)}, sampler)


def _device_batch(trainer, runner, rollout, ref_fn):
    """The placed training batch (advantages filled in later) and, when beta > 0, the reference
    log-probs, dispatched asynchronously."""
    g, cfg = trainer.config.grpo, trainer.config
    rows = rollout.tokens_BT.shape[0]
    batch = trainer.place_batch(rollout_batch(rollout, jnp.zeros((rows,)), g, cfg.sampling.max_new_tokens,
                                              with_replay=cfg.update.routing_replay))
    ref_logp = ref_fn(trainer.graphdef, runner.state.ref, batch, g.temperature) if g.kl_coef > 0 else None
    return batch, ref_logp


def _sample(trainer, iterator, sampler, runner):
    cfg, g = trainer.config, trainer.config.grpo
    problems = next(iterator)
    start = time.time()
    rollout = sampler.generate((runner.state.params, runner.state.bias),
                               encode_prompts(trainer.tokenizer, cfg.tokenizer.template, problems),
                               samples=g.group_size, temperature=g.temperature)
    texts = decode_completions(trainer.tokenizer, rollout)
    return rollout, problems, texts, time.time() - start


def _key_data(key) -> list[int]:
    return np.asarray(jax.random.key_data(key)).tolist()


def _collect(trainer, iterator, sampler, runner):
    """One batch of scored groups; with DAPO dynamic sampling, groups whose rewards are all equal are
    replaced by groups from extra sampling rounds (at most `max_resample_rounds`)."""
    cfg, g = trainer.config, trainer.config.grpo
    kept, rounds = None, 0
    while True:
        rollout, problems, texts, seconds = _sample(trainer, iterator, sampler, runner)
        results = trainer.pool.collect(submit(trainer.pool, problems, texts, rollout, g.group_size))
        part = (rollout, problems, texts, results)
        kept = part if kept is None else _keep_informative(kept, part, g.group_size)
        rounds += 1
        rewards = np.array([r.total for r in kept[3]], np.float32).reshape(-1, g.group_size)
        informative = int(np.asarray(nonzero_std_mask_P(jnp.asarray(rewards))).sum())
        if informative >= len(problems) or rounds > g.max_resample_rounds:
            return *_first_groups(kept, len(problems), g.group_size, trainer.tokenizer.pad_id), seconds


def _keep_informative(kept, part, group_size):
    """Append `part`'s groups to `kept`, informative groups (non-zero reward std) first."""
    rollout, problems, texts, results = part
    rewards = np.array([r.total for r in results], np.float32).reshape(-1, group_size)
    good = np.asarray(nonzero_std_mask_P(jnp.asarray(rewards)))
    order = [p for p in range(len(problems)) if good[p]] + [p for p in range(len(problems)) if not good[p]]
    rows = [p * group_size + j for p in order for j in range(group_size)]
    old_rewards = np.array([r.total for r in kept[3]], np.float32).reshape(-1, group_size)
    old_good = np.asarray(nonzero_std_mask_P(jnp.asarray(old_rewards)))
    old_order = [p for p in range(len(kept[1])) if old_good[p]] + [p for p in range(len(kept[1])) if not old_good[p]]
    old_rows = [p * group_size + j for p in old_order for j in range(group_size)]
    informative_old = int(old_good.sum())
    merged = merge_rollouts([take_rows(kept[0], old_rows), take_rows(rollout, rows)], pad_id=0)
    problems_all = [kept[1][p] for p in old_order] + [problems[p] for p in order]
    texts_all = [kept[2][r] for r in old_rows] + [texts[r] for r in rows]
    results_all = [kept[3][r] for r in old_rows] + [results[r] for r in rows]
    # informative groups of both rounds first
    n_old, n_new = informative_old, int(good.sum())
    group_order = (list(range(n_old)) + list(range(len(kept[1]), len(kept[1]) + n_new))
                   + list(range(n_old, len(kept[1]))) + list(range(len(kept[1]) + n_new, len(problems_all))))
    rows_all = [p * group_size + j for p in group_order for j in range(group_size)]
    return (take_rows(merged, rows_all), [problems_all[p] for p in group_order],
            [texts_all[r] for r in rows_all], [results_all[r] for r in rows_all])


def _first_groups(kept, count, group_size, pad_id):
    rollout, problems, texts, results = kept
    rows = list(range(count * group_size))
    return take_rows(rollout, rows), problems[:count], texts[:len(rows)], results[:len(rows)]
