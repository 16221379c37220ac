"""The pure-Python path logic of rl.checkpoint_paths (and rl.checkpoint's restore errors), on directories made by
hand (no Orbax save): which step a path names, the previous copies a killed re-save left, what a read of a live
run's latest step retries, and which errors of a failed restore are a checkpoint's damage."""

import os

import pytest

from r1jax.errors import UserError
from r1jax.rl.checkpoint import data_source, restore_error, trained
from r1jax.rl.checkpoint_paths import previous_copies, read_latest, resolve


def steps(root, *names):
    for name in names:
        (root / str(name)).mkdir(parents=True)
    return root


def test_a_file_with_a_numbered_name_is_no_step(tmp_path):
    root = steps(tmp_path / "ck", 2)
    (root / "7").write_text("not a step")
    assert resolve(root) == (root, 2)


def test_a_checkpoint_root_with_a_numbered_name_opens_its_latest_step(tmp_path):
    root = steps(tmp_path / "2024", 1, 3)  # e.g. a root named for its year
    assert resolve(root) == (root, 3)
    assert resolve(root / "1") == (root, 1)  # a step directory itself


def test_previous_copies_are_numbered_steps_only_and_the_latest_is_named(tmp_path):
    root = tmp_path / "checkpoints"
    steps(root, "3.previous", "5.previous", "best.previous")
    (root / "6.previous").write_text("a file")
    assert previous_copies(root) == {3: root / "3.previous", 5: root / "5.previous"}
    with pytest.raises(UserError, match=r"^checkpoint '.*': a re-save of step 5 was interrupted .*"
                                        r"5\.previous.*or rename it to .*checkpoints/5\)$"):
        resolve(tmp_path)


