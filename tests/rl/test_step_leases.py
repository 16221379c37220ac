"""A reader holds the step it reads: a trainer pruning under `checkpoint.keep: 1` leaves it to a later save."""

import numpy as np
import pytest

from r1jax.errors import UserError
from r1jax.rl.checkpoint import load_config
from r1jax.rl.checkpoint_paths import read_latest
from r1jax.rl.config import Config
from r1jax.rl.step_leases import StepGone, delete_unless_held, held
from r1jax.rl.train.checkpointing import TrainCheckpointer


def trees_of(value):
    return {"params": {"w": np.full((2, 3), value, np.float32)}}


def step_names(root):
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())


def test_a_step_pruned_between_the_readers_choice_and_its_read_is_still_read_whole(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    checkpointer = TrainCheckpointer(root, keep=1, keep_best=0, async_save=False)
    checkpointer.save(1, Config(), trees_of(1), {"value": 1})
    saved = iter(range(2, 100))
    read_steps = []

    def read(step_dir):  # the trainer saves (and prunes under keep: 1) once each read has chosen its step
        step = next(saved)
        checkpointer.save(step, Config(), trees_of(step), {"value": step})
        read_steps.append(step_dir.name)
        return load_config(step_dir), step_names(root)

    try:
        config, during = read_latest(tmp_path / "run", read)
        assert read_steps == ["1"] and isinstance(config, Config)  # one read, of the step it chose
        assert during == [1, 2]  # held: left by step 2's pruning ...
        checkpointer.save(3, Config(), trees_of(3), {"value": 3})
        assert step_names(root) == [3]  # ... and deleted by the next save once released
    finally:
        checkpointer.close()
    assert sorted(p.name for p in root.iterdir()) == ["3"]  # nothing written beside the steps


def test_a_held_step_left_at_the_trainers_close_is_deleted_there_once_released(tmp_path):
    root = tmp_path / "checkpoints"
    checkpointer = TrainCheckpointer(root, keep=1, keep_best=0, async_save=True)
    checkpointer.save(1, Config(), trees_of(1), {"value": 1})
    checkpointer.wait()
    with held(root, 1) as holding:
        assert holding
        checkpointer.save(2, Config(), trees_of(2), {"value": 2})
        checkpointer.wait()
        assert step_names(root) == [1, 2]
    checkpointer.close()
    assert step_names(root) == [2]


def test_a_lease_on_a_deleted_step_is_refused_and_a_named_step_says_so(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "4").mkdir(parents=True)
    with pytest.raises(StepGone):
        with held(root, 3):
            pass
    deleting = []

    def delete():  # a trainer mid-delete (its exclusive lock held) when a reader asks for the step by name
        with pytest.raises(UserError, match=r"^checkpoint \S*checkpoints/4 was deleted \(a trainer rotating"):
            read_latest(root / "4", lambda step_dir: step_dir)
        deleting.append(4)

    assert delete_unless_held(root / "4", delete) and deleting == [4]
    assert read_latest(root, lambda step_dir: step_dir.name) == "4"  # (a real trainer's delete removes it)


def test_a_step_moved_aside_after_the_reader_opened_it_is_gone(tmp_path, monkeypatch):
    from r1jax.rl import step_leases

    root = tmp_path / "checkpoints"
    (root / "5").mkdir(parents=True)
    real = step_leases._open

    def open_then_resaved(step_dir):  # a re-save moves N aside and writes a new N between open and lock
        fd = real(step_dir)
        step_dir.rename(root / "5.previous")
        step_dir.mkdir()
        return fd

    monkeypatch.setattr(step_leases, "_open", open_then_resaved)
    with pytest.raises(StepGone, match="step 5 was deleted"):
        with held(root, 5):
            pass


@pytest.mark.parametrize("named", [False, True])
def test_a_step_saved_again_while_it_is_read_is_read_again_whole(tmp_path, named):
    """A lease does not stop a re-save of the same step (a stage's end saved again after a stop: N moved aside
    as N.previous, a new N written): a read during it may have mixed the two copies, so it is read again,
    whether the run or the step was named (before: the mixed read was returned, or reported as damage)."""
    root = tmp_path / "checkpoints"
    (root / "7").mkdir(parents=True)
    (root / "7" / "part").write_text("old")
    reads = []

    def read(step_dir):
        reads.append((step_dir / "part").read_text())
        if len(reads) == 1:  # the trainer saves step 7 again under this read
            step_dir.rename(root / "7.previous")
            step_dir.mkdir()
            (step_dir / "part").write_text("new")
            return "mixed"
        return (step_dir / "part").read_text()

    assert read_latest(root / "7" if named else root, read) == "new"
    assert reads == ["old", "new"]


def test_a_failed_read_of_a_step_saved_again_meanwhile_is_not_called_damage(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "7").mkdir(parents=True)
    reads = []

    def read(step_dir):
        reads.append(step_dir.name)
        if len(reads) == 1:  # half of the old copy, then the rest from the new: a read that fails as damaged
            step_dir.rename(root / "7.previous")
            step_dir.mkdir()
            raise UserError(f"checkpoint {step_dir} is damaged")
        return "whole"

    assert read_latest(root, read) == "whole" and reads == ["7", "7"]
