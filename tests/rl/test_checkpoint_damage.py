"""A damaged, partial or absent checkpoint is a one-line UserError naming the directory and what is missing:
through `r1jax generate` / `r1jax eval` (exit code 2) and through the trainer's checkpointer on resume."""

import json
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from r1jax.errors import UserError
from r1jax.rl.checkpoint import load_config, load_policy
from r1jax.rl.checkpoint_paths import resolve
from r1jax.rl.cli.main import main
from r1jax.rl.config import load_config as load_run_config
from r1jax.rl.train.checkpointing import TrainCheckpointer

from tests.rl.conftest import TRAIN_CONFIG


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small randomly initialised checkpoint: root/0/{config,params}."""
    root = tmp_path_factory.mktemp("ck") / "ck"
    assert main(["init", str(TRAIN_CONFIG), str(root)]) == 0
    return root


def damaged(checkpoint, tmp_path, damage):
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    damage(copy)
    return copy


def truncate_files(directory: pathlib.Path, keep_fraction: float) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            path.write_bytes(data[:int(len(data) * keep_fraction)])


def edit_stored_config(step: pathlib.Path, section: str, key: str, value) -> None:
    stored = step / "config" / "metadata"
    config = json.loads(stored.read_text())
    config[section][key] = value
    stored.write_text(json.dumps(config))


def remove_largest_data_file(item: pathlib.Path) -> None:
    """One array's chunks gone from an item (a partial copy, a sync that skipped a file): Orbax wraps the failed
    read in a bare Exception, which was a traceback."""
    data = sorted((item / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)
    data[-1].unlink()


def generate(capsys, path):
    code = main(["generate", str(path), "--ids", "1,2", "--max-new-tokens", "2", "--json"])
    return code, capsys.readouterr()


DAMAGES = {
    "params item removed": (lambda c: shutil.rmtree(c / "0" / "params"), ["0", "lacks the item 'params'"]),
    "config item removed": (lambda c: shutil.rmtree(c / "0" / "config"), ["0", "lacks the item 'config'"]),
    "step emptied": (lambda c: [shutil.rmtree(p) for p in (c / "0").iterdir() if p.is_dir()],
                     ["0", "lacks the item 'config'", "holds no items"]),
    "params truncated to half": (lambda c: truncate_files(c / "0" / "params", 0.5), ["0", "'params' cannot be read"]),
    "params truncated to nothing": (lambda c: truncate_files(c / "0" / "params", 0), ["0", "'params' cannot be read"]),
    "params data file removed": (lambda c: remove_largest_data_file(c / "0" / "params"),
                                 ["0", "'params' cannot be read"]),
    "config not JSON": (lambda c: truncate_files(c / "0" / "config", 0.3), ["0", "'config' cannot be read"]),
    "step directory deleted": (lambda c: shutil.rmtree(c / "0"), ["holds no checkpoint step"]),
    # a stored config edited by hand: its refusal named no checkpoint ("eval.samples ... must be >= 1")
    "stored config edited": (lambda c: edit_stored_config(c / "0", "eval", "samples", 0),
                             ["0: its stored config: eval.num_problems, eval.samples"]),
    # a newer step that is damaged is named, not skipped in favour of the older complete one
    "newer step without params": (lambda c: (shutil.copytree(c / "0", c / "7"), shutil.rmtree(c / "7" / "params")),
                                  ["7", "lacks the item 'params'"]),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_generate_on_a_damaged_checkpoint_names_the_directory_and_what_is_missing(capsys, checkpoint, tmp_path,
                                                                                    name):
    damage, expected = DAMAGES[name]
    path = damaged(checkpoint, tmp_path, damage)
    code, out = generate(capsys, path)
    assert code == 2 and out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("r1jax generate: error: checkpoint "), out.err
    assert str(path) in lines[0]
    for fragment in expected:
        assert fragment in lines[0], lines[0]


def test_a_damaged_metrics_item_of_any_step_does_not_stop_generate(capsys, checkpoint, tmp_path):
    """Only the trainer reads a step's metrics (keep_best): Orbax's manager read every step's as it opened the
    directory, and one that is not JSON was a JSONDecodeError traceback."""
    path = damaged(checkpoint, tmp_path, lambda c: ((c / "0" / "metrics").mkdir(),
                                                    (c / "0" / "metrics" / "metrics").write_text("xx")))
    code, out = generate(capsys, path)
    assert code == 0 and len(out.out.strip().splitlines()) == 1, out.err


@pytest.mark.parametrize("command", [["eval", "{ck}", "--num-problems", "1", "--samples", "1", "--workers", "1"],
                                     ["export-hf", "{ck}", "{out}"]])
def test_eval_and_export_name_a_step_missing_a_params_data_file(capsys, checkpoint, tmp_path, command):
    path = damaged(checkpoint, tmp_path, lambda c: remove_largest_data_file(c / "0" / "params"))
    code = main([part.format(ck=path, out=tmp_path / "out") for part in command])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"checkpoint {path / '0'} is damaged: the item 'params' cannot be read" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, saved_with", [
    ("family", "qwen3_moe", "another structure"),
    # same structure, other sizes: Orbax's shape refusal read as damage ("is damaged: ... cannot be read"); which
    # array Orbax names first varies
    ("moe_intermediate_size", 8,
     r"other shapes \(an array stored \([\d, ]*16[\d, ]*\), asked for as \([\d, ]*8[\d, ]*\)\)")])
def test_an_export_of_weights_under_another_models_config_names_that_config(capsys, checkpoint, tmp_path, key,
                                                                             value, saved_with):
    """A step whose config item came from another model (the other family, or other sizes): the refusal spoke of a
    resume and of "the config's changes listed above", where an export lists none, or called the step damaged."""
    path = damaged(checkpoint, tmp_path, lambda c: edit_stored_config(c / "0", "model", key, value))
    family = value if key == "family" else "deepseek_v3"
    code = main(["export-hf", str(path), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and re.fullmatch(re.escape(
        f"r1jax export-hf: error: checkpoint {path / '0'}: the item 'params' was saved with ") + saved_with + re.escape(
        f" than its own stored config builds (a {family} model of 1 layer): its config item is not the one saved "
        "with these weights (copied from another checkpoint, or edited)"), err), err
    assert not (tmp_path / "out").exists()


def test_missing_paths_empty_directories_and_run_dirs_without_checkpoints_are_named(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "file.txt").write_text("x")
    for path, expected in [(tmp_path / "missing", "does not exist"), (tmp_path / "empty", "no checkpoint step"),
                           (tmp_path / "run", "has no checkpoint yet"), (tmp_path / "file.txt", "is a file")]:
        for command in (["generate", str(path), "--ids", "1"], ["eval", str(path)]):
            code = main(command)
            err = capsys.readouterr().err.strip()
            assert code == 2 and expected in err and str(path) in err and len(err.splitlines()) == 1, err


def test_a_complete_checkpoint_opens_from_its_root_or_step_and_a_missing_metadata_file_is_tolerated(
        checkpoint, tmp_path):
    assert resolve(checkpoint) == (checkpoint, 0) and resolve(checkpoint / "0") == (checkpoint, 0)
    config, policy = load_policy(checkpoint)
    # Orbax reads a step without its _CHECKPOINT_METADATA file (it only warns): the same parameters
    path = damaged(checkpoint, tmp_path, lambda c: (c / "0" / "_CHECKPOINT_METADATA").unlink())
    again_config, again = load_policy(path)
    assert again_config == config == load_config(path)
    leaves, again_leaves = jax.tree.leaves(nnx.state(policy)), jax.tree.leaves(nnx.state(again))
    assert len(leaves) == len(again_leaves) > 10
    for a, b in zip(leaves, again_leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture()
def train_checkpoints(tmp_path):
    """A trainer checkpoint directory with steps 1 and 2 (config, meta and two trees each)."""
    config = load_run_config(TRAIN_CONFIG)
    checkpointer = TrainCheckpointer(tmp_path / "checkpoints", keep=5, keep_best=0, async_save=False)
    for step in (1, 2):
        trees = {"params": {"w": np.full((4, 3), step, np.float32)}, "opt_state": {"m": np.zeros(3, np.float32)}}
        checkpointer.save(step, config, trees, {"stage_index": 0, "global_step": step})
    checkpointer.close()
    return tmp_path / "checkpoints", config


def restore_latest(root):
    checkpointer = TrainCheckpointer(root, keep=5, keep_best=0, async_save=False)
    step = checkpointer.latest_step()
    try:
        _, meta = checkpointer.restore_config_and_meta(step)
        target = {"params": {"w": np.zeros((4, 3), np.float32)}, "opt_state": {"m": np.zeros(3, np.float32)}}
        trees = checkpointer.restore_trees(step, target)
    finally:
        checkpointer.close()
    return step, meta, trees


def test_resume_restores_the_latest_step(train_checkpoints):
    step, meta, trees = restore_latest(train_checkpoints[0])
    assert step == 2 and meta["global_step"] == 2
    np.testing.assert_array_equal(np.asarray(trees["params"]["w"]), np.full((4, 3), 2, np.float32))


@pytest.mark.parametrize("damage,expected", [
    (lambda step: shutil.rmtree(step / "meta"), "lacks the item 'meta'"),
    (lambda step: shutil.rmtree(step / "opt_state"), "lacks the item 'opt_state'"),
    (lambda step: truncate_files(step / "params", 0.5), "'params' cannot be read"),
    (lambda step: truncate_files(step / "config", 0.5), "'config' cannot be read"),
])
def test_resume_from_a_damaged_latest_step_names_it_instead_of_skipping_it(train_checkpoints, damage, expected):
    root, _ = train_checkpoints
    damage(root / "2")
    with pytest.raises(UserError) as info:
        restore_latest(root)
    message = str(info.value)
    assert str(root / "2") in message and expected in message and "\n" not in message


def test_a_step_saved_again_while_its_async_save_runs_is_replaced_whole(tmp_path):
    """A stage of 0 steps saves the previous stage's step again at once: the re-save deleted the first save's
    directory mid-write (a NOT_FOUND error, the step lost; two processes hung). It now waits for it."""
    config = load_run_config(TRAIN_CONFIG)
    checkpointer = TrainCheckpointer(tmp_path / "checkpoints", keep=5, keep_best=0, async_save=True)
    big = {"params": {"w": np.ones((512, 1024), np.float32)}, "opt_state": {"m": np.zeros(3, np.float32)}}
    try:
        checkpointer.save(1, config, big, {"stage_index": 0, "global_step": 1})
        checkpointer.save(1, config, {**big, "params": {"w": np.full((512, 1024), 2, np.float32)}},
                          {"stage_index": 0, "global_step": 1, "again": True})
    finally:
        checkpointer.close()
    reopened = TrainCheckpointer(tmp_path / "checkpoints", keep=5, keep_best=0, async_save=False)
    try:
        _, meta = reopened.restore_config_and_meta(1)
        w = reopened.restore_trees(1, {"params": {"w": np.zeros((512, 1024), np.float32)}})["params"]["w"]
    finally:
        reopened.close()
    assert meta["again"] is True and float(np.asarray(w).min()) == 2.0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_the_latest_step_is_the_highest_number(tmp_path):
    """Step 100 after 9 and 10 (as strings "9" is the largest): eval, generate and export open the newest."""
    for step in (2, 9, 10, 100):
        (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
    assert resolve(tmp_path) == (tmp_path / "checkpoints", 100)
    assert resolve(tmp_path / "checkpoints") == (tmp_path / "checkpoints", 100)
    (tmp_path / "checkpoints" / "100").rmdir()
    assert resolve(tmp_path)[1] == 10


def test_checkpoint_paths_that_are_not_utf8_are_named(capsys, checkpoint, tmp_path):
    """tensorstore takes UTF-8 paths only (a Latin-1 directory name arrives from argv as a surrogate escape):
    `init` there was a traceback from its C++ bindings, and so was reading a checkpoint moved there."""
    assert main(["init", str(TRAIN_CONFIG), str(tmp_path / "ck\udcff")]) == 2
    err = capsys.readouterr().err
    assert "ck\\udcff' is not valid UTF-8 (byte 0xff at character" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    moved = shutil.copytree(checkpoint, tmp_path / "moved\udce9")
    code, out = generate(capsys, moved)
    assert code == 2 and "is not valid UTF-8 (byte 0xe9 at character" in out.err and out.out == ""


def test_a_step_rotated_away_while_it_is_read_is_read_again_from_the_new_latest(capsys, checkpoint, tmp_path,
                                                                                 monkeypatch):
    """A live run's trainer saves step N+1 and deletes N (checkpoint.keep) while generate reads N: that was a
    traceback, or the healthy run reported damaged. The read goes again on the new latest step; a step that
    fails with the steps unchanged is real damage (the cases above), and a run that keeps rotating under every
    try fails after LIVE_READ_TRIES, naming the step."""
    from r1jax.rl import checkpoint as checkpoint_module
    from r1jax.rl.checkpoint_paths import LIVE_READ_TRIES

    root = shutil.copytree(checkpoint, tmp_path / "live")
    real, reads = checkpoint_module.load_policy, []

    def rotating(path, *args, rotations=1):
        reads.append(pathlib.Path(path).name)
        if len(reads) <= rotations:  # the trainer's next save lands and the step being read is deleted
            shutil.copytree(root / reads[-1], root / str(int(reads[-1]) + 1))
            shutil.rmtree(root / reads[-1])
        return real(path, *args)

    monkeypatch.setattr(checkpoint_module, "load_policy", rotating)
    code, out = generate(capsys, root)
    assert code == 0 and reads == ["0", "1"] and len(json.loads(out.out)["ids"]) == 2
    reads.clear()
    monkeypatch.setattr(checkpoint_module, "load_policy", lambda path, *args: rotating(path, *args, rotations=9))
    code, out = generate(capsys, root)
    assert code == 2 and reads == [str(n) for n in range(1, 1 + LIVE_READ_TRIES)]
    assert f"checkpoint {root}: its steps changed under each of 4 reads (a trainer saving and rotating them?), " \
           f"the last of step 4: checkpoint '{root / '4'}' does not exist" in out.err


def test_a_relative_checkpoint_path_in_a_working_directory_that_is_not_utf8_is_named(capsys, tmp_path,
                                                                                   monkeypatch):
    (tmp_path / "run\udcff").mkdir()
    monkeypatch.chdir(tmp_path / "run\udcff")
    assert main(["init", str(TRAIN_CONFIG), "ck"]) == 2  # a C++ cast traceback from tensorstore before
    assert "is not valid UTF-8 (byte 0xff at character" in capsys.readouterr().err
    assert list(pathlib.Path(".").iterdir()) == []


def test_a_step_named_is_read_once_and_its_damage_named_while_a_trainer_saves_others(tmp_path):
    """Only the latest step of a run directory or root is read again; a step given by its path was retried, and
    its real damage reported as steps that changed while a trainer saved others."""
    from r1jax.rl.checkpoint_paths import read_latest

    root = tmp_path / "checkpoints"
    (root / "3").mkdir(parents=True)
    saves, tried = iter(range(10, 20)), []

    def read(step_dir):
        tried.append(step_dir.name)
        (root / str(next(saves))).mkdir()  # the trainer saves a step meanwhile
        raise UserError(f"checkpoint {step_dir} is damaged: the item 'params' cannot be read")

    with pytest.raises(UserError, match="3 is damaged: the item 'params' cannot be read"):
        read_latest(root / "3", read)
    assert tried == ["3"]


def test_orbax_reports_of_a_save_the_disk_refused_are_dropped(tmp_path):
    """A save into a full disk printed a page of tracebacks per Orbax thread (the error then reaches the trainer
    at its next save, printed as one line); other Orbax errors are still logged."""
    import logging
    import sys

    from r1jax.rl.train.checkpointing import TrainCheckpointer

    hook = sys.unraisablehook
    logger = logging.getLogger("absl")
    filters = list(logger.filters)
    try:
        TrainCheckpointer(tmp_path / "checkpoints", keep=1, keep_best=0).close()
        full = ValueError("Failed writing: \"/r/checkpoints/2.orbax-checkpoint-tmp/d/a\": No space left on device "
                          "[os_error_code='28']")
        orbax = "/site-packages/orbax/checkpoint/_src/checkpointers/async_checkpointer.py"  # where Orbax logs
        record = logger.makeRecord("absl", logging.ERROR, orbax, 1, "raised an exception: %s", (full,),
                                   (ValueError, full, None))
        other = logger.makeRecord("absl", logging.ERROR, orbax, 1, "raised an exception: %s", ("bug",), None)
        assert not logger.filter(record) and logger.filter(other)
    finally:
        logger.filters[:] = filters
        sys.unraisablehook = hook


def test_a_failed_async_save_stops_the_run_at_the_next_step_boundary(tmp_path, monkeypatch):
    """A save the disk refused in the background was raised only at the next save (`checkpoint.every` steps
    later, trained for nothing) or at the end: a step boundary now raises it, and the last whole step is kept."""
    import orbax.checkpoint as ocp

    from r1jax.files import storage_failure

    config = load_run_config(TRAIN_CONFIG)
    checkpointer = TrainCheckpointer(tmp_path / "checkpoints", keep=1, keep_best=0, async_save=True)
    tree = {"params": {"w": np.arange(8, dtype=np.float32)}}
    checkpointer.save(1, config, tree, {"global_step": 1})
    checkpointer.wait()
    checkpointer.raise_failed_save()  # none failed: nothing raised
    wait_for_writes = ocp.CheckpointManager._wait_for_checkpointers

    def full(self):  # the background commit of step 2 (Orbax's finalize thread) meets a full disk
        wait_for_writes(self)
        raise ValueError(f'RESOURCE_EXHAUSTED: Failed writing: "{tmp_path}/checkpoints/2.orbax-checkpoint-tmp/'
                         "params/d/a\": No space left on device [os_error_code='28']")

    monkeypatch.setattr(ocp.CheckpointManager, "_wait_for_checkpointers", full)
    checkpointer.save(2, config, {"params": {"w": np.ones(8, np.float32)}}, {"global_step": 2})
    while checkpointer.manager.is_saving_in_progress():
        pass
    with pytest.raises(ValueError) as raised:
        checkpointer.raise_failed_save()
    assert storage_failure(raised.value) == ("no space left on device: "
                                             f"{tmp_path}/checkpoints/2.orbax-checkpoint-tmp/params/d/a")
    assert (tmp_path / "checkpoints" / "1").is_dir()  # not rotated away by the failed step
    monkeypatch.undo()
    checkpointer.close()
