"""What a run records about itself: the summary (final evaluation, each stage's end, the RL gain, rejection
sampling's datasets), the metrics rows (learning rate, tokens/s, pool statuses, lengths, reflection words) and
the evaluation figures in TensorBoard; by hand-computed cases and on the shared finished run of
tests/rl/data/train_tiny.yaml (2 SFT steps at the stage's lr 0.003, then 3 GRPO steps at optimizer.lr 0.001)."""

import json
import types

import numpy as np
import pytest

from r1jax.rl.config import load_config
from r1jax.rl.decoding import Rollout
from r1jax.rl.rewards.pool import ScoreResult
from r1jax.rl.train import stage_grpo
from r1jax.rl.train.config import StageConfig
from r1jax.rl.train.context import summary_with
from r1jax.rl.train.metrics import MetricsWriter
from r1jax.rl.train.outcome import describe, rl_gain
from r1jax.rl.train.rollouts import length_metrics, reward_metrics
from r1jax.rl.train.trainer import Trainer
from r1jax.rl.train.update_stage import UpdateStage
from tests.rl.conftest import TRAIN_CONFIG, metrics_rows
from tests.rl.test_metrics import purged_scalars


def test_the_summary_ends_with_the_last_evaluation_and_each_stages_end_step(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["final_eval"] == summary["evals"][-1] and summary["final_eval"]["step"] == 5
    assert summary["final_step"] == 5
    assert [(s["name"], s["end_step"]) for s in summary["stages"]] == [("sft", 2), ("grpo", 5)]


def test_a_stages_own_lr_is_the_one_it_trains_at(finished_run):
    rows = metrics_rows(finished_run)
    assert [r["stage"] for r in rows] == ["sft"] * 2 + ["grpo"] * 3
    assert all("sft/loss" in r and "loss" not in r for r in rows[:2])  # SFT's loss, apart from GRPO's
    assert [r["lr"] for r in rows] == pytest.approx([0.003] * 2 + [0.001] * 3, rel=1e-6)


def test_grpo_tokens_per_s_is_the_sampling_rate(finished_run):
    """tokens_per_s: the step's generated tokens over its sampling seconds (not the whole step's)."""
    for row in (r for r in metrics_rows(finished_run) if r["stage"] == "grpo"):
        assert row["tokens_per_s"] == pytest.approx(row["generated_tokens"] / row["time/sample_s"], rel=1e-6), row


def test_rl_gain_compares_with_the_grpo_stages_last_evaluation():
    """With eval.every, a GRPO stage evaluates several times: the gain is to its last (its end), not its first."""
    def entry(stage, step, p):
        return {"stage": stage, "step": step, "pass@1": p, "format_rate": p, "k": 2, "n_problems": 4}

    evals = [entry("sft", 2, 0.1), entry("grpo", 4, 0.2), entry("grpo", 6, 0.5)]
    gain = rl_gain(evals, [StageConfig(name="sft", kind="sft"), StageConfig(name="grpo", kind="grpo")])
    assert (gain["before_pass@1"], gain["after_pass@1"], gain["format_rate"]) == (0.1, 0.5, 0.5)
    assert gain["gain_points"] == pytest.approx(40.0)


def test_rl_gain_is_from_the_last_evaluation_before_the_first_grpo_stage():
    def entry(stage, step, p, k=2, n=4):
        return {"stage": stage, "step": step, "pass@1": p, "format_rate": p, "k": k, "n_problems": n}

    stages = [StageConfig(name="sft", kind="sft"), StageConfig(name="r1", kind="grpo"),
              StageConfig(name="r2", kind="grpo")]
    evals = [entry("sft", 1, 0.05, k=1, n=2), entry("sft", 2, 0.125, k=1, n=2), entry("r1", 4, 0.5),
             entry("r2", 6, 0.75)]
    gain = rl_gain(evals, stages)
    assert gain == {"before_stage": "sft", "before_pass@1": 0.125, "after_stage": "r1", "after_pass@1": 0.5,
                    "gain_points": 37.5, "format_rate": 0.5, "k": 2, "n_problems": 4}
    assert describe(gain) == ("GRPO moved held-out pass@1 from 0.125 (sft) to 0.500 (r1): +37.5 points; "
                              "format 0.50 (4 problems x 2 samples)")
    assert describe({**gain, "gain_points": -2.5}).endswith(": -2.5 points; format 0.50 (4 problems x 2 samples)")
    assert rl_gain(evals[2:], stages) is None  # no evaluation before GRPO: nothing to compare with
    assert rl_gain(evals[:2], stages) is None  # GRPO never evaluated


def test_the_summary_keeps_the_datasets_of_earlier_stages():
    summary = {"evals": [], "datasets": [{"stage": "rs1"}]}
    assert summary_with(summary, (), [{"stage": "rs2"}])["datasets"] == [{"stage": "rs1"}, {"stage": "rs2"}]


def test_a_stages_last_step_is_not_a_periodic_save():
    """finish_stage saves the last step as done: a periodic save there too would write the checkpoint twice."""
    stage = types.SimpleNamespace(ctx=types.SimpleNamespace(config=types.SimpleNamespace(
        checkpoint=types.SimpleNamespace(every=2))), stage=types.SimpleNamespace(steps=4))
    assert [s for s in range(1, 5) if UpdateStage._save_due(stage, s)] == [2]


def test_pool_ok_is_logged_0_when_nothing_was_scored():
    """A step whose every completion failed logs pool/ok = 0 (a gap in the figure would hide the failure)."""
    out = reward_metrics([ScoreResult({"accuracy": 0.0}, 0.0, "error", "KeyError")] * 3, ["accuracy"])
    assert out["pool/ok"] == 0 and out["pool/error"] == 3 and out["reward/total"] == 0.0


def test_length_metrics_by_hand():
    """A prompt of 2 columns, a budget of 4, eos id 9: lengths 1, 2, 4 (stopped), 4 (cut): mean 2.75, max 4, one
    row of four truncated, 11 tokens."""
    completions = np.array([[9, 0, 0, 0], [5, 9, 0, 0], [5, 5, 5, 9], [5, 5, 5, 5]], np.int32)
    tokens = np.concatenate([np.ones((4, 2), np.int32), completions], axis=1)
    rollout = Rollout(tokens, tokens > 0, np.zeros_like(tokens), np.zeros((4, 4), np.float32),
                      np.array([1, 2, 4, 4], np.int32), np.zeros((1, 4, 6, 1), np.int32), np.int32(4))
    assert length_metrics(rollout, 4, [9]) == {"response_length/mean": 2.75, "response_length/max": 4,
                                               "truncation_rate": 0.25, "generated_tokens": 11,
                                               "completion_columns": 4}


def test_every_evaluation_figure_reaches_tensorboard(tmp_path):
    writer = MetricsWriter(tmp_path, plots=False)
    writer.log_eval({"stage": "grpo", "step": 3, "k": 4, "pass@1": 0.5, "cons@4": 0.75, "pass@4": 1.0,
                     "format_rate": 0.25, "response_length": 9.0, "reflection_rate": 0.125})
    writer.close()
    assert purged_scalars(tmp_path / "tensorboard") == {
        ("eval/pass_1", 3): 0.5, ("eval/cons_4", 3): 0.75, ("eval/pass_4", 3): 1.0, ("eval/format_rate", 3): 0.25,
        ("eval/response_length", 3): 9.0, ("eval/reflection_rate", 3): 0.125}


def test_grpo_rows_log_the_advantages_reward_statistics(finished_run):
    """reward_mean (the advantages' groups' mean) is the batch's reward/total; the zero-std share is a share."""
    for row in (r for r in metrics_rows(finished_run) if r["stage"] == "grpo"):
        assert row["reward_mean"] == pytest.approx(row["reward/total"], abs=1e-6), row
        assert 0.0 <= row["frac_reward_zero_std"] <= 1.0 and row["reward_std"] >= 0.0, row


def test_a_grpo_stages_last_step_is_evaluated_once_and_its_rows_count_the_configured_reflection_words(
        tmp_path, monkeypatch):
    """eval.every dividing the stage's steps: the stage's end evaluates its last step; a periodic evaluation
    there too would evaluate the same policy twice and list it twice. eval.reflection_words is "counted in GRPO
    rows and evaluations": each row counts the configured words (one run serves both: each Trainer traces its
    programs anew)."""
    seen = []
    monkeypatch.setattr(stage_grpo, "reflection_rate",
                        lambda texts, words=None: seen.append(None if words is None else tuple(words)) or 0.0)
    config = load_config(TRAIN_CONFIG, ["stages=[{name: grpo, kind: grpo, steps: 2}]", "eval.every=1",
                                        "eval.num_problems=2", "eval.samples=1", "checkpoint.every=100",
                                        "eval.reflection_words=[hmm]"])
    summary = Trainer(config, tmp_path / "run").run()
    assert seen == [("hmm",)] * 2  # one per GRPO row
    assert [(e["stage"], e["step"]) for e in summary["evals"]] == [("grpo", 1), ("grpo", 2)]
    assert [("eval/pass@1" in r) for r in metrics_rows(tmp_path / "run")] == [True, False]
