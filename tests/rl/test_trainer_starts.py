"""What a stage starts from and when it stops: `init_from` a Hugging Face directory through the trainer, and
the halt after `optimizer.max_consecutive_skips` non-finite updates in a row (in-process, 8 CPU devices)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from r1jax.errors import UserError
from r1jax.model.hf_io import export_hf
from r1jax.rl.checkpoint import load_policy
from r1jax.rl.config import load_config
from r1jax.rl.train.trainer import Trainer

from tests.rl.conftest import TRAIN_CONFIG


def leaves(policy):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(policy))]


def test_a_stage_starts_from_a_hugging_face_directory(finished_run, tmp_path):
    _, trained = load_policy(finished_run)
    export_hf(trained, tmp_path / "hf")
    # weights only (export_hf without a tokenizer): the tokenizer they were trained with is named
    config = load_config(TRAIN_CONFIG, [f"stages=[{{name: sft, kind: sft, steps: 0, init_from: {tmp_path / 'hf'}}}]",
                                        f"tokenizer.path={finished_run / 'tokenizer'}"])
    summary = Trainer(config, tmp_path / "run").run()
    assert [e["stage"] for e in summary["evals"]] == ["sft"]
    _, started = load_policy(tmp_path / "run")  # zero steps: the stage's checkpoint is the imported policy
    for a, b in zip(leaves(started), leaves(trained)):
        assert a.tobytes() == b.tobytes()


def test_grpo_halts_when_no_completion_is_scored_steps_in_a_row(tmp_path):
    """A reward that fails on every item (here a KeyError) scored every completion 0 and the run trained on
    nothing to its end, rc 0; now it halts at the second such step (reward_pool.max_failed_steps=2), before its
    update, naming the failure; the first step's update and checkpoint stand."""
    config = load_config(TRAIN_CONFIG, ["stages=[{name: grpo, kind: grpo, steps: 3}]", "checkpoint.every=1",
                                        "rewards.names=[broken,accuracy,format]", "rewards.weights=[1.0,0.0,0.0]",
                                        "reward_pool.import_modules=[tests.rl.reward_probes]",
                                        "reward_pool.max_failed_steps=2", "eval.every=0"])
    with pytest.raises(UserError, match=r"stage grpo: no completion was scored in 2 steps in a row .*halting at "
                                        r"step 2, before its update: 8 error, e.g. KeyError: 'answer'"):
        Trainer(config, tmp_path / "run").run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and rows[0]["pool/error"] == 8
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]


def test_unscored_steps_halt_at_max_failed_steps_in_a_row_and_never_for_0():
    from r1jax.rl.train.stage_grpo import halts_unscored

    assert [n for n in range(6) if halts_unscored(n, 3)] == [3]
    assert not any(halts_unscored(n, 0) for n in range(6))  # 0: never halt (a scored step has 0 failed)


def test_consecutive_non_finite_updates_halt_the_run_with_a_clear_error(tmp_path):
    config = load_config(TRAIN_CONFIG, ["stages=[{name: sft, kind: sft, steps: 6, batch_size: 8, lr: 1.0e+30}]",
                                        "optimizer.max_consecutive_skips=2", "optimizer.grad_clip_norm=null"])
    with pytest.raises(UserError, match=r"stage sft: 2 consecutive non-finite updates .* halting"):
        Trainer(config, tmp_path / "run").run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows][-1:] == [1.0] and rows[-1]["consecutive_skips"] == 1.0
    assert rows[-1]["grad_norm"] is None  # non-finite figures are JSON null
    assert not (tmp_path / "run" / "summary.json").exists() or "final_eval" not in json.loads(
        (tmp_path / "run" / "summary.json").read_text())


@pytest.mark.parametrize("dtype, stages, told", [
    ("bfloat16", None, True), ("float32", None, False),
    ("bfloat16", [{"name": "rs", "kind": "rejection_sampling", "steps": 1}], False)])
def test_training_narrow_weights_is_told(tmp_path, capsys, monkeypatch, dtype, stages, told):
    """A bfloat16 Hugging Face checkpoint keeps its dtype: GRPO at lr 3e-6 then moved nothing, silently."""
    overrides = [f"model.param_dtype={dtype}"] + ([f"stages={json.dumps(stages)}"] if stages else [])
    config = load_config(str(TRAIN_CONFIG), overrides)
    monkeypatch.setattr(Trainer, "_run_stage", lambda *args: None)  # the note comes before any stage
    Trainer(config, tmp_path / "run").run()
    err = " ".join(capsys.readouterr().err.split())
    assert ("note: model.param_dtype is bfloat16: Adam steps of lr ~1e-6 round away" in err) is told
