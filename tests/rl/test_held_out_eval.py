"""The run's periodic evaluation (rl.train.held_out.HeldOutEval): its summary entry."""

import json

from r1jax.rl.config import load_config
from r1jax.rl.data.config import DataConfig
from r1jax.rl.data.pipeline import TaskSource
from r1jax.rl.evaluate import held_out_problems
from r1jax.rl.train import held_out
from r1jax.rl.train.config import EvalConfig
from r1jax.rl.train.console import RunConsole
from r1jax.rl.train.metrics import MetricsWriter
from tests.rl.conftest import TRAIN_CONFIG


def test_an_entrys_checkpoint_is_the_absolute_path_of_the_step_also_for_a_relative_run_dir(tmp_path, monkeypatch):
    figures = {"k": 2, "pass@1": 0.5, "cons@2": 0.5, "pass@2": 1.0, "format_rate": 1.0, "response_length": 3.0}
    monkeypatch.setattr(held_out, "evaluate", lambda *args: (figures, [{"prompt": "p", "completion": "c"}]))
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    relative = run_dir.relative_to(tmp_path)
    metrics = MetricsWriter(relative, plots=False)
    evaluator = held_out.HeldOutEval(load_config(TRAIN_CONFIG), relative, True, None, None, metrics,
                                     RunConsole(enabled=False), [])
    entry = evaluator("grpo", None, None, step=7, checkpointed=True)
    metrics.close()
    # before: "runs/a/checkpoints/7", a path from where the run started only
    assert entry["checkpoint"] == str(run_dir / "checkpoints" / "7")
    assert evaluator("grpo", None, None, step=8, checkpointed=False)["checkpoint"] is None
    assert json.loads((run_dir / "samples" / "grpo-step7.jsonl").read_text().splitlines()[0])["completion"] == "c"


def _training_prompts(data: DataConfig) -> set[str]:
    source = TaskSource([data.task(t) for t in data.tasks], data.seed, data.num_problems)
    return {source[i]["prompt"] for i in range(len(source))}


def test_generated_held_out_problems_skip_every_training_problem_the_last_included():
    data = DataConfig(tasks=("arithmetic",), difficulty=3, seed=7, num_problems=20)
    trained = _training_prompts(data)
    assert len(trained) == 20
    held_out = held_out_problems(data, EvalConfig(num_problems=10, seed=7))
    assert len(held_out) == 10 and not {p["prompt"] for p in held_out} & trained


def test_a_held_out_file_skips_every_generated_training_problem_the_last_included(tmp_path):
    data = DataConfig(tasks=("arithmetic",), difficulty=3, seed=7, num_problems=20)
    source = TaskSource([data.task("arithmetic")], 7, 25)  # training's 20 problems, then 5 more
    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(json.dumps({"prompt": source[i]["prompt"], "answer": source[i]["answer"],
                                        "task": "arithmetic"}) + "\n" for i in range(25)))
    held_out = held_out_problems(data, EvalConfig(num_problems=25, path=str(path)))
    assert [p["prompt"] for p in held_out] == [source[i]["prompt"] for i in range(20, 25)]
