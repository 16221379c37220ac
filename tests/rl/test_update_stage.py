"""The update step's scaffold (rl/train/update_stage.py): a step that runs out of memory is a UserError naming
what to lower and the checkpoint to resume from, not XLA's traceback."""

import dataclasses
import types

import jax
import numpy as np
import pytest

from r1jax.errors import UserError
from r1jax.rl.config import load_config
from r1jax.rl.train import update_stage
from r1jax.rl.train.update_stage import UpdateStage


def out_of_memory(state, batch):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 558849237520 bytes.")


def stage_runner(kind, latest):
    """An UpdateStage of the tiny preset's stage `kind` whose step runs out of memory (as XLA says it on CPUs
    and GPUs), after `latest` (None: no checkpoint yet)."""
    config = load_config("tiny", ["update.micro_batches=2"])
    runner = UpdateStage.__new__(UpdateStage)
    checkpoints = types.SimpleNamespace(latest_step=lambda: latest)
    runner.ctx = types.SimpleNamespace(config=config, checkpoints=checkpoints)
    runner.stage = next(s for s in config.stages if s.kind == kind)
    runner.stage_step, runner.state, runner.step_fn = 3, None, out_of_memory
    return runner


@pytest.mark.parametrize("kind,latest,named", [
    ("sft", 2, r"stage sft: the update step ran out of memory at stage step 4 on a batch of 4096 rows x 2048 "
               r"tokens \(RESOURCE_EXHAUSTED: Out of memory allocating 558849237520 bytes.\); raise "
               r"update.micro_batches \(now 2; .*\) or lower stages\[sft\].batch_size \(the rows\) or "
               r"max_sequence_length .*; the latest checkpoint \(step 2\) is intact"),
    ("grpo", None, r"stage grpo: .* or lower grpo.prompts_per_step or grpo.group_size .*no checkpoint yet"),
])
def test_an_update_out_of_memory_names_what_to_lower(kind, latest, named):
    """A huge SFT batch of long rows failed at its first step with XLA's traceback (RESOURCE_EXHAUSTED: Out of
    memory allocating 558849237520 bytes, raised where the step's metrics were read)."""
    batch = {"tokens": np.zeros((4096, 2048), np.int32)}
    with pytest.raises(UserError, match=named):
        stage_runner(kind, latest).update(batch)


@pytest.mark.parametrize("failure", [
    jax.errors.JaxRuntimeError("INTERNAL: Out of memory allocating 558849237520 bytes."),  # XLA's other phrasing
    MemoryError("Unable to allocate 520. GiB for an array with shape (4096, 2048, 16384)"),  # the host's
])
def test_every_out_of_memory_phrasing_names_what_to_lower(failure):
    """The update step spotted only XLA's RESOURCE_EXHAUSTED: its other phrasing and the host's MemoryError,
    which main reads as out of memory, reached main without the batch and the checkpoint to resume from."""
    runner = stage_runner("sft", 2)

    def exhausted(state, batch):
        raise failure

    runner.step_fn = exhausted
    with pytest.raises(UserError, match=r"ran out of memory at stage step 4 on a batch of 4 rows x 3 tokens .*"
                                        r"the latest checkpoint \(step 2\) is intact"):
        runner.update({"tokens": np.zeros((4, 3), np.int32)})


def test_other_runtime_errors_pass_through():
    runner = stage_runner("sft", None)

    def broken(state, batch):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    runner.step_fn = broken
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        runner.update({"tokens": np.zeros((2, 2), np.int32)})


def test_a_warmup_longer_than_the_stage_keeps_warming_up(tmp_path):
    """warmup_cosine with the stage's 2 updates inside a 4-update warmup: lr x (step + 1) / 4 at each (the
    schedule's end is raised past the warmup, not refused as an optimizer.total_steps the user never set)."""
    from r1jax.rl.train.trainer import Trainer
    from tests.rl.conftest import TRAIN_CONFIG, metrics_rows

    config = load_config(TRAIN_CONFIG, ["stages=[{name: sft, kind: sft, steps: 2, batch_size: 8, lr: 0.004}]",
                                        "optimizer.schedule=warmup_cosine", "optimizer.warmup_steps=4",
                                        "optimizer.min_lr_ratio=0.1", "eval.num_problems=2", "eval.samples=1"])
    Trainer(config, tmp_path / "run").run()
    assert [r["lr"] for r in metrics_rows(tmp_path / "run")] == pytest.approx([0.001, 0.002], rel=1e-6)


def test_meanwhile_runs_after_the_steps_are_dispatched_and_before_their_metrics_are_read(monkeypatch):
    events = []
    config = load_config("tiny")
    runner = UpdateStage.__new__(UpdateStage)
    runner.ctx = types.SimpleNamespace(config=config)
    runner.stage = next(s for s in config.stages if s.kind == "grpo")
    runner.stage_step, runner.state = 0, types.SimpleNamespace(opt_state=None)
    runner.opt_cfg, runner.schedule = config.optimizer, lambda count: 0.5

    def step(state, batch):
        events.append("step")
        return state, {"loss": np.float32(1.0), "consecutive_skips": np.int32(0)}

    real_get = jax.device_get

    def device_get(tree):
        events.append("metrics read")
        return real_get(tree)

    runner.step_fn = step
    monkeypatch.setattr(jax, "device_get", device_get)
    monkeypatch.setattr(update_stage, "applied_updates", lambda opt_state: 2)
    metrics = runner.update({"tokens": np.zeros((2, 2), np.int32)}, iterations=3,
                            meanwhile=lambda: events.append("meanwhile"))
    assert events == ["step", "step", "step", "meanwhile", "metrics read"]
    assert metrics["loss"] == 1.0 and metrics["lr"] == 0.5


