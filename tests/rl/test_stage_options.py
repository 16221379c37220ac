"""The README's training options, each run once with an assertion about its effect: the reference reset
(`grpo.ref_reset_every`) on packed batches (`grpo.pack`), old log-probs with several updates per batch
(`grpo.num_iterations`), routing replay in training (`update.routing_replay`), the router loss coefficients
(`update.z_loss_coef`, `update.aux_loss_coef`) and keeping the best checkpoint by held-out pass@1
(`checkpoint.keep_best`).

The runs are in-process (8 CPU devices) on tests/rl/data/learn_tiny.yaml's policy, its one layer made MoE
for GRPO (the GRPO runs share the sampler's compiled program); their stage-end evaluations are scripted
(`scripted_evaluations`: no test here reads an evaluation's figures, and sampling one compiled a program of its
own); the router losses are checked on the loss functions of a tiny model, without a run.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.model.factory import init_policy
from r1jax.rl.config import load_config
from r1jax.rl.grpo.config import GRPOConfig
from r1jax.rl.grpo.step import grpo_micro_loss
from r1jax.rl.train import held_out, stage_grpo
from r1jax.rl.train.sft import sft_micro_loss
from r1jax.rl.train.trainer import Trainer
from r1jax.rl.update import UpdateConfig, split_policy
from tests.model.tiny import DEEPSEEK

import tests.rl.learning_probes  # noqa: F401  (registers the probe task here; the workers import it too)
from tests.rl.conftest import metrics_rows

CONFIG = pathlib.Path(__file__).parent / "data" / "learn_tiny.yaml"
# GRPO on the MoE policy, at a learning rate that moves it visibly in one step
GRPO_MOE = ["model.first_k_dense_replace=0", "optimizer.lr=0.05"]


def replay_expert_0_twice(rollout_batch):
    """The batch's replayed experts (when it has them) replaced by expert 0 for both of every token's copies:
    a choice no router makes (top-k picks distinct experts), so only a forward that replays it loads expert 0
    with 4x the mean (a router's top-2 of 4 experts reaches at most 2x)."""
    def fixed(*args, **kwargs):
        batch = rollout_batch(*args, **kwargs)
        if "replay" in batch:
            batch["replay"] = jnp.zeros_like(batch["replay"])
        return batch
    return fixed


@pytest.fixture(scope="module")
def grpo_rows(tmp_path_factory):
    """4 GRPO steps, KL to a reference reset every 2 steps, one update per batch, replayed routes, all on
    packed update batches (`grpo.pack`: the reference, the replayed routes and the loss go through it), at
    temperature 0.7 (the reference's forward divides by it as the policy's does, or KL is not 0 after a reset)."""
    run_dir = tmp_path_factory.mktemp("grpo_options")
    config = load_config(CONFIG, [*GRPO_MOE, "stages.0.steps=4", "grpo.kl_coef=0.01", "grpo.ref_reset_every=2",
                                  "update.routing_replay=true", "grpo.pack=true", "grpo.temperature=0.7"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage_grpo, "rollout_batch", replay_expert_0_twice(stage_grpo.rollout_batch))
        patch.setattr(held_out, "evaluate", scripted_evaluations([0.0]))  # the stage's end: nothing reads it
        Trainer(config, run_dir).run()
    return metrics_rows(run_dir)


def test_the_reference_equals_the_policy_right_after_a_reset(grpo_rows):
    # step 1: the reference is the initial policy; the update moves the policy (KL > 0 at step 2); the
    # reset after step 2 makes KL vanish at step 3; step 4 has no reset before it, so KL is back
    kl = [r["kl"] for r in grpo_rows]
    assert kl[0] < 1e-6 and kl[2] < 1e-6, kl
    assert kl[1] > 1e-4 and kl[3] > 1e-4, kl


def test_routing_replay_reaches_the_update(grpo_rows):
    # the update's expert load counts the replayed experts: every copy on expert 0 (4x the mean)
    for row in grpo_rows:
        assert (row["expert_load/min"], row["expert_load/max"]) == (0.0, 4.0), row
        # the sampler routed by itself, the update did not: their log-probs differ (~1e-7 when they agree)
        assert row["sampler_logp_absdiff"] > 1e-4, row


def test_packing_reports_the_padding_it_leaves(grpo_rows):
    for row in grpo_rows:  # each device packs its own 8 rows of prompt bucket 16 + 1 token
        assert 0.0 <= row["padding_fraction_packed"] <= row["padding_fraction"] < 1.0, row


def test_one_update_per_batch_has_ratio_one(grpo_rows):
    for row in grpo_rows:  # old log-probs are the current ones: every ratio is exactly 1
        assert row["ratio_max"] == 1.0 and row["clip_low_frac"] == row["clip_high_frac"] == 0.0


def test_old_log_probs_are_at_the_sampling_temperature(tmp_path, monkeypatch):
    """mu = 2 at temperature 0.7 and a learning rate too small to move the policy: the old log-probs (the
    policy before the first of the mu updates) equal the current ones only when their forward divides by T."""
    monkeypatch.setattr(held_out, "evaluate", scripted_evaluations([0.0]))
    Trainer(load_config(CONFIG, [*GRPO_MOE, "stages.0.steps=1", "grpo.num_iterations=2", "grpo.temperature=0.7",
                                 "optimizer.lr=1e-12"]), tmp_path).run()
    for row in metrics_rows(tmp_path):
        assert abs(row["ratio_max"] - 1) < 1e-5, row


def test_several_updates_per_batch_use_the_old_log_probs(tmp_path, monkeypatch):
    """mu = 2: the second update's ratios are against the policy that sampled, which the first update moved
    (with mu = 1 they are exactly 1, previous test); at lr 0.05 some leave the clip range. The cosine schedule
    runs over the stage's 4 updates (2 steps x mu), and each row logs the rate of its step's last update. The
    evaluations (scripted) are where they run and which checkpoint each names, not their figures."""
    monkeypatch.setattr(held_out, "evaluate", scripted_evaluations([0.0, 0.0]))
    Trainer(load_config(CONFIG, [*GRPO_MOE, "stages.0.steps=2", "grpo.num_iterations=2", "eval.every=1",
                                 "optimizer.schedule=warmup_cosine", "optimizer.min_lr_ratio=0.1"]), tmp_path).run()
    rows = metrics_rows(tmp_path)
    for row in rows:
        assert row["ratio_max"] > 1.05, row
        assert row["clip_low_frac"] + row["clip_high_frac"] > 0, row
    cosine = lambda update: 0.05 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * update / 4)))  # updates 0..3 of 4
    assert [r["lr"] for r in rows] == pytest.approx([cosine(1), cosine(3)], rel=1e-6)
    # the evaluation after step 1 has no checkpoint (checkpoint.every is 1000), the stage's last one has
    evals = json.loads((tmp_path / "summary.json").read_text())["evals"]
    assert [(e["step"], e["checkpoint"]) for e in evals] == [(1, None), (2, str(tmp_path / "checkpoints" / "2"))]
    assert (tmp_path / "checkpoints" / "2").is_dir() and not (tmp_path / "checkpoints" / "1").exists()


