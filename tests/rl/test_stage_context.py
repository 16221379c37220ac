"""What stages receive and return (rl.train.context): the trainer is imported by no stage, project modules
are imported at the top of modules; a stage's checkpoint records the summary as it was at the save; batches
are split over the batch axes, and one that does not split is refused naming its rows."""

import ast
import pathlib

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from r1jax.errors import UserError
from r1jax.rl.train.context import BatchPlacer, summary_with
from r1jax.sharding.mesh import ShardingConfig, batch_axes, build_mesh

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRAINING = sorted((ROOT / "rl" / "train").glob("*.py")) + [ROOT / "rl" / "evaluate.py"]


def imports(path: pathlib.Path):
    """(module imported, whether the import sits inside a function) for every project import of `path`."""
    tree = ast.parse(path.read_text())
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("r1jax"):
            yield node.module, id(node) in nested
        elif isinstance(node, ast.Import):
            yield from ((a.name, id(node) in nested) for a in node.names if a.name.startswith("r1jax"))


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.name)
def test_no_stage_imports_the_trainer_and_project_imports_are_at_the_top(path):
    found = list(imports(path))
    assert not [m for m, inside in found if inside], "a project module imported inside a function"
    if path.name != "trainer.py":
        assert "r1jax.rl.train.trainer" not in {m for m, _ in found}


def test_a_checkpoints_summary_is_a_copy_with_the_stages_additions():
    run = {"evals": [{"stage": "sft", "pass@1": 0.5}], "stages": [{"name": "sft"}]}
    saved = summary_with(run, evals=[{"stage": "grpo", "pass@1": 0.7}], datasets=[{"stage": "rs"}])
    assert list(saved) == ["evals", "stages", "datasets"]
    assert [e["stage"] for e in saved["evals"]] == ["sft", "grpo"] and saved["datasets"] == [{"stage": "rs"}]
    run["stages"].append({"name": "grpo"})  # the run goes on after the save
    run["evals"][0]["pass@1"] = 0.0
    assert saved["stages"] == [{"name": "sft"}] and saved["evals"][0]["pass@1"] == 0.5
    assert "datasets" not in summary_with(run)


def test_batches_are_split_over_the_batch_axes_and_a_bad_one_is_refused():
    mesh = build_mesh(ShardingConfig(data=2, fsdp=2, expert=2, tensor=1))
    rules = ShardingConfig(data=2, fsdp=2, expert=2, tensor=1).logical_rules()
    axes = batch_axes(mesh, rules)
    ways = int(np.prod([mesh.shape[a] for a in axes]))
    assert ways > 1
    place = BatchPlacer(mesh, rules)
    rows = np.arange(ways * 3, dtype=np.int32).reshape(ways, 3)
    placed = place({"x": rows}, for_step=1)["x"]
    assert placed.sharding.spec == P(axes) and np.array_equal(np.asarray(placed), rows)
    assert len({str(s.index) for s in placed.addressable_shards}) == ways  # a row block per batch-axis slice
    with pytest.raises(UserError, match=f"a batch of {ways + 1} rows does not split over the {ways} "):
        place({"x": np.zeros((ways + 1, 3))}, for_step=2)
    assert jax.device_count() == 8


def test_a_stages_evaluations_and_datasets_are_copied_into_the_checkpoints_summary():
    evals, datasets = [{"stage": "grpo", "pass@1": 0.7}], [{"stage": "rs", "kept": 3}]
    saved = summary_with({"evals": []}, evals, datasets)
    evals[0]["pass@1"], datasets[0]["kept"] = 0.0, 0  # the stage goes on with its own records
    assert saved == {"evals": [{"stage": "grpo", "pass@1": 0.7}], "datasets": [{"stage": "rs", "kept": 3}]}


def test_processes_agree_on_a_stop_at_the_step_the_stage_asks_about(monkeypatch):
    """With several processes the stop is agreed per global step: the step asked about (and, on entering, the
    step the run starts at) is the one the processes meet at."""
    from r1jax.rl.train import context

    met = []
    monkeypatch.setattr(context.distributed, "multi_process", lambda: True)
    monkeypatch.setattr(context.distributed, "barrier", lambda name, what, **k: met.append(name))
    monkeypatch.setattr(context.distributed, "reached_preemption_sync_point",
                        lambda step: met.append(step) or step == 6)
    flag = context.StopFlag()
    with flag.watching(4):
        assert met == [4]
        assert not flag.requested(5) and flag.requested(6) and flag.requested(6)
    assert met == [4, "step-5", 5, "step-6", 6]  # each step agreed once


def test_only_the_primary_process_says_the_samplers_layout(monkeypatch):
    import types

    from r1jax.rl.train import context

    monkeypatch.setattr(context, "choose_layout", lambda *a: ("layout", "sampling in layout L"))
    monkeypatch.setattr(context, "Sampler", lambda *a: a)
    said = []
    tokenizer = types.SimpleNamespace(eos_ids=(2,), pad_id=0, vocab_size=9)
    for primary in (True, False):
        ctx = types.SimpleNamespace(sampler_devices=(), primary=primary, console=types.SimpleNamespace(
            log=said.append), config=types.SimpleNamespace(sampling="S"), model="M", mesh="mesh", rules="rules",
            graphdef="G", tokenizer=tokenizer)
        assert context.StageContext.sampler(ctx, 11) == ("G", "S", (2,), 0, 11, 9, "layout")
    assert said == ["sampling in layout L"]