def test_only_a_directory_with_config_json_and_safetensors_is_said_to_be_hugging_faces(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    with pytest.raises(UserError) as info:
        resolve(tmp_path / "hf")
    assert "holds no checkpoint step" in str(info.value) and "Hugging Face" not in str(info.value)
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"")  # an older hub layout: said, not just "no step"
    with pytest.raises(UserError, match=r"no numbered step directory\); it looks like a Hugging Face checkpoint with "
                                        r"PyTorch \*\.bin weights: r1jax reads \*\.safetensors only"):
        resolve(tmp_path / "hf")
    (tmp_path / "hf" / "pytorch_model.bin").unlink()
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="looks like a Hugging Face checkpoint: convert it with `r1jax import-hf`"):
        resolve(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").unlink()  # a download that lost its config.json: named, not just "no step"
    with pytest.raises(UserError, match=r"holds no checkpoint step \(no numbered step directory\); it holds "
                                        r"\*\.safetensors but no config\.json, which a Hugging Face checkpoint "
                                        r"needs \(an incomplete download\?\)$"):
        resolve(tmp_path / "hf")


def test_a_read_that_fails_while_the_steps_stay_the_same_is_real_damage_named_at_once(tmp_path):
    root = steps(tmp_path / "checkpoints", 1, 3)
    tried = []

    def read(step_dir):
        tried.append(step_dir.name)
        raise UserError(f"checkpoint {step_dir} is damaged")

    with pytest.raises(UserError, match=r"checkpoints/3 is damaged$"):
        read_latest(tmp_path, read)
    assert tried == ["3"]


def test_a_checkpoint_without_the_trainers_meta_has_no_data_source(tmp_path):
    root = steps(tmp_path / "ck", "0/config", "0/params")  # as `r1jax init` and import-hf write them
    assert data_source(root) is None and trained(root) is False


def test_a_restore_error_is_found_as_a_cause_or_as_the_error_being_handled():
    def chained(inner, explicit):
        try:
            try:
                raise inner
            except Exception as err:
                if explicit:
                    raise RuntimeError("wrapped") from err
                raise RuntimeError("while handling")  # Orbax's bare Exception around a failed read
        except RuntimeError as outer:
            return outer

    for explicit in (True, False):
        inner = KeyError("params")
        assert restore_error(chained(inner, explicit)) is inner
    assert restore_error(chained(ZeroDivisionError(), False)) is None
    loop = RuntimeError("a")
    loop.__cause__ = RuntimeError("b")
    loop.__cause__.__cause__ = loop  # a cycle ends the search
    assert restore_error(loop) is None
    assert restore_error(OSError("missing")).args == ("missing",)


def test_only_orbaxs_reports_of_a_refused_save_are_dropped():
    """The filter on absl's logger dropped any library's report holding a storage error, and a report whose
    arguments did not fit its format raised into the code that logged it (logging says so, and goes on)."""
    import errno
    import logging

    from r1jax.rl.failed_saves import quiet_failed_saves

    quiet_failed_saves()
    absl = logging.getLogger("absl")
    full = "Failed writing: \"/r/c/d/a6\": No space left on device [os_error_code='28']"
    orbax = "/x/site-packages/orbax/checkpoint/_src/async_utils.py"

    def record(path, msg, args=(), error=None):
        exc_info = (type(error), error, None) if error else None
        return logging.LogRecord("absl", logging.ERROR, path, 1, msg, args, exc_info)

    assert not absl.filter(record(orbax, full))
    assert not absl.filter(record(orbax, "save failed", error=OSError(errno.ENOSPC, "No space left", "/r/c")))
    denied = PermissionError(errno.EACCES, "Permission denied", "/etc/shadow")
    assert absl.filter(record("/x/site-packages/other/reader.py", "could not read", error=denied))
    assert absl.filter(record(orbax, "bad %s %s", (1,)))  # no TypeError here


def _resave_finishing_on_first_wait(monkeypatch, root, step):
    """A trainer's re-save of `step` in its window (`step.previous` aside, the new copy not yet in place): the
    reader's first wait lets a thread rename the new copy into place and drop the old one, as the trainer
    does once the new copy commits. Returns the waits made."""
    import threading

    import r1jax.rl.checkpoint_paths as paths

    (root / f"{step}.orbax-checkpoint-tmp").mkdir()
    (root / f"{step}.orbax-checkpoint-tmp" / "new").write_text("")
    waits = []

    def commit():
        (root / f"{step}.orbax-checkpoint-tmp").rename(root / str(step))
        (root / f"{step}.previous").rmdir()

    def sleep(seconds):
        if not waits:
            trainer = threading.Thread(target=commit)
            trainer.start()
            trainer.join()
        waits.append(seconds)

    monkeypatch.setattr(paths.time, "sleep", sleep)
    return waits


@pytest.fixture
def trainer(tmp_path):
    """A trainer that holds the run directory `tmp_path` (its lock: r1jax.files.lock_directory)."""
    from r1jax.files import lock_directory

    handle = lock_directory(tmp_path, "run directory")
    yield handle
    handle.close()


def test_a_step_named_while_it_is_saved_again_is_read_once_its_new_copy_stands(tmp_path, monkeypatch, trainer):
    """Step 3 moved aside as `3.previous` and its new copy not yet renamed into place: a read of `.../3` by
    name waits for the new copy (it failed "does not exist")."""
    root = steps(tmp_path / "checkpoints", 2, "3.previous")
    waits = _resave_finishing_on_first_wait(monkeypatch, root, 3)
    assert read_latest(root / "3", lambda d: sorted(p.name for p in d.iterdir())) == ["new"]
    assert len(waits) == 1 and resolve(root / "3") == (root, 3)


def test_a_step_moved_aside_between_finding_it_and_holding_it_is_read_from_its_new_copy(tmp_path, monkeypatch,
                                                                                          trainer):
    """The re-save moves step 3 aside after the reader found it, before its lease held it: read again once the
    new copy stands (it failed "was deleted")."""
    import r1jax.rl.checkpoint_paths as paths

    root = steps(tmp_path / "checkpoints", 3)
    waits, held = _resave_finishing_on_first_wait(monkeypatch, root, 3), paths.held
    moved = []

    def move_aside_then_hold(root_, step):
        if not moved:
            moved.append((root / "3").rename(root / "3.previous"))
        return held(root_, step)

    monkeypatch.setattr(paths, "held", move_aside_then_hold)
    assert read_latest(root / "3", lambda d: sorted(p.name for p in d.iterdir())) == ["new"]
    assert moved and len(waits) == 1


def test_a_step_that_does_not_exist_fails_at_once_and_an_endless_resave_after_the_wait(tmp_path, monkeypatch,
                                                                                      trainer):
    import r1jax.rl.checkpoint_paths as paths

    root = steps(tmp_path / "checkpoints", 2, "3.previous")
    waits = []
    monkeypatch.setattr(paths.time, "sleep", waits.append)
    with pytest.raises(UserError, match=r"^checkpoint '.*checkpoints/4' does not exist$"):
        read_latest(root / "4", lambda d: d)
    with pytest.raises(UserError, match=r"^checkpoint '.*checkpoints/2.previous' does not exist$"):
        read_latest(root / "2.previous", lambda d: d)
    assert waits == []  # no step 4 being saved again: no wait
    monkeypatch.setattr(paths, "RESAVE_WAIT_S", 0.0)  # a live trainer's re-save that does not end
    with pytest.raises(UserError, match=r"^checkpoint '.*checkpoints/3' does not exist: step 3 is being saved again "
                                        r"\(not in place after 0 s\), its previous copy in .*checkpoints/3\.previous: "
                                        r"read again once the trainer's save of it ends"):
        read_latest(root / "3", lambda d: d)
    monkeypatch.chdir(root)  # `3` named from within the checkpoint root: the trainer's lock is in the directory above
    with pytest.raises(UserError, match=r"^checkpoint '3' does not exist: step 3 is being saved again"):
        read_latest("3", lambda d: d)


@pytest.mark.parametrize("only", [False, True])  # steps 2 and 3, or (checkpoint.keep: 1) step 3 alone
@pytest.mark.parametrize("given", ["run", "root"])
def test_the_latest_step_while_it_is_saved_again_is_read_once_its_new_copy_stands(tmp_path, monkeypatch, trainer,
                                                                                   only, given):
    """The run directory or the checkpoint root given (export-hf RUN, eval RUN) while a live trainer saves the
    latest step 3 again: the read waits for the new 3 (it read step 2, an older model than asked for, or under
    `keep: 1` failed 're-save of step 3 was interrupted')."""
    root = steps(tmp_path / "checkpoints", *([] if only else [2]), "3.previous")
    waits = _resave_finishing_on_first_wait(monkeypatch, root, 3)
    path = tmp_path if given == "run" else root
    assert read_latest(path, lambda d: (d.name, sorted(p.name for p in d.iterdir()))) == ("3", ["new"])
    assert len(waits) == 1 and resolve(path) == (root, 3)


@pytest.mark.parametrize("lock_file", [False, True])  # none (no trainer ever ran), or a killed trainer's
def test_a_killed_resaves_copy_aside_is_named_at_once_by_every_read(tmp_path, monkeypatch, lock_file):
    """No trainer holds the run directory: the `3.previous` a killed re-save left is named at once, the step named
    or the latest asked for (a named read waited 10 s for it each time; a read of the run read step 2), as the
    trainer's next start puts it back as step 3 (TrainCheckpointer._settle_previous_copies)."""
    import r1jax.rl.checkpoint_paths as paths
    from r1jax.files import lock_directory

    if lock_file:
        lock_directory(tmp_path, "run directory").close()
    root = steps(tmp_path / "checkpoints", 2, "3.previous")
    waits = []
    monkeypatch.setattr(paths.time, "sleep", waits.append)
    for path in (tmp_path, root, root / "3"):
        with pytest.raises(UserError, match=rf"^checkpoint '{path}'.*: a re-save of step 3 was interrupted and left "
                                            rf"its previous copy in {root}/3\.previous: resuming the run puts it "
                                            rf"back \(or rename it to {root}/3\)$"):
            read_latest(path, lambda d: d.name)
    assert waits == [] and read_latest(root / "2", lambda d: d.name) == "2"  # a committed step named: read


def test_a_read_waiting_for_a_resave_whose_trainer_is_killed_names_its_copy_aside_at_once(tmp_path, monkeypatch,
                                                                                          trainer):
    """The trainer is killed while a read waits for its re-save of step 3: the read names the copy aside and what
    to do when the lock goes (it waited out the 10 s, then said 'being saved again', nothing to do)."""
    import r1jax.rl.checkpoint_paths as paths

    root, now = steps(tmp_path / "checkpoints", 2, "3.previous"), [0.0]

    def sleep(seconds):  # the trainer dies at the read's first poll
        now[0] += seconds
        trainer.close()

    monkeypatch.setattr(paths.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(paths.time, "sleep", sleep)
    for path in (tmp_path, root / "3"):
        now[0] = 0.0
        with pytest.raises(UserError, match=r": a re-save of step 3 was interrupted .* resuming the run puts it back"):
            read_latest(path, lambda d: d.name)
        assert now[0] < 0.1


def test_a_checkpoint_root_named_through_a_link_finds_its_trainers_lock(tmp_path, monkeypatch, trainer):
    """The root named by a link to RUN/checkpoints: the lock above it was looked for beside the link, none found,
    and a live re-save of step 3 was said 'interrupted' at once; now the real path's run directory is probed too
    (and a RUN/checkpoints that is itself a link, named through RUN, still finds RUN's lock)."""
    root = steps(tmp_path / "checkpoints", 2, "3.previous")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "link").symlink_to(root)
    waits = _resave_finishing_on_first_wait(monkeypatch, root, 3)
    assert read_latest(tmp_path / "elsewhere" / "link" / "3", lambda d: sorted(p.name for p in d.iterdir())) \
        == ["new"] and len(waits) == 1


def test_a_checkpoint_root_that_is_a_link_elsewhere_named_through_its_run_finds_the_runs_lock(tmp_path, monkeypatch,
                                                                                              trainer):
    # RUN/checkpoints links to a store whose parent no trainer holds: RUN's lock (beside the link) still counts
    store = steps(tmp_path / "store" / "ck", 2, "3.previous")
    (tmp_path / "checkpoints").symlink_to(store)
    waits = _resave_finishing_on_first_wait(monkeypatch, store, 3)
    assert read_latest(tmp_path / "checkpoints" / "3", lambda d: sorted(p.name for p in d.iterdir())) == ["new"]
    assert len(waits) == 1


def test_a_resave_under_a_lock_file_not_ours_to_read_is_waited_for_and_says_it_cannot_be_told(tmp_path, monkeypatch):
    """No trainer, its lock file not readable by this user: the read waits as if one held it (a live re-save is not
    to be cut short), then says the lock could not be probed (it said 'being saved again', which it cannot know)."""
    import r1jax.rl.checkpoint_paths as paths
    from r1jax.files import lock_directory
    from tests.test_files import unreadable_lock

    lock_directory(tmp_path, "run directory").close()
    root = steps(tmp_path / "checkpoints", 2, "3.previous")
    unreadable_lock(monkeypatch)
    monkeypatch.setattr(paths, "RESAVE_WAIT_S", 0.0)
    with pytest.raises(UserError, match=r": step 3 is not in place after 0 s, its previous copy in .*3\.previous; "
                                        r"whether a trainer saves it again cannot be told \(.*/\.lock cannot be read "
                                        r"\(Permission denied\)\): read again later; if no trainer runs there, "
                                        r"resuming the run puts it back$"):
        read_latest(root / "3", lambda d: d.name)


def test_the_reason_a_lock_cannot_be_told_is_the_probe_that_gave_one(tmp_path, monkeypatch):
    # RUN/checkpoints links to store/ck: RUN holds no lock (told: none), store's lock is not ours to read (not told):
    # the message names store's reason, not RUN's "no lock"
    import r1jax.files as files
    import r1jax.rl.checkpoint_paths as paths

    (tmp_path / "store").mkdir()
    files.lock_directory(tmp_path / "store", "run directory").close()
    store = steps(tmp_path / "store" / "ck", 2, "3.previous")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").symlink_to(store)
    real = open

    def refusing(path, *args, **kwargs):  # (root reads any file: a lock not ours to read is faked)
        if str(path).endswith("/" + files.LOCK_NAME) and os.path.exists(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files, "open", refusing, raising=False)
    monkeypatch.setattr(paths, "RESAVE_WAIT_S", 0.0)
    with pytest.raises(UserError, match=r"cannot be told \(.*/store/\.lock cannot be read \(Permission denied\)\)"):
        read_latest(tmp_path / "run" / "checkpoints" / "3", lambda d: d.name)
