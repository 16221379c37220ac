"""`r1jax train` end to end on a seconds-scale config: artifacts and schema, exact resume after SIGINT and
SIGKILL of real subprocesses at known steps (a stop on a stage's last step included), restore on
another mesh and in a process with fewer devices, and a mismatched checkpoint refused early."""

import json
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from r1jax.errors import UserError
from r1jax.rl.checkpoint import load_policy
from r1jax.rl.config import load_config
from r1jax.rl.host_info import cpu_model_and_flags, vector_isa
from r1jax.rl.train.trainer import Position, Trainer
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.rules import Rules

from tests.rl.conftest import (TRAIN_CONFIG, comparable, console, latest_checkpoint, metrics_rows, run_series,
                               run_to_end, subprocess_env, summary)

TOTAL_STEPS = 5  # 2 SFT + 3 GRPO


def final_params(run_dir):
    _, policy = load_policy(run_dir)
    from flax import nnx

    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(policy))]


def test_run_directory_has_every_artifact_and_schema(finished_run):
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "tokenizer/tokenizer.model"):
        assert (finished_run / name).exists(), name
    assert any((finished_run / "tensorboard").iterdir())
    assert not (finished_run / "plots").exists()  # the config's `plots: false` (test_pipeline.py draws them)
    assert list((finished_run / "samples").glob("*.jsonl"))
    metrics = metrics_rows(finished_run)
    assert [r["global_step"] for r in metrics] == list(range(1, TOTAL_STEPS + 1))
    for row in metrics:
        assert {"global_step", "step", "stage", "wall_time", "tokens_per_s", "grad_norm", "skipped",
                "expert_load/cv"} <= set(row)
    grpo = [r for r in metrics if r["stage"] == "grpo"]
    for row in grpo:
        assert {"loss", "pg_loss", "kl", "entropy", "clip_low_frac", "clip_high_frac", "ratio_max",
                "sampler_logp_absdiff", "reward/total", "reward/accuracy", "reward/format", "pool/ok",
                "response_length/mean", "response_length/max", "truncation_rate", "frac_reward_zero_std",
                "reflection_rate", "aux_loss", "time/sample_s", "time/rollout_s", "time/update_s"} <= set(row)
        assert 0 < row["time/sample_s"] <= row["time/rollout_s"] < row["step_time_s"]
        assert row["pool/ok"] == 8 and row["sampler_logp_absdiff"] < 1e-4
    summary = json.loads((finished_run / "summary.json").read_text())
    # after SFT (step 2), GRPO's periodic eval (eval.every 2: inside GRPO step 2, after its update = global
    # step 4), and the end of GRPO (5); each labelled with the step whose policy it evaluated
    assert [(e["stage"], e["step"]) for e in summary["evals"]] == [("sft", 2), ("grpo", 4), ("grpo", 5)]
    # what the run ran on (rl.host_info): the subprocess's two CPU devices and this host's vector instructions
    host = summary["host"]
    assert (host["backend"], host["local_devices"], host["processes"]) == ("cpu", 2, 1)
    assert host["jax_version"] == jax.__version__
    assert host["cpu_vector_isa"] == vector_isa(cpu_model_and_flags()[1])
    assert metrics[3]["eval/pass@1"] == summary["evals"][1]["pass@1"]
    assert {f"{e['stage']}-step{e['step']}.jsonl" for e in summary["evals"]} == \
        {p.name for p in (finished_run / "samples").iterdir()}
    for entry in summary["evals"]:
        assert {"stage", "checkpoint", "pass@1", "k", "n_problems", "cons@2", "pass@2", "format_rate",
                "response_length"} <= set(entry)
        assert entry["k"] == 2 and entry["n_problems"] == 4 and 0 <= entry["pass@1"] <= 1
        assert entry["checkpoint"].endswith(f"checkpoints/{entry['step']}")


