"""The GRPO stage: sample G completions per prompt, score them in the reward pool while the device computes
reference log-probs, group-normalise advantages, run mu updates, log, evaluate, checkpoint."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.rl.data import make_iterator
from r1jax.rl.grpo.advantages import compute_advantages
from r1jax.rl.grpo.step import make_grpo_step, reference_logprobs, rollout_batch
from r1jax.rl.train.config import StageConfig
from r1jax.rl.train.dynamic_sampling import Round, fill_informative
from r1jax.rl.train.rollouts import (decode_completions, encode_prompts, length_metrics, reflection_rate, reward_metrics,
                               submit)
from r1jax.rl.train.stages import UpdateStage
from r1jax.rl.update import reset_reference


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
        start, extra = time.time(), {}
        if g.dynamic_sampling:
            draw = lambda: _scored_round(trainer, iterator, sampler, runner)
            filled = fill_informative(draw, g.prompts_per_step, g.group_size, g.max_resample_rounds,
                                      trainer.tokenizer.pad_id)
            rollout, problems, texts, results, sample_seconds = filled.round
            extra = {"dynamic/rounds": filled.rounds, "dynamic/informative_groups": filled.informative}
            generated = filled.tokens
            batch, ref_logp = _device_batch(trainer, runner, rollout, ref_fn)
        else:  # score on the host while the device computes the reference log-probs
            rollout, problems, texts, sample_seconds = _sample(trainer, iterator, sampler, runner)
            handle = submit(trainer.pool, problems, texts, rollout, g.group_size)
            batch, ref_logp = _device_batch(trainer, runner, rollout, ref_fn)
            results = trainer.pool.collect(handle)
            generated = float(np.asarray(rollout.lengths_B).sum())
        rewards_PG = np.array([r.total for r in results], np.float32).reshape(-1, g.group_size)
        adv_PG, adv_metrics = compute_advantages(jnp.asarray(rewards_PG), g.advantage_estimator, g.adv_eps)
        batch["adv"] = trainer.place_batch({"adv": adv_PG.reshape(-1)})["adv"]
        if ref_logp is not None:
            batch["ref_logp"] = ref_logp
        if g.num_iterations > 1:  # mu > 1: ratios against the policy before the first of the mu updates
            batch["old_logp"] = ref_fn(trainer.graphdef, (runner.state.params, runner.state.bias), batch,
                                       g.temperature)
        update_start = time.time()
        metrics = runner.update(batch, g.num_iterations)
        update_seconds = time.time() - update_start
        if runner.state.ref is not None and g.ref_reset_every and (runner.stage_step + 1) % g.ref_reset_every == 0:
            runner.state = reset_reference(runner.state)
        row = {**metrics, **reward_metrics(results, cfg.rewards.names), **length_metrics(rollout,
               cfg.sampling.max_new_tokens), **{k: float(v) for k, v in adv_metrics.items()},
               "reflection_rate": reflection_rate(texts, cfg.eval.reflection_words),
               "pool/recycled": trainer.pool.metrics().get("recycled", 0),
               "tokens_per_s": generated / max(sample_seconds, 1e-9),
               "step_time_s": time.time() - start, "time/sample_s": sample_seconds,
               "time/rollout_s": update_start - start, "time/update_s": update_seconds, **extra}
        if cfg.eval.every and (runner.stage_step + 1) % cfg.eval.every == 0 and runner.stage_step + 1 < stage.steps:
            row["eval/pass@1"] = trainer.run_eval(stage, sampler, trainer.policy, trainer.global_step + 1)["pass@1"]
        # after the evaluation, which draws from the sampler's key: a resume continues from the same key
        meta = {"data_state": iterator.get_state(), "sampler_key": _key_data(sampler.key)}
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


def _scored_round(trainer, iterator, sampler, runner) -> Round:
    rollout, problems, texts, seconds = _sample(trainer, iterator, sampler, runner)
    results = trainer.pool.collect(submit(trainer.pool, problems, texts, rollout, trainer.config.grpo.group_size))
    return Round(rollout, problems, texts, results, seconds)


def _key_data(key) -> list[int]:
    return np.asarray(jax.random.key_data(key)).tolist()
