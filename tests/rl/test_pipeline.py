"""The whole R1 pipeline in one `r1jax train` (tests/rl/data/pipeline_tiny.yaml): cold start, GRPO, rejection
sampling into a dataset, SFT on the kept samples, distillation into a smaller student; every artifact; and
stops inside rejection sampling and inside distillation, each resumed to the uninterrupted run's result."""

import json
import pathlib
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from r1jax.rl.checkpoint import load_config, load_policy
from tests.rl.conftest import (comparable, console, latest_checkpoint, metrics_rows, run_signalled_at,
                               run_to_end, summary)

CONFIG = pathlib.Path(__file__).parent / "data" / "pipeline_tiny.yaml"
STAGES = [("sft", 2), ("grpo", 2), ("rs", 2), ("sft_rs", 2), ("distill", 2)]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pipeline")
    run_to_end(run_dir, CONFIG)
    return run_dir


def test_stages_run_in_order_with_contiguous_steps(pipeline_run):
    rows = [json.loads(line) for line in (pipeline_run / "metrics.jsonl").read_text().splitlines()]
    expected = [name for name, steps in STAGES for _ in range(steps)]
    assert [r["stage"] for r in rows] == expected
    assert [r["global_step"] for r in rows] == list(range(1, len(expected) + 1))
    for row in rows:
        if row["stage"] == "rs":
            assert row["rs/candidates"] == 8 and 0 <= row["rs/kept"] <= 8
        if row["stage"] == "grpo":  # DAPO dynamic sampling: 1 to 1 + max_resample_rounds rounds per step
            assert 1 <= row["dynamic/rounds"] <= 3 and 0 <= row["dynamic/informative_groups"] <= 4
            assert row["dynamic/informative_groups"] == round(4 * (1 - row["frac_reward_zero_std"]))
    summary = json.loads((pipeline_run / "summary.json").read_text())
    assert [e["stage"] for e in summary["evals"]] == ["sft", "grpo", "sft_rs", "distill"]
    assert [d["stage"] for d in summary["datasets"]] == ["rs"]
    sft, grpo = summary["evals"][0], summary["evals"][1]
    gain = summary["rl_gain"]  # the cold-start model against the end of GRPO
    assert (gain["before_stage"], gain["after_stage"]) == ("sft", "grpo")
    assert gain["gain_points"] == pytest.approx(100 * (grpo["pass@1"] - sft["pass@1"]))
    assert gain["format_rate"] == grpo["format_rate"]


def test_rejection_sampling_writes_the_kept_set_and_its_statistics(pipeline_run):
    path = pipeline_run / "datasets" / "rs.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    stats = json.loads(path.with_suffix(".stats.json").read_text())
    assert stats["candidates"] == 16 and stats["kept"] == len(rows) > 0
    assert stats["kept_rate"] == pytest.approx(len(rows) / 16)
    assert sum(stats["rejected"].values()) + stats["kept"] == 16
    assert stats["by_task"]["arithmetic"]["kept"] == len(rows)
    assert sum(v["candidates"] for v in stats["by_difficulty"].values()) == 16
    pairs = {(r["prompt"], r["solution"]) for r in rows}
    assert len(pairs) == len(rows)  # duplicates kept once
    for row in rows:
        assert row["solution"].strip() and row["reward"] >= 0.0 and row["task"] == "arithmetic"


def test_the_distilled_student_has_its_own_architecture(pipeline_run):
    config, policy = load_policy(pipeline_run)
    assert (config.model.hidden_size, config.model.kv_lora_rank, config.model.num_attention_heads) == (16, 8, 1)
    embedding = [x for x in jax.tree.leaves(nnx.state(policy)) if x.ndim == 2 and x.shape[0] == 512][0]
    assert embedding.shape == (512, 16)
    assert np.all(np.isfinite(np.asarray(embedding)))
    teacher = load_config(pipeline_run / "checkpoints" / "4")  # the end of GRPO
    assert teacher.model.hidden_size == 32


def leaves(run_dir):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(load_policy(run_dir)[1]))]


def test_stops_inside_rejection_sampling_and_distillation_resume_to_the_same_result(pipeline_run, tmp_path):
    run_dir = tmp_path / "stopped"
    # SIGINT in rejection-sampling round 1 (global step 5): the stage stops before round 2 and saves nothing;
    # the run stands at the end of GRPO (4) and no partial dataset exists
    code, err = run_signalled_at(run_dir, signal.SIGINT, 5, CONFIG)
    assert code == 0, err[-3000:]
    assert f"stopped by signal {int(signal.SIGINT)} at step 4" in console(err)
    assert latest_checkpoint(run_dir) == 4
    assert not (run_dir / "datasets").exists() or not any((run_dir / "datasets").iterdir())
    # resumed: rejection sampling reruns from its first round; SIGINT in distillation step 1 (global step 9)
    # saves that step
    code, err = run_signalled_at(run_dir, signal.SIGINT, 9, CONFIG)
    assert code == 0, err[-3000:]
    assert "from step 4 (stage grpo)" in console(err)
    assert f"stopped by signal {int(signal.SIGINT)} at step 9" in console(err)
    assert latest_checkpoint(run_dir) == 9
    result = run_to_end(run_dir, CONFIG)
    assert "from step 9 (stage distill)" in console(result.stderr)
    assert comparable(metrics_rows(run_dir)) == comparable(metrics_rows(pipeline_run))
    assert summary(run_dir) == summary(pipeline_run)
    for name in ("rs.jsonl", "rs.stats.json"):
        texts = [(d / "datasets" / name).read_text().replace(str(d), "RUN_DIR") for d in (run_dir, pipeline_run)]
        assert texts[0] == texts[1], name
    resumed, uninterrupted = leaves(run_dir), leaves(pipeline_run)  # the distilled student
    assert len(resumed) == len(uninterrupted)
    for a, b in zip(resumed, uninterrupted):
        assert a.tobytes() == b.tobytes()