def test_the_run_directory_holds_every_name_the_readme_documents(finished_run):
    """README, "A run directory": each file, checkpoint item, metrics.jsonl key and summary.json field it names
    for a run like this one (SFT then GRPO with a KL term, no packing, masks or staleness), under that name: a
    renamed key would leave the README describing a field no run writes."""
    metrics = metrics_rows(finished_run)
    every = {"global_step", "step", "stage", "wall_time", "tokens_per_s", "lr", "grad_norm", "grad_norm_clipped",
             "skipped", "consecutive_skips", "total_skips", "token_count", "aux_loss", "z_loss", "expert_load/min",
             "expert_load/max", "expert_load/cv"}
    sft = every | {"sft/loss", "token_accuracy"}
    grpo = every | {"loss", "pg_loss", "kl_loss", "kl", "entropy", "ratio", "ratio_max", "clip_low_frac",
                    "clip_high_frac", "sampler_logp_absdiff", "sampler_logp_absdiff_max", "reward/total",
                    "reward/accuracy", "reward/format", "pool/ok", "pool/recycled", "reward_mean", "reward_std",
                    "frac_reward_zero_std", "response_length/mean", "response_length/max", "truncation_rate",
                    "completion_columns", "generated_tokens", "reflection_rate", "padding_fraction", "step_time_s",
                    "time/sample_s", "time/rollout_s", "time/update_s", "time/host_wait_s", "staleness"}
    for row in metrics:
        missing = (sft if row["stage"] == "sft" else grpo) - set(row)
        assert not missing, (row["stage"], row["step"], sorted(missing))
    assert any("eval/pass@1" in row for row in metrics)  # at the GRPO step that evaluated (eval.every)
    summary = json.loads((finished_run / "summary.json").read_text())
    assert {"evals", "final_eval", "final_step", "stages", "rl_gain", "host"} <= set(summary)
    assert {"before_pass@1", "after_pass@1", "gain_points"} <= set(summary["rl_gain"])
    assert {"backend", "device_kind", "local_devices", "processes", "cpu_count", "cpu_model", "cpu_vector_isa",
            "jax_version"} <= set(summary["host"])
    for entry in summary["evals"]:
        assert {"stage", "checkpoint", "step", "pass@1", "cons@2", "pass@2", "k", "n_problems", "pool_failures",
                "accuracy_by_difficulty", "response_length", "format_rate", "reflection_rate"} <= set(entry)
    checkpoints = finished_run / "checkpoints"
    assert (checkpoints / "tokenizer" / "tokenizer.model").is_file()
    steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    within = [s for s in steps if s not in (2, 5)]  # 2: SFT's end, 5: GRPO's end; 4: inside GRPO (every 2)
    assert within and {"params", "opt_state", "ref", "config", "meta", "checksums"} <= \
        {p.name for p in (checkpoints / str(within[-1])).iterdir()}
    assert {"params", "config", "meta", "metrics", "checksums"} <= {p.name for p in (checkpoints / "5").iterdir()}
    events = b"".join(p.read_bytes() for p in (finished_run / "tensorboard").iterdir())  # tags: STAGE/NAME, eval/*
    for tag in ("sft/sft/loss", "grpo/reward/total", "eval/pass_1", "eval/cons_2", "eval/pass_2", "eval/format_rate",
                "eval/response_length", "eval/reflection_rate"):
        assert tag.encode() in events, tag


def test_sigint_and_sigkill_then_each_resume_continues_and_the_end_is_exact(finished_run, tmp_path):
    """One run stopped two ways, each resumed: SIGINT on the SFT stage's last step (global step 2) saves that
    step unfinished (exit 0); the resumed run (in the same process: tests/rl/signal_at_step.py's `series`)
    trains nothing of SFT, evaluates and closes it, and is killed (SIGKILL) after GRPO's second row (global
    step 4), before that step's boundary, so its periodic checkpoint is never written; the last, a new
    process, resumes from the SIGINT's checkpoint. Metrics, summary and parameters equal the uninterrupted
    run's, bit for bit. (A SIGTERM inside a stage, saved at its step and resumed to the same result bit for
    bit, runs in tests/rl/test_pipeline.py.)"""
    run_dir = tmp_path / "stopped"
    code, runs, states, err = run_series(run_dir, "INT:2,KILL:4")
    assert code == -signal.SIGKILL and [s["code"] for s in states] == [0], err[-3000:]
    assert f"stopped by signal {int(signal.SIGINT)} at step 2" in console(runs[0])
    stopped = states[0]["rows"]
    assert [r["global_step"] for r in stopped] == [1, 2] and max(states[0]["checkpoints"]) == 2
    assert states[0]["evals"] == []  # SFT's evaluation not yet run

    assert "from step 2 (stage sft)" in console(runs[1])
    assert max(r["global_step"] for r in metrics_rows(run_dir)) == 4 < TOTAL_STEPS
    assert latest_checkpoint(run_dir) == 2  # step 4's (checkpoint.every 2) never written

    result = run_to_end(run_dir)
    assert "from step 2 (stage sft)" in console(result.stderr)  # the checkpoint before the kill
    assert metrics_rows(run_dir)[:2] == stopped  # SFT's rows, wall times included, are the first run's
    assert comparable(metrics_rows(run_dir)) == comparable(metrics_rows(finished_run))
    assert summary(run_dir) == summary(finished_run)
    for a, b in zip(final_params(run_dir), final_params(finished_run)):
        assert a.tobytes() == b.tobytes()


def test_a_run_resumed_before_its_first_checkpoint_starts_its_metrics_over(tmp_path):
    """Killed before its first checkpoint (or stopped inside a first rejection-sampling stage, which saves none),
    a run resumed in the same directory starts over: the rows the first process wrote go, a line cut by the
    kill too, where they were kept and the new rows appended after them (global steps 1, 2, 1, 2, ...)."""
    earlier = json.dumps({"global_step": 1, "step": 1, "stage": "sft"}) + "\n" + '{"global_step": 2, "st'
    (tmp_path / "metrics.jsonl").write_text(earlier)
    trainer = Trainer(load_config(TRAIN_CONFIG), tmp_path)
    logged = []
    trainer.console.log = logged.append
    try:
        assert trainer._resume_position() == Position()
        assert (tmp_path / "metrics.jsonl").read_text() == earlier  # kept until every check has passed
        trainer._begin()
    finally:
        trainer.checkpoints.close()
        trainer.release()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert any("holds no checkpoint: the run starts over" in line for line in logged)  # (was said nowhere)


