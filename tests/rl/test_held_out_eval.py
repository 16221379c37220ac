"""The run's periodic evaluation (rl.train.held_out.HeldOutEval): its summary entry."""

import json

from r1jax.rl.config import load_config
from r1jax.rl.train import held_out
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
