"""`grpo.max_staleness` (rl.train.ahead): 0 is the sequential on-policy loop to the last digit, 1 samples each
batch with the previous step's weights and takes its ratios and sampler corrections against their log-probs,
a resume after SIGKILL continues exactly, and bad values are UserErrors naming the key. The runs are real
`r1jax train` processes (tests/rl/staleness_probe.py), which share the session's compilation cache."""

import json
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from r1jax.errors import UserError
from r1jax.rl.bench.staleness import summarize_staleness
from r1jax.rl.checkpoint import load_policy
from r1jax.rl.config import load_config

from tests.rl.conftest import REPO, comparable, latest_checkpoint, metrics_rows, run_to_end, subprocess_env

CONFIG = pathlib.Path(__file__).parent / "data" / "stale_tiny.yaml"
STEPS = 4


def run(run_dir, *probe, overrides=()):
    """`r1jax train CONFIG` in a subprocess under tests/rl/staleness_probe.py's `probe` arguments; its
    (exit code, stderr). `run_dir` None: the probe names the run directories."""
    command = [sys.executable, "-m", "tests.rl.staleness_probe", *probe, "--cpu-devices", "2", "train",
               str(CONFIG), *overrides, *(() if run_dir is None else ("--run-dir", str(run_dir)))]
    result = subprocess.run(command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    return result.returncode, result.stderr


def final_params(run_dir):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(load_policy(run_dir)[1]))]


@pytest.mark.parametrize("value, message", [(-1, "grpo.max_staleness = -1: expected an integer >= 0"),
                                            ("1.5", "key 'grpo.max_staleness'"),
                                            ("true", "key 'grpo.max_staleness'")])
def test_bad_max_staleness_is_a_user_error_naming_the_key(value, message):
    with pytest.raises(UserError, match=message):
        load_config(CONFIG, [f"grpo.max_staleness={value}"])


def test_max_staleness_not_below_a_grpo_stages_steps_is_refused():
    # accepted before: at 4 (the stage's steps) every batch was drawn at step 1 by the starting weights
    load_config(CONFIG, ["grpo.max_staleness=3"])
    with pytest.raises(UserError, match=r"grpo.max_staleness=4 is not below stage grpo's 4 steps: no batch of it "
                                        r"can be that stale"):
        load_config(CONFIG, ["grpo.max_staleness=4"])


def test_an_on_policy_grpo_stage_of_0_steps_is_accepted_as_a_stage_of_another_kind_is():
    # refused before, blaming grpo.max_staleness=0 ("lower it (1 or 2 is usual)"): 0 >= the stage's 0 steps; on
    # policy (k = 0) nothing is sampled ahead, and the stage, as an sft one of 0 steps, only evaluates its start
    config = load_config(CONFIG, ["grpo.max_staleness=0",
                                  "stages=[{name: g, kind: grpo, steps: 0}, {name: s, kind: sft, steps: 0}]"])
    assert [stage.steps for stage in config.stages] == [0, 0] and config.grpo.max_staleness == 0
    with pytest.raises(UserError, match=r"grpo.max_staleness=1 is not below stage g's 0 steps"):
        load_config(CONFIG, ["grpo.max_staleness=1", "stages=[{name: g, kind: grpo, steps: 0}]"])


def test_max_staleness_with_dynamic_sampling_is_refused():
    with pytest.raises(UserError, match="grpo.max_staleness = 1: expected 0 with grpo.dynamic_sampling"):
        load_config(CONFIG, ["grpo.dynamic_sampling=true"])


AHEAD_OPTIONS = ["stages.0.steps=3", "grpo.num_iterations=2", "checkpoint.every=100", "eval.every=0"]


@pytest.fixture(scope="module")
def probed_runs(tmp_path_factory):
    """One process for three tests, the two below and the last (staleness_probe.py's `both-then-watch`):
    max_staleness 0 over 3 steps, as the trainer runs it and as the sequential loop did, then CONFIG at
    max_staleness 1 over 3 steps with mu = 2 (AHEAD_OPTIONS) recorded by `record_ahead`, then CONFIG
    (max_staleness 1) watched and killed (SIGKILL) right after the row of its last step. The later runs reuse
    the earlier ones' programs: one process start and one tracing instead of three (the mu = 2 run was an
    in-process Trainer of the test process's 8 devices, compiling its own programs).
    (exit code, stderr, {name: run directory}, {name: probe file})."""
    root = tmp_path_factory.mktemp("staleness")
    dirs = {name: root / name for name in ("pipelined", "sequential", "killed", "ahead")}
    probes = {name: root / f"{name}.jsonl" for name in ("killed", "ahead")}
    options = ["grpo.max_staleness=0", "stages.0.steps=3", "checkpoint.every=100"]
    ahead = {"dir": str(dirs["ahead"]), "out": str(probes["ahead"]), "options": AHEAD_OPTIONS}
    code, err = run(None, "both-then-watch", *(str(dirs[name]) for name in ("pipelined", "sequential", "killed")),
                    str(probes["killed"]), "KILL", str(STEPS), json.dumps(options), json.dumps(ahead))
    return code, err, dirs, probes


