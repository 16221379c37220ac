"""`grpo.max_staleness` (rl.train.ahead): 0 is the sequential on-policy loop to the last digit, 1 samples each
batch with the previous step's weights and takes its ratios and sampler corrections against their log-probs,
a resume after SIGKILL continues exactly, and bad values are UserErrors naming the key."""

import json
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.errors import UserError
from r1jax.rl.config import load_config
from r1jax.rl.data import make_iterator
from r1jax.rl.grpo.advantages import compute_advantages
from r1jax.rl.grpo.step import make_grpo_step, reference_logprobs, rollout_batch
from r1jax.rl.sampler import Sampler
from r1jax.rl.sampler_layout import reshard_metrics
from r1jax.rl.train import stage_grpo
from r1jax.rl.train.console import RunConsole
from r1jax.rl.train.metrics import MetricsWriter
from r1jax.rl.train.rollouts import length_metrics, reflection_rate, reward_metrics
from r1jax.rl.train.stages import STAGE_RUNNERS
from r1jax.rl.train.trainer import Trainer
from r1jax.rl.train.update_stage import UpdateStage
from r1jax.rl.update import reset_reference

from tests.rl.conftest import comparable, latest_checkpoint, metrics_rows, run_signalled_at, run_to_end

CONFIG = pathlib.Path(__file__).parent / "data" / "stale_tiny.yaml"
STEPS = 4
logprobs = jax.jit(reference_logprobs, static_argnums=(0, 3))  # one compiled program for the checks


def sequential_grpo(ctx, index, stage, start):
    """The GRPO loop as it was before `max_staleness` (sample, score, update in turn; no dynamic sampling,
    no packing, no resume), kept as the reference that max_staleness 0 must reproduce."""
    g = ctx.config.grpo
    iterator = make_iterator(ctx.config.data, batch_size=g.prompts_per_step)
    sampler = ctx.sampler(ctx.config.seed * 1000 + index)
    make_step = lambda graphdef, opt, clip: make_grpo_step(graphdef, opt, g, ctx.config.update, ctx.model, clip)
    runner = UpdateStage(ctx, index, stage, start, with_ref=g.kl_coef > 0, make_step=make_step)
    ref_fn = jax.jit(reference_logprobs, static_argnums=(0, 3))
    while runner.stage_step < stage.steps:
        sampled = stage_grpo._sample(ctx, next(iterator), sampler, runner)
        rollout = sampled.rollout
        batch = rollout_batch(rollout, jnp.zeros((rollout.tokens_BT.shape[0],)), g,
                              ctx.config.sampling.max_new_tokens, with_replay=ctx.config.update.routing_replay)
        batch = ctx.place(batch, runner.global_step + 1)
        ref_logp = ref_fn(ctx.graphdef, runner.state.ref, batch, g.temperature) if g.kl_coef > 0 else None
        results = ctx.pool.collect(sampled.pending)
        rewards_PG = np.array([r.total for r in results], np.float32).reshape(-1, g.group_size)
        adv_PG, adv_metrics = compute_advantages(jnp.asarray(rewards_PG), g.advantage_estimator, g.adv_eps,
                                                   g.adv_std)
        batch["adv"] = ctx.place({"adv": adv_PG.reshape(-1)}, runner.global_step + 1)["adv"]
        if ref_logp is not None:
            batch["ref_logp"] = ref_logp
        if g.num_iterations > 1:
            batch["old_logp"] = ref_fn(ctx.graphdef, runner.policy, batch, g.temperature)
        metrics = runner.update(batch, g.num_iterations)
        if runner.state.ref is not None and g.ref_reset_every and (runner.stage_step + 1) % g.ref_reset_every == 0:
            runner.state = reset_reference(runner.state)
        row = {**metrics, **reward_metrics(results, ctx.config.rewards.names),
               **length_metrics(rollout, ctx.config.sampling.max_new_tokens),
               **{k: float(v) for k, v in adv_metrics.items()},
               "padding_fraction": float(1 - np.asarray(rollout.valid_BT).mean()),
               "reflection_rate": reflection_rate(sampled.texts, ctx.config.eval.reflection_words),
               "pool/recycled": ctx.pool.metrics()["reward_pool/recycled"], **reshard_metrics(sampler)}
        runner.finish_step(row, {})
    return runner.finish_stage({}, sampler)


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """In-process runs skip drawing the plots (seconds of matplotlib per run, and not under test here)."""
    monkeypatch.setattr(MetricsWriter, "refresh_plots", lambda self: None)


def train(run_dir, overrides=()):
    """(metric rows, final policy leaves as NumPy) of an in-process run of CONFIG."""
    trainer = Trainer(load_config(CONFIG, ["checkpoint.every=100", *overrides]), run_dir, RunConsole(False))
    trainer.run()
    return metrics_rows(run_dir), [np.asarray(x) for x in jax.tree.leaves(trainer.policy)]


@pytest.mark.parametrize("value, message", [(-1, "grpo.max_staleness = -1: expected an integer >= 0"),
                                            ("1.5", "key 'grpo.max_staleness'"),
                                            ("true", "key 'grpo.max_staleness'")])