def test_restore_on_another_mesh_gives_equal_params(finished_run):
    mesh = build_mesh(ShardingConfig(data=1, fsdp=2, expert=2, tensor=2))
    _, sharded = load_policy(finished_run, mesh, Rules.preset("fsdp_expert_tensor"))
    from flax import nnx

    leaves = jax.tree.leaves(nnx.state(sharded))
    assert any(len(x.sharding.device_set) == 8 for x in leaves)
    for a, b in zip(leaves, final_params(finished_run)):
        assert np.asarray(a).tobytes() == b.tobytes()


def test_a_process_with_fewer_devices_than_the_run_loads_its_policy_on_one_device(finished_run, tmp_path):
    """The run trained on 2 devices; a 1-device process (a notebook on a laptop) loads its policy without a
    mesh onto that device, with the very bytes this 8-device process reads."""
    out = tmp_path / "leaves.npz"
    code = ("import sys, jax, numpy as np; from flax import nnx; from r1jax.rl.checkpoint import load_policy; "
            "leaves = jax.tree.leaves(nnx.state(load_policy(sys.argv[1])[1])); "
            "assert len(jax.devices()) == 1 and all(len(x.sharding.device_set) == 1 for x in leaves); "
            "np.savez(sys.argv[2], *[np.asarray(x) for x in leaves])")
    result = subprocess.run([sys.executable, "-c", code, str(finished_run), str(out)], env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as loaded:
        assert [loaded[f"arr_{i}"].tobytes() for i in range(len(loaded.files))] == \
            [b.tobytes() for b in final_params(finished_run)]


def copy_of(run_dir, tmp_path):
    """A copy of a shared run to open a Trainer on (which locks and may write its directory)."""
    import shutil

    return shutil.copytree(run_dir, tmp_path / "run")


@pytest.mark.parametrize("stages, found", [(lambda s: [s[0], {**s[1], "name": "grpo_b"}], "'grpo_b' (grpo)"),
                                           (lambda s: s[:1], "absent")])
def test_a_checkpoint_saved_in_another_stage_than_the_configs_is_refused(finished_run, tmp_path, stages, found):
    """The run's last checkpoint was saved in stage 2, 'grpo': a config whose stage 2 is another (or none) is
    refused naming both, before anything runs (it was a KeyError from the stage's own resume)."""
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["stages"] = stages(config["stages"])
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(config))
    trainer = Trainer(load_config(tmp_path / "changed.yaml"), copy_of(finished_run, tmp_path))
    try:
        expected = f"saved in stage 2, 'grpo' (grpo); the config's stage 2 is {found}:"
        with pytest.raises(UserError, match=re.escape(expected)):
            trainer._resume_position()
    finally:
        trainer.checkpoints.close()


def test_a_resume_under_changed_settings_names_each_change(finished_run, tmp_path):
    """Overrides on resume are allowed (a longer schedule, a larger eval), but the run is no longer the saved
    one's: the resume says which settings changed, from what to what; unchanged settings say nothing."""
    from r1jax.rl.train.checkpointing import config_changes

    run_dir = copy_of(finished_run, tmp_path)
    saved = load_config(run_dir / "config.yaml")
    assert config_changes(saved, saved) == []
    config = load_config(run_dir / "config.yaml", ["grpo.clip_high=0.3", "stages.1.steps=2", "seed=5"])
    assert config_changes(saved, config) == [f"grpo.clip_high: {saved.grpo.clip_high!r} -> 0.3", "seed: 0 -> 5",
                                             f"stages.1.steps: {saved.stages[1].steps} -> 2"]
    logged = []
    trainer = Trainer(config, run_dir)
    trainer.console.log = logged.append
    try:
        trainer._resume_position()
    finally:
        trainer.checkpoints.close()
    [line] = [line for line in logged if "differs" in line]
    assert "(the run will not equal an uninterrupted one): grpo.clip_high:" in line and "stages.1.steps" in line


def test_checkpoint_that_does_not_match_the_config_is_refused(finished_run, tmp_path):
    from r1jax.rl.train.trainer import Trainer

    run_dir = copy_of(finished_run, tmp_path)
    written = (run_dir / "config.yaml").read_text()
    config = load_config(run_dir / "config.yaml", ["model.hidden_size=48"])
    with pytest.raises(UserError, match="model.hidden_size: checkpoint 32 vs config 48"):
        Trainer(config, run_dir).run()
    assert (run_dir / "config.yaml").read_text() == written  # the refused config never replaced the run's