def test_the_router_loss_coefficients_add_their_terms():
    """For GRPO's and SFT's loss: loss(c_z, c_aux) = loss(0, 0) + c_z * z_loss + c_aux * aux_loss, with z_loss
    and aux_loss the model's own router losses (mean over MoE layers). With a zero advantage and no KL the
    router losses are GRPO's only gradient: none without them. (One program computes every case.)"""
    model = dataclasses.replace(DEEPSEEK, num_hidden_layers=1, first_k_dense_replace=0)  # one MoE layer alone
    policy = init_policy(model, 0)
    graphdef, params, bias = split_policy(policy)
    rows_, length = 4, 10
    tokens = jax.random.randint(jax.random.key(1), (rows_, length), 4, model.vocab_size)
    mask = jnp.zeros((rows_, length - 1), bool).at[:, 4:].set(True)
    batch = {"tokens": tokens, "positions": jnp.broadcast_to(jnp.arange(length), tokens.shape),
             "valid": jnp.ones(tokens.shape, bool), "mask": mask, "weight": mask / mask.sum(),
             "sampler_logp": jnp.zeros(mask.shape), "adv": jnp.zeros((rows_,))}
    z, balance = 0.3, 0.2  # different, so that swapped coefficients show

    @jax.jit
    def everything(params):
        aux = nnx.merge(graphdef, params, bias)(tokens, batch["positions"], batch["valid"]).aux
        out = {"z_loss": jnp.mean(aux.z_loss), "aux_loss": jnp.mean(aux.load_balance_loss)}
        for name, update in [("off", UpdateConfig(z_loss_coef=0.0, aux_loss_coef=0.0)),
                             ("on", UpdateConfig(z_loss_coef=z, aux_loss_coef=balance))]:
            losses = {"grpo": grpo_micro_loss(graphdef, GRPOConfig(kl_coef=0.0), update, 1),
                      "sft": sft_micro_loss(graphdef, update)}
            for kind, loss_fn in losses.items():  # (SFT's gradient is not read: its loss alone is computed)
                loss_of = lambda p: loss_fn(p, bias, None, batch)
                (loss, (stats, _)), grad = (jax.value_and_grad(loss_of, has_aux=True)(params) if kind == "grpo"
                                            else (loss_of(params), None))
                out[f"{kind}/{name}"] = (loss, stats, grad)
        return out

    out = everything(params)
    assert out["z_loss"] > 0 and out["aux_loss"] > 0 and abs(out["z_loss"] - out["aux_loss"]) > 0.01
    for kind in ("grpo", "sft"):
        off, stats, _ = out[f"{kind}/off"]
        np.testing.assert_allclose(stats["z_loss"], out["z_loss"], rtol=1e-6)
        np.testing.assert_allclose(stats["aux_loss"], out["aux_loss"], rtol=1e-6)
        np.testing.assert_allclose(out[f"{kind}/on"][0] - off, z * out["z_loss"] + balance * out["aux_loss"],
                                   rtol=1e-5, atol=1e-6)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(out["grpo/off"][2]))
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(out["grpo/on"][2]))


