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
    # eval.num_problems caps the file's unseen rows, the first in the file's order
    held_out = held_out_problems(data, EvalConfig(num_problems=3, path=str(path)))
    assert [p["prompt"] for p in held_out] == [source[i]["prompt"] for i in range(20, 23)]


class _Recorder:
    def __init__(self):
        self.calls = []

    def write_samples(self, name, rows):
        self.calls.append(("write_samples", name, rows))

    def log_eval(self, entry):
        self.calls.append(("log_eval", entry))

    def log(self, message):
        self.calls.append(("log", message))


def _run(monkeypatch, tmp_path, figures, stage="sft", step=3):
    cfg = load_config(TRAIN_CONFIG)
    seen = {}

    def fake_evaluate(*args):
        seen["args"] = args
        return figures, [{"prompt": "p", "completion": "c"}]

    monkeypatch.setattr(held_out, "evaluate", fake_evaluate)
    metrics, console = _Recorder(), _Recorder()
    problems = [{"prompt": "q", "answer": "1", "task": "arithmetic"}]
    evaluator = held_out.HeldOutEval(cfg, tmp_path, True, "TOK", "POOL", metrics, console, problems)
    entry = evaluator(stage, "SAMPLER", "POLICY", step=step, checkpointed=True)
    return cfg, seen["args"], entry, metrics.calls, console.calls


def test_evaluate_gets_the_runs_settings_in_order(monkeypatch, tmp_path):
    figures = {"k": 2, "pass@1": 0.5, "cons@2": 0.25, "pass@2": 1.0, "format_rate": 1.0, "response_length": 3.0}
    cfg, args, _, _, _ = _run(monkeypatch, tmp_path, figures)
    assert cfg.sampling.max_new_tokens != cfg.rewards.answer_max_chars  # else the order check is void
    assert args[:4] == ("SAMPLER", "POLICY", "TOK", cfg.tokenizer.template)
    assert args[4][0]["prompt"] == "q" and args[5] == "POOL" and args[6] is cfg.eval
    assert args[7] == cfg.sampling.max_new_tokens
    assert args[8] == cfg.rewards.answer_max_chars
    assert args[9] == cfg.tokenizer.template_vars


def test_the_entry_is_logged_with_the_metrics_writer_and_the_console(monkeypatch, tmp_path):
    figures = {"k": 2, "pass@1": 0.5, "cons@2": 0.25, "pass@2": 1.0, "format_rate": 1.0, "response_length": 3.0}
    _, _, entry, metrics, console = _run(monkeypatch, tmp_path, figures, stage="sft", step=3)
    expected = {"stage": "sft", "checkpoint": str(tmp_path.absolute() / "checkpoints" / "3"), "step": 3, **figures}
    assert entry == expected
    assert metrics == [("write_samples", "sft-step3", [{"prompt": "p", "completion": "c"}]),
                       ("log_eval", expected)]
    assert console == [("log", "eval after sft step 3: pass@1 0.500, cons@2 0.250, format 1.00, length 3.0")]


def test_with_one_sample_the_console_line_has_no_cons(monkeypatch, tmp_path):
    figures = {"k": 1, "pass@1": 0.5, "cons@1": 0.5, "format_rate": 0.5, "response_length": 2.5}
    _, _, _, _, console = _run(monkeypatch, tmp_path, figures, stage="grpo", step=10)
    assert console == [("log", "eval after grpo step 10: pass@1 0.500, format 0.50, length 2.5")]
