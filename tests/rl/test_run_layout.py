"""A run directory's entries one level down whose names the run knows at its start (rl.train.run_layout): one of
the wrong kind is named when the run starts, not met with a traceback after training (a directory named
plots/loss.png: IsADirectoryError at the end's plots)."""

import types

import pytest

from r1jax.errors import UserError
from r1jax.rl.train.run_layout import check_run_entries

STAGES = [types.SimpleNamespace(name="rs", kind="rejection_sampling"), types.SimpleNamespace(name="g", kind="grpo")]


def refusal(run, plots=True):
    try:
        check_run_entries(run, STAGES, plots)
    except UserError as err:
        return str(err)
    return None


@pytest.mark.parametrize("name, kind", [("plots/loss.png", "dir"), ("datasets/rs.jsonl", "dir"),
                                        ("datasets/rs.stats.json", "dir"), ("samples/g-step12.jsonl", "dir"),
                                        ("samples/rs-step4.jsonl", "dangling"), ("checkpoints/tokenizer", "file")])
def test_an_entry_below_the_top_level_of_the_wrong_kind_is_named(tmp_path, name, kind):
    run = tmp_path / "run"
    entry = run / name
    entry.parent.mkdir(parents=True)
    entry.mkdir() if kind == "dir" else entry.symlink_to(tmp_path / "gone") if kind == "dangling" else \
        entry.write_text("mine")
    found, wanted = {"dir": ("a directory", "a file"), "dangling": ("a symlink to nothing", "a file"),
                     "file": ("a file", "a directory")}[kind]
    assert refusal(run) == (f"run directory {str(run)!r}: {name!r} is {found}, where the run writes {wanted}; move "
                            "it out of the run directory")


def test_entries_of_the_right_kind_and_names_the_run_never_writes_pass(tmp_path):
    run = tmp_path / "run"
    for name in ("plots/loss.png", "datasets/rs.jsonl", "datasets/rs.stats.json", "samples/g-step2.jsonl"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("the run's")
    (run / "checkpoints" / "tokenizer").mkdir(parents=True)
    # directories under names the run does not write: another stage's dataset, a note, samples of no stage
    for name in ("datasets/g.jsonl", "plots/mine.png", "samples/big-step2.jsonl", "samples/g-step2.jsonl.old",
                 "samples/g-stepx.jsonl", "checkpoints/2"):
        (run / name).mkdir(parents=True)
    assert refusal(run) is None
    (run / "plots" / "loss.png").unlink()
    (run / "plots" / "loss.png").mkdir()
    assert "'plots/loss.png' is a directory" in refusal(run)
    assert refusal(run, plots=False) is None  # a run without plots writes none there


def test_the_top_level_entry_is_named_before_what_is_below_it(tmp_path):
    run = tmp_path / "run"
    (run / "samples" / "g-step2.jsonl").mkdir(parents=True)
    (run / "plots").write_text("mine")
    assert f"{str(run)!r}: 'plots' is a file, where the run writes a directory" in refusal(run)


def test_a_run_refuses_a_wrong_kind_entry_below_the_top_level_at_its_start(capsys, tmp_path, monkeypatch):
    """`r1jax train` on a directory with plots/loss.png a directory: refused before training (it trained to its end,
    then stopped with an IsADirectoryError traceback drawing its plots), the directory as it was."""
    from r1jax.rl.cli.main import main
    from r1jax.rl.train.trainer import Trainer
    from tests.rl.conftest import TRAIN_CONFIG

    monkeypatch.setattr(Trainer, "run", lambda self: pytest.fail(f"trained {self.run_dir}"))
    run = tmp_path / "run"
    (run / "plots" / "loss.png").mkdir(parents=True)
    assert main(["train", str(TRAIN_CONFIG), "--run-dir", str(run), "plots=true"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"r1jax train: error: run directory {str(run)!r}: 'plots/loss.png' is a " \
        "directory, where the run writes a file" in err, err
    assert [str(p.relative_to(run)) for p in sorted(run.rglob("*"))] == ["plots", "plots/loss.png"]