def scripted_evaluations(pass_at_1):
    """Held-out evaluation replaced by figures with the given pass@1 values, in order (no sampling)."""
    values = iter(pass_at_1)

    def evaluate(sampler, states, tokenizer, template, problems, *args, **kwargs):
        figures = {"pass@1": next(values), "cons@2": 0.0, "pass@2": 0.0, "k": 2, "n_problems": len(problems),
                   "accuracy_by_difficulty": {}, "response_length": 1.0, "format_rate": 0.0,
                   "reflection_rate": 0.0, "pool_failures": 0}
        return figures, []
    return evaluate


def test_keep_best_keeps_the_checkpoint_with_the_best_pass_at_1(tmp_path, monkeypatch):
    """Three 1-step SFT stages, each ending in an evaluation (scripted pass@1 0.25, 0.75, 0.5): with
    keep 1 and keep_best 1 the latest checkpoint (3) and the best (2) remain, not the first."""
    monkeypatch.setattr(held_out, "evaluate", scripted_evaluations([0.25, 0.75, 0.5]))
    stages = ", ".join(f"{{name: s{i}, kind: sft, steps: 1, batch_size: 8}}" for i in range(3))
    config = load_config(CONFIG, [f"stages=[{stages}]", "checkpoint.keep=1", "checkpoint.keep_best=1"])
    summary = Trainer(config, tmp_path).run()
    assert [(e["step"], e["pass@1"]) for e in summary["evals"]] == [(1, 0.25), (2, 0.75), (3, 0.5)]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2, 3]