def test_a_step_boundary_stops_on_an_earlier_save_that_failed():
    """A background save the disk refused was raised at the next save only (`checkpoint.every` steps trained for
    nothing meanwhile): the next step boundary raises it, before the step is counted or its metrics written."""
    full = ValueError("RESOURCE_EXHAUSTED: Failed writing: \"/r/checkpoints/2.orbax-checkpoint-tmp/d/a\": No space "
                      "left on device [os_error_code='28']")
    written = []

    def raise_failed_save():
        raise full

    config = load_config("tiny", ["checkpoint.every=100"])
    runner = UpdateStage.__new__(UpdateStage)
    runner.ctx = types.SimpleNamespace(config=config, checkpoints=types.SimpleNamespace(
        raise_failed_save=raise_failed_save), metrics=types.SimpleNamespace(write=written.append))
    runner.stage = next(s for s in config.stages if s.kind == "sft")
    runner.stage_step = runner.global_step = 2
    with pytest.raises(ValueError) as raised:
        runner.finish_step({"loss": 1.0}, {})
    assert raised.value is full and written == [] and runner.global_step == 2


@pytest.mark.parametrize("lr,updates_per_step,warmup,total", [(None, 1, 0, 10), (None, 3, 0, 30), (0.5, 3, 40, 41)])
def test_a_stages_schedule_ends_after_its_steps_times_the_updates_each_applies(monkeypatch, lr, updates_per_step,
                                                                               warmup, total):
    """warmup_cosine without optimizer.total_steps: the schedule counts applied updates, so it ends after the
    stage's steps x mu (GRPO's grpo.num_iterations), past a longer warmup; the stage's own lr replaces
    optimizer.lr."""
    class Built(Exception):
        pass

    def schedule(opt_cfg):
        raise Built(opt_cfg)

    monkeypatch.setattr(update_stage, "lr_schedule", schedule)
    config = load_config("tiny", ["optimizer.schedule=warmup_cosine", f"optimizer.warmup_steps={warmup}"])
    stage = next(s for s in config.stages if s.kind == "grpo")
    stage = dataclasses.replace(stage, steps=10, lr=lr)
    with pytest.raises(Built) as built:
        UpdateStage(types.SimpleNamespace(config=config), 0, stage, None, with_ref=False, make_step=None,
                    updates_per_step=updates_per_step)
    opt_cfg = built.value.args[0]
    assert opt_cfg.total_steps == total and opt_cfg.lr == (config.optimizer.lr if lr is None else lr)


def test_an_evaluation_names_a_checkpoint_only_at_a_step_that_saves_one():
    """checkpoint.every = 2 over a 5-step stage: steps 2 and 4 save periodically, step 5 as the stage's end; an
    evaluation at the step being finished (global step + 1) counts that step."""
    asked = []
    runner = UpdateStage.__new__(UpdateStage)
    runner.ctx = types.SimpleNamespace(
        config=types.SimpleNamespace(checkpoint=types.SimpleNamespace(every=2)),
        evaluate=lambda name, sampler, policy, step, checkpointed: asked.append((step, checkpointed)) or {})
    runner.stage = types.SimpleNamespace(name="grpo", steps=5)
    runner.state, runner.evals = types.SimpleNamespace(params=None, bias=None), []
    for stage_step in range(6):
        runner.stage_step, runner.global_step = stage_step, 10 + stage_step  # the stage began after global step 10
        runner.evaluate(None, runner.global_step + 1)  # mid-step: the step being finished
    runner.evaluate(None, runner.global_step)  # the stage's end
    assert asked == [(11, False), (12, True), (13, False), (14, True), (15, True), (16, False), (15, True)]


def test_a_stop_requested_between_periodic_saves_saves_that_step_with_the_queue_and_stops():
    """checkpoint.every = 100: step 3 neither saves nor stops; a stop requested at step 4 saves it (the trees and
    meta `saved_with` adds beside the optimizer state: GRPO's queue sampled ahead), waits for the save, and stops."""
    from r1jax.rl.train.context import Stopped

    saved, waited = [], []
    config = load_config("tiny", ["checkpoint.every=100"])
    runner = UpdateStage.__new__(UpdateStage)
    runner.ctx = types.SimpleNamespace(
        config=config, graphdef=None, metrics=types.SimpleNamespace(write=lambda row: row),
        console=types.SimpleNamespace(update=lambda *a: None), stop=types.SimpleNamespace(requested=lambda s: s == 4),
        checkpoints=types.SimpleNamespace(raise_failed_save=lambda: None, save=lambda *a, **k: saved.append(k),
                                          wait=lambda: waited.append(True)))
    runner.stage, runner.index = next(s for s in config.stages if s.kind == "sft"), 0
    runner.state = types.SimpleNamespace(params="p", bias="b", opt_state="o", ref=None)
    runner.start, runner.evals = types.SimpleNamespace(summary={"evals": []}), []
    runner.stage_step = runner.global_step = 2
    queue = lambda: ({"ahead": "q"}, {"ahead": ["m"]})
    runner.finish_step({}, {"data_state": 3}, saved_with=queue)
    assert saved == [] and waited == []
    with pytest.raises(Stopped):
        runner.finish_step({}, {"data_state": 4}, saved_with=queue)
    [save] = saved
    assert (save["stage_step"], save["global_step"], save["stage_done"]) == (4, 4, False) and waited == [True]
    assert save["trees"] == {"opt_state": "o", "ahead": "q"} and save["extra_meta"] == {"data_state": 4, "ahead": ["m"]}
