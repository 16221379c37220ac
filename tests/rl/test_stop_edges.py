"""Stops at the edges of a stage (found by a review of checkpointing and resume): a SIGTERM while the last
stage's end checkpoint is written lets the write finish (it ended the process mid-write: exit 143, the
checkpoint lost), and one during a stage's end-of-stage evaluation stops the run there, before the next stage
is built, compiled and stepped once."""

import os
import signal

import yaml

from r1jax.rl.config import load_config
from r1jax.rl.train import trainer as trainer_module
from r1jax.rl.train.checkpointing import TrainCheckpointer
from r1jax.rl.train.held_out import HeldOutEval
from r1jax.rl.train.trainer import Trainer

from tests.rl.conftest import TRAIN_CONFIG, metrics_rows


def one_stage_config(tmp_path):
    raw = yaml.safe_load(TRAIN_CONFIG.read_text())
    raw["stages"] = raw["stages"][:1]  # sft, 2 steps: its end checkpoint is the run's last
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def test_a_sigterm_while_the_last_checkpoint_is_written_lets_it_finish(tmp_path, monkeypatch):
    # the signal lands when the run waits for its last save in flight, right after its last stage
    record, wait, armed = Trainer._record_stage, TrainCheckpointer.wait, []

    def record_and_arm(self, index):
        record(self, index)
        armed.append(index)

    def sigterm_then_wait(self):
        if armed:
            armed.clear()
            os.kill(os.getpid(), signal.SIGTERM)  # the default handler ended the process here (exit 143)
        return wait(self)

    monkeypatch.setattr(Trainer, "_record_stage", record_and_arm)
    monkeypatch.setattr(TrainCheckpointer, "wait", sigterm_then_wait)
    run_dir = tmp_path / "run"
    summary = Trainer(one_stage_config(tmp_path), run_dir).run()
    assert summary["final_step"] == 2 and "stopped_at_step" not in summary  # the run had ended: no stop
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name != "tokenizer")
    assert steps == ["2"]  # written whole: no step-2 temporary left
    assert (run_dir / "summary.json").is_file()


def test_a_sigterm_during_a_stages_end_evaluation_stops_before_the_next_stage(tmp_path, monkeypatch):
    call = HeldOutEval.__call__

    def sigterm_in_sft_eval(self, stage_name, *args, **kwargs):
        if stage_name == "sft":
            os.kill(os.getpid(), signal.SIGTERM)
        return call(self, stage_name, *args, **kwargs)

    built = []
    monkeypatch.setattr(HeldOutEval, "__call__", sigterm_in_sft_eval)
    runners = dict(trainer_module.STAGE_RUNNERS)
    monkeypatch.setitem(trainer_module.STAGE_RUNNERS, "grpo", lambda *a: built.append(a) or runners["grpo"](*a))
    run_dir = tmp_path / "run"
    summary = Trainer(load_config(TRAIN_CONFIG), run_dir).run()
    assert summary["stopped_at_step"] == 2 and not built  # the grpo stage was never started
    assert [row["stage"] for row in metrics_rows(run_dir)] == ["sft", "sft"]
    assert [s["name"] for s in summary["stages"]] == ["sft"]
    assert (run_dir / "checkpoints" / "2").is_dir()  # the resume point: the sft stage's end