def test_max_staleness_0_is_the_sequential_loop_to_the_last_digit(probed_runs):
    """The trainer at max_staleness 0 against the loop as it was before (staleness_probe.sequential_grpo): the
    same rows but the new `staleness` (0) and timings, and the same final weights, bit for bit."""
    code, err, dirs, _ = probed_runs
    assert (dirs["sequential"] / "summary.json").exists(), err[-3000:]  # both finished (the third was killed)
    rows, reference = metrics_rows(dirs["pipelined"]), metrics_rows(dirs["sequential"])
    assert [r["staleness"] for r in rows] == [0, 0, 0]
    assert not (dirs["pipelined"] / "plots").exists()  # the config's `plots: false`
    assert all(0 <= r["time/host_wait_s"] <= r["time/rollout_s"] for r in rows)
    assert comparable([{k: v for k, v in r.items() if k != "staleness"} for r in rows]) == comparable(reference)
    for a, b in zip(final_params(dirs["pipelined"]), final_params(dirs["sequential"])):
        assert a.tobytes() == b.tobytes()


def test_max_staleness_1_samples_with_the_previous_weights_and_resumes_exactly_after_sigkill(probed_runs):
    """Killed right after the row of step 4, before its step boundary: the latest checkpoint is step 2's,
    holding batch 3 (sampled by version 1 and scored, not yet used). Until the kill, the probe sees each
    update's batch sampled one generate call ahead by the weights of one update before, with `old_logp`
    those weights' log-probs: what the ratio, TIS and the token mask compare. The resumed run's rows 3 and
    4 are the killed run's."""
    code, err, dirs, probes = probed_runs
    run_dir, probe = dirs["killed"], probes["killed"]
    assert code == -signal.SIGKILL, err[-3000:]
    killed = metrics_rows(run_dir)
    assert [r["global_step"] for r in killed] == [1, 2, 3, 4] and latest_checkpoint(run_dir) == 2
    assert [r["staleness"] for r in killed] == [0, 1, 1, 1]
    seen = [json.loads(line) for line in probe.read_text().splitlines()]
    # step 0 samples batches 0 and 1 with version 0; step n >= 1 samples batch n + 1 with version n
    assert [s["sampled_by_call"] for s in seen] == [0, 1, 2, 3]
    assert [s["sampler_weights_version"] for s in seen] == [0, 0, 1, 2]
    for s, row in zip(seen, killed):
        assert s["old_vs_sampling_weights"] < 1e-5, s  # old_logp: the sampling weights, recomputed
        assert s["old_vs_sampler"] < 1e-4 and row["sampler_logp_absdiff_max"] < 1e-4, s
        assert row["token_mask_frac"] == 0.0  # nothing outside [0.5, 2]: the same weights on both sides
    for s in seen[1:]:  # the weights being updated are not the ones the corrections see
        assert s["updated_vs_sampler"] > 100 * s["old_vs_sampler"], s
    assert killed[0]["ratio_max"] < 1 + 1e-4 < killed[1]["ratio_max"]  # step 1's ratio: against older weights
    meta = json.loads((run_dir / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert [b["version"] for b in meta["ahead"]] == [1]
    run_to_end(run_dir, CONFIG)
    resumed = metrics_rows(run_dir)
    assert comparable(resumed) == comparable(killed)
    assert resumed[:2] == killed[:2]  # the first process's rows, timings included


def test_staleness_bench_figures_are_medians_after_the_warm_up():
    # k = 1's last step drains the queue and samples nothing (0.9 s): not timed; k = 0's last step is (2.3 s)
    rows = {0: [{"step_time_s": t, "time/host_wait_s": w} for t, w in ((9, 9), (2.0, 0.5), (2.4, 0.7), (2.3, 0.6))],
            1: [{"step_time_s": t, "time/host_wait_s": w} for t, w in ((9, 9), (1.6, 0.1), (1.5, 0.0), (1.7, 0.1),
                                                                        (0.9, 0.0))]}
    assert summarize_staleness(rows, warmup=1) == {
        "staleness_reward_seconds": 0.02, "staleness_step_seconds_k0": 2.3, "staleness_step_seconds_k1": 1.6,
        "staleness_host_wait_seconds_k0": 0.6, "staleness_host_wait_seconds_k1": 0.1,
        "staleness_speedup": pytest.approx(2.3 / 1.6)}
    with pytest.raises(UserError, match="none after 4 warm-up steps$"):
        summarize_staleness(rows, warmup=4)
    with pytest.raises(UserError, match="none after 3 warm-up steps and the last 1, which sample nothing"):
        summarize_staleness({1: rows[1][:4]}, warmup=3)


def test_a_queue_longer_than_max_staleness_drains_with_the_sampler_on_its_own_devices():
    """Saved at k = 2 (two batches queued), resumed at k = 1 with the sampler on its own devices: each step takes
    one batch and dispatches one only while the queue is no longer than k, so the queue falls to k and stays;
    it kept its length (staleness 2 for the rest of the stage) when every step dispatched one."""
    from r1jax.rl.train.ahead import dispatch_ahead

    queued, lengths, steps = 2, [], 7
    for step in range(steps):
        while queued < 1 and queued < steps - step:  # the fill loop: up to k, none beyond it
            queued += 1
        ahead = dispatch_ahead(queued, 1, steps - step)
        queued -= 1  # the step's batch
        queued += ahead  # the batch dispatched ahead joins when the update ends
        lengths.append(queued)
    assert lengths == [1, 1, 1, 1, 1, 1, 0]
    assert dispatch_ahead(1, 1, 5) and dispatch_ahead(2, 2, 5) and not dispatch_ahead(1, 1, 1)


def test_routing_replay_turned_on_over_a_queue_saved_without_routing_is_a_user_error():
    """The batches sampled ahead were saved without their routing record (replay was off): resuming with
    routing replay on names the setting (it was a ValueError from jnp.moveaxis on the empty record)."""
    from r1jax.rl.train.ahead import ITEM, restore_queue

    meta = {ITEM: [{"shapes": {"tokens_BT": [[2, 3], "int32"], "old_logp": [[2, 3], "float32"]}}]}
    with pytest.raises(UserError, match=r"update.routing_replay=true, but the checkpoint's 1 batch\(es\) sampled"):
        restore_queue(meta, lambda targets: pytest.fail("read"), lambda rollout, ahead: pytest.fail("placed"), True)


@pytest.mark.parametrize("preset", ["bench", "bench_qwen3"])
def test_the_staleness_benchmark_config_passes_the_evaluation_judges_check(preset):
    """`r1jax bench` stopped at the staleness figure: its 20 ms reward alone left the held-out evaluation's
    accuracy and format unscored, which a run refuses at start (rl.train.preflight)."""
    from r1jax.rl.bench.staleness import with_slow_reward
    from r1jax.rl.evaluate import missing_judges

    config = with_slow_reward(load_config(preset), 1)
    assert config.rewards.names[0] == "host_20ms" and config.rewards.weights[0] == 1.0
    assert not missing_judges(config.rewards, config.data.tasks)
    assert all(w == 0.0 for w in config.rewards.weights[1:]) and config.grpo.max_staleness == 1


def test_sampling_ahead_draws_no_batch_past_the_stages_end_and_updates_against_its_sampling_weights(probed_runs):
    """max_staleness 1 over 3 steps: 3 batches drawn, one per step (a 4th, for a step the stage does not have,
    would be sampled and scored for nothing, and move the stage's saved data position past it). With mu = 2, each
    update's `old_logp` is its batch's behaviour log-probs (the weights that sampled it, rl.train.ahead), not the
    log-probs under the policy of the update's start, which has moved twice since the batch was sampled. The
    probe process's third run (AHEAD_OPTIONS), recorded by staleness_probe.record_ahead: the log-probs by digest."""
    _, err, dirs, probes = probed_runs
    assert (dirs["ahead"] / "summary.json").exists(), err[-3000:]
    lines = [json.loads(line) for line in probes["ahead"].read_text().splitlines()]
    calls = lambda call, key: [line[key] for line in lines if line["call"] == call]
    drawn, behaviour, updated_on = calls("draw", "ahead"), calls("behaviour", "logp"), calls("update", "old_logp")
    assert len(drawn) == 3 and [r["staleness"] for r in metrics_rows(dirs["ahead"])] == [0, 1, 1]
    assert len(behaviour) == len(updated_on) == 3
    assert updated_on == behaviour  # bitwise, batch by batch