def test_bad_max_staleness_is_a_user_error_naming_the_key(value, message):
    with pytest.raises(UserError, match=message):
        load_config(CONFIG, [f"grpo.max_staleness={value}"])


def test_max_staleness_with_dynamic_sampling_is_refused():
    with pytest.raises(UserError, match="grpo.max_staleness = 1: expected 0 with grpo.dynamic_sampling"):
        load_config(CONFIG, ["grpo.dynamic_sampling=true"])


def test_max_staleness_0_is_the_sequential_loop_to_the_last_digit(tmp_path, monkeypatch):
    options = ["grpo.max_staleness=0", "stages.0.steps=3"]
    rows, params = train(tmp_path / "pipelined", options)
    monkeypatch.setitem(STAGE_RUNNERS, "grpo", sequential_grpo)
    reference_rows, reference_params = train(tmp_path / "sequential", options)
    assert [r["staleness"] for r in rows] == [0, 0, 0]
    assert all(r["time/host_wait_s"] >= 0 for r in rows)
    new_keys = {"staleness"}
    assert comparable([{k: v for k, v in r.items() if k not in new_keys} for r in rows]) == \
        comparable(reference_rows)
    for a, b in zip(params, reference_params):
        assert a.tobytes() == b.tobytes()


def test_max_staleness_1_samples_with_the_previous_weights_and_corrects_against_them(tmp_path, monkeypatch):
    """Each generate call's weights are recorded by the version of the policy they equal; each update's
    batch carries the log-probs of the weights that sampled it (checked against a fresh reference forward
    under those weights), which the sampler's own log-probs match while the updated weights' do not."""
    versions, sampled_with, updates = [], [], []
    fingerprint = lambda policy: b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(policy))
    generate, update = Sampler.generate, UpdateStage.update

    def recording_generate(self, state, *args, **kwargs):
        sampled_with.append(fingerprint(state))
        return generate(self, state, *args, **kwargs)

    def recording_update(self, batch, iterations=1):
        versions.append((fingerprint(self.policy), jax.tree.map(np.asarray, self.policy)))
        updates.append({"graphdef": self.ctx.graphdef, "batch": jax.tree.map(np.asarray, batch)})
        return update(self, batch, iterations)

    monkeypatch.setattr(Sampler, "generate", recording_generate)
    monkeypatch.setattr(UpdateStage, "update", recording_update)
    rows, _ = train(tmp_path / "run", ["stages.0.steps=3"])
    assert [r["staleness"] for r in rows] == [0, 1, 1]
    # batches 0 and 1 by version 0 (step 0 samples one batch ahead), batch 2 by version 1 at step 1
    version_of = {fp: v for v, (fp, _) in enumerate(versions)}
    assert [version_of.get(fp) for fp in sampled_with[:3]] == [0, 0, 1]
    for step, u in enumerate(updates):
        batch, behaviour = u["batch"], step - rows[step]["staleness"]
        mask = batch["mask"]
        recomputed = np.asarray(logprobs(u["graphdef"], versions[behaviour][1], batch, 1.0))
        updated = np.asarray(logprobs(u["graphdef"], versions[step][1], batch, 1.0))
        np.testing.assert_allclose(batch["old_logp"][mask], recomputed[mask], atol=1e-5)
        stale = np.abs(batch["old_logp"] - batch["sampler_logp"])[mask].max()
        drift = np.abs(updated - batch["sampler_logp"])[mask].max()
        assert stale < 1e-4, (step, stale)  # the sampler's weights, as the trainer computes them
        if step > 0:
            assert drift > 100 * stale, (step, drift, stale)  # the updated weights differ: not those
        assert rows[step]["sampler_logp_absdiff_max"] < 1e-4  # what TIS and the token mask compared
        assert rows[step]["token_mask_frac"] == 0.0
    assert rows[0]["ratio_max"] < 1 + 1e-4 < rows[1]["ratio_max"]  # step 1's ratio is against the old weights


def test_max_staleness_1_resume_after_sigkill_continues_exactly(tmp_path):
    """Killed right after the row of step 4, before its step boundary: the latest checkpoint is step 2's, which
    holds batch 3 (sampled by version 1, not yet used). The resumed run's rows 3 and 4 are the killed run's."""
    run_dir = tmp_path / "run"
    code, err = run_signalled_at(run_dir, signal.SIGKILL, STEPS, CONFIG)
    assert code == -signal.SIGKILL, err[-3000:]
    killed = metrics_rows(run_dir)
    assert [r["global_step"] for r in killed] == [1, 2, 3, 4] and latest_checkpoint(run_dir) == 2
    meta = json.loads((run_dir / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert [b["version"] for b in meta["ahead"]] == [1]
    run_to_end(run_dir, CONFIG)
    resumed = metrics_rows(run_dir)
    assert [r["global_step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["staleness"] for r in resumed] == [0, 1, 1, 1]
    assert comparable(resumed) == comparable(killed)
    assert resumed[:2] == killed[:2]  # the first process's rows, timings included
