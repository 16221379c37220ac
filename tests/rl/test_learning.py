"""Learning, measured: GRPO raises the reward of a task a tiny policy learns in seconds and SFT lowers its
loss; with the advantages' sign flipped, the rewards or labels one row out of place, or SFT's loss negated,
they do not. Each break is injected in this process by monkeypatching the module attribute the stage calls
(`compute_advantages` in rl.train.stage_grpo, `sft_batch` in rl.train.stage_sft, `sft_micro_loss` in
rl.train.sft): the trainer code itself runs unchanged.

The policy (tests/rl/data/learn_tiny.yaml): one dense layer of hidden size 32 and a 352-piece tokenizer;
the task and reward are tests/rl/learning_probes.py's. Runs are deterministic on CPU; each test runs one
seed, and its threshold comes from five seeds measured per variant (numbers above each test) on XLA's optimised
build. The suite compiles with XLA's cheap settings (tests/conftest.py), where seed 0 gives the same figures to
within a hundredth (GRPO gains 0.586 / -0.305 / -0.121, SFT losses 0.040 / 1.046 / 45.0; optimised: 0.58, -0.30
.. -0.20, -0.11 .. +0.01 and 0.04, 1.045, 44-46) in 96 s instead of ~150 s of compiling optimised programs.
"""

import pathlib

import numpy as np
import pytest

from r1jax.rl.config import load_config
from r1jax.rl.train import sft, stage_grpo, stage_sft
from r1jax.rl.train.trainer import Trainer

import tests.rl.learning_probes  # noqa: F401  (registers the probe task here; the workers import it too)
from tests.rl.conftest import metrics_rows

CONFIG = pathlib.Path(__file__).parent / "data" / "learn_tiny.yaml"
GRPO_STEPS, SFT_STEPS = 20, 50


def train(run_dir, *overrides) -> list[dict]:
    Trainer(load_config(CONFIG, ["seed=0", *overrides]), run_dir).run()
    return metrics_rows(run_dir)


def flip_advantages(compute):
    def flipped(rewards, *args):
        adv, metrics = compute(rewards, *args)
        return -adv, metrics
    return flipped


def rewards_one_row_off(compute):
    """Each completion gets its neighbour's reward (rows are prompt-major: 7 of 8 stay in the group)."""
    def misaligned(rewards, *args):
        return compute(np.roll(rewards.reshape(-1), 1).reshape(rewards.shape), *args)
    return misaligned


def reward_gain(rows) -> float:
    """Mean reward of the last 4 steps minus that of the first 2 (the policy before and after one update)."""
    rewards = [r["reward/total"] for r in rows]
    return float(np.mean(rewards[-4:]) - np.mean(rewards[:2]))


# 20 GRPO steps of 8 prompts x 8 one-token samples, lr 1e-2, no KL. The reward pays a completion that
# starts with a lowercase ASCII letter: 0.23-0.38 at the first step. Gains measured over seeds 0-4:
# correct 0.58-0.67 (seed 0: 0.58), advantages flipped -0.30..-0.20, rewards one row off -0.11..+0.01.
# The threshold, 0.3, sits 0.28 below the least correct gain and 0.29 above the largest misaligned one; the
# noise of one step's 64-sample mean is ~0.06 (binomial), ~0.05 on the gain.
GAIN_THRESHOLD = 0.3


@pytest.mark.parametrize("break_advantages, learns", [
    (None, True),
    (flip_advantages, False),
    (rewards_one_row_off, False),
], ids=["correct", "advantages_flipped", "rewards_one_row_off"])
def test_grpo_raises_the_reward_only_when_rewards_reach_their_rows(tmp_path, monkeypatch, break_advantages,
                                                                   learns):
    if break_advantages is not None:
        monkeypatch.setattr(stage_grpo, "compute_advantages", break_advantages(stage_grpo.compute_advantages))
    rows = train(tmp_path, f"stages.0.steps={GRPO_STEPS}")
    assert len(rows) == GRPO_STEPS
    gain = reward_gain(rows)
    assert (gain > GAIN_THRESHOLD) == learns, f"reward gain {gain:.3f} over {GRPO_STEPS} steps"


def labels_one_row_off(sft_batch):
    """Each prompt gets its neighbour's solution (the batch's solutions rolled by one row)."""
    def misaligned(tokenizer, template, rows, *args, **kwargs):
        solutions = [row["solution"] for row in rows]
        rolled = [{**row, "solution": s} for row, s in zip(rows, solutions[-1:] + solutions[:-1])]
        return sft_batch(tokenizer, template, rolled, *args, **kwargs)
    return misaligned


def negated_loss(sft_micro_loss):
    def negated(graphdef, update):
        loss_fn = sft_micro_loss(graphdef, update)

        def minus(*args):
            loss, aux = loss_fn(*args)
            return -loss, aux
        return minus
    return negated


# 50 SFT steps of 32 "copy X" -> "X" rows, lr 1e-2; `sft/loss` is the mean NLL of the completion's two
# tokens (X, then EOS) before each update: ~5.9 at the start. A policy that ignores the prompt predicts X (one
# of 8 letters, uniform) with probability 1/8 on average: its expected loss is at least ln(8) / 2 = 1.04. Rows whose
# solutions are rolled by one carry no information on their labels in the prompt, so that floor binds them.
# Mean of the last 5 losses over seeds 0-4: correct 0.04-0.24 (seed 0: 0.04); labels one row off
# 1.045-1.049 (the floor); loss negated 44-46 (it climbs every step). The threshold, 0.5, is half the floor
# and twice the worst correct run.
LOSS_THRESHOLD = 0.5


@pytest.mark.parametrize("module, name, break_", [
    (None, None, None),
    (stage_sft, "sft_batch", labels_one_row_off),
    (sft, "sft_micro_loss", negated_loss),
], ids=["correct", "labels_one_row_off", "loss_negated"])
def test_sft_lowers_the_loss_below_what_ignoring_the_prompt_allows(tmp_path, monkeypatch, module, name, break_):
    if break_ is not None:
        monkeypatch.setattr(module, name, break_(getattr(module, name)))
    rows = train(tmp_path, f"stages=[{{name: sft, kind: sft, steps: {SFT_STEPS}, batch_size: 32}}]")
    assert len(rows) == SFT_STEPS
    final = float(np.mean([r["sft/loss"] for r in rows[-5:]]))
    assert (final < LOSS_THRESHOLD) == (break_ is None), f"loss {rows[0]['sft/loss']:.3f} -> {final:.3f}"
