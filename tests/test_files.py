"""r1jax.files.write_atomically: the new content whole, or the old one, never a cut file or a stray temporary; the
run directory's lock: one holder, also when a refused start takes back the lock file it added."""

import fcntl
import os
import socket
import subprocess
import sys

import pytest

from r1jax import files
from r1jax.errors import UserError


def test_a_write_replaces_the_content_whole(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    files.write_atomically(path, "new " * 1000)
    files.write_atomically(tmp_path / "bytes.bin", b"\x00\xff")
    assert path.read_text() == "new " * 1000 and (tmp_path / "bytes.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bytes.bin", "summary.json"]


def test_a_write_that_fails_midway_leaves_the_old_content_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text("stages: [sft, grpo]")

    def killed(*args):  # what a kill between the write and the rename leaves
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        files.write_atomically(path, "stag")
    assert path.read_text() == "stages: [sft, grpo]" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_the_data_and_the_rename_reach_the_disk(tmp_path, monkeypatch):
    """A kill cannot cut the file; a host crash could still leave it empty unless the data is synced before
    the rename and the directory after it."""
    synced, fsync = [], os.fsync

    def recording(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    files.write_atomically(tmp_path / "summary.json", "{}")
    assert synced == [False, True]  # the temporary file's data, then the directory holding the new name


def test_a_lock_file_removed_after_it_was_opened_is_not_taken_for_the_lock(tmp_path, monkeypatch):
    """Trainer B opens .lock; A's refused start removes the .lock it added and lets go; B's flock then took the
    removed file, and trainer C a new .lock: two trainers in one directory. B now locks the file at the path."""
    a = files.lock_directory(tmp_path, "run directory")
    real, pending = fcntl.flock, [True]

    def flock(handle, operation):  # between B's open and its flock, A's release (Trainer.release's order)
        if pending[0]:
            pending[0] = False
            (tmp_path / files.LOCK_NAME).unlink()
            a.close()
        return real(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    b = files.lock_directory(tmp_path, "run directory")
    monkeypatch.setattr(fcntl, "flock", real)
    assert os.fstat(b.fileno()).st_ino == os.stat(tmp_path / files.LOCK_NAME).st_ino
    with pytest.raises(UserError, match=r"in use by another trainer \(pid \d+ on "):
        files.lock_directory(tmp_path, "run directory")
    b.close()


def test_a_lock_is_seen_held_while_a_trainer_holds_it_and_the_probe_keeps_none(tmp_path, monkeypatch):
    assert not files.lock_held(tmp_path)  # no lock file: no trainer ever ran here
    trainer = files.lock_directory(tmp_path, "run directory")
    assert files.lock_held(tmp_path)
    trainer.close()
    assert not files.lock_held(tmp_path)  # a killed trainer's file: the kernel dropped its lock
    files.lock_directory(tmp_path, "run directory").close()  # the probe left no lock behind to refuse a start
    monkeypatch.setattr(fcntl, "flock", lambda *a: (_ for _ in ()).throw(OSError(38, "Function not implemented")))
    assert files.lock_held(tmp_path)  # no flock here: cannot be told, taken as held
    assert files.lock_probe(tmp_path) == f"{tmp_path}/.lock cannot be locked here (Function not implemented)"


def unreadable_lock(monkeypatch):
    """The run directory's lock file not ours to read (another user's run; root reads any, so it is faked)."""
    real = open

    def refusing(path, *args, **kwargs):
        if str(path).endswith("/" + files.LOCK_NAME):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files, "open", refusing, raising=False)


def test_a_lock_file_not_ours_to_read_is_taken_as_held_and_says_why(tmp_path, monkeypatch):
    """Held where it cannot be told (a live trainer's re-save is not to be cut short), with the reason, so a reader
    can say that rather than 'being saved again' (rl.checkpoint_paths._saved_again)."""
    assert files.lock_probe(tmp_path) is False  # no lock file
    files.lock_directory(tmp_path, "run directory").close()
    assert files.lock_probe(tmp_path) is False
    unreadable_lock(monkeypatch)
    assert files.lock_held(tmp_path)
    assert files.lock_probe(tmp_path) == f"{tmp_path}/.lock cannot be read (Permission denied)"


def test_a_readers_probe_of_the_lock_does_not_refuse_a_trainers_start(tmp_path, monkeypatch):
    """A reader's `lock_held` holds a shared flock for microseconds: a trainer starting then waits it out (it was
    refused: 'in use by another trainer (a process that has not written its name yet ...)')."""
    (tmp_path / files.LOCK_NAME).touch()
    probe = open(tmp_path / files.LOCK_NAME, "rb")
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # the reader, mid-probe
    monkeypatch.setattr(files.time, "sleep", lambda s: probe.close())  # its probe ends
    files.lock_directory(tmp_path, "run directory").close()
    assert probe.closed


def _clock(monkeypatch, at=None):
    """files' clock, moved on by its sleeps only; `at(now)` runs at each sleep (a reader's probe ending)."""
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds
        if at:
            at(now[0])

    monkeypatch.setattr(files.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(files.time, "sleep", sleep)
    return now


def test_a_start_waits_out_a_readers_probe_held_past_a_tenth_of_a_second(tmp_path, monkeypatch):
    """A probe descheduled on a loaded host (or held by many readers in turn) outlasted the fixed 0.1 s, and the
    start was refused as 'in use by another trainer': a lock held shared only is readers', waited out."""
    (tmp_path / files.LOCK_NAME).touch()
    probe = open(tmp_path / files.LOCK_NAME, "rb")
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
    _clock(monkeypatch, lambda now: now >= 0.5 and probe.close())
    files.lock_directory(tmp_path, "run directory").close()
    assert probe.closed


def test_a_trainers_lock_refuses_a_start_at_once_and_a_probe_stuck_past_the_grace_is_named(tmp_path, monkeypatch):
    now = _clock(monkeypatch)
    trainer = files.lock_directory(tmp_path, "run directory")
    with pytest.raises(UserError, match=r"in use by another trainer \(pid \d+ on "):
        files.lock_directory(tmp_path, "run directory")
    assert now[0] == 0  # no wait for a lock held exclusively
    trainer.close()
    probe = open(tmp_path / files.LOCK_NAME, "rb")
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a reader stopped mid-probe (Ctrl-Z)
    with pytest.raises(UserError, match=r"held shared, by no trainer, for over 5 s \(a reader of the run stopped"):
        files.lock_directory(tmp_path, "run directory")
    assert now[0] >= files.PROBE_GRACE_S
    probe.close()


def test_a_write_takes_away_the_temporaries_of_killed_writers_only(tmp_path):
    """A writer killed between its write and its rename (SIGKILL: no cleanup runs) left `.NAME.HOST-PID.tmp`
    for good; the next write of NAME removes it, but not a live writer's, another host's, another container's (a
    pid namespace of its own: its pids are not this one's), or another name's."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host = files.process_home()
    killed = tmp_path / f".summary.json.{host}-{child.pid}.tmp"
    killed_dir = tmp_path / f".summary.json.{host}-{child.pid}.partial"
    kept = [tmp_path / f".summary.json.{host}-{os.getppid()}.tmp",  # alive
            tmp_path / f".summary.json.other-host-{child.pid}.tmp",  # a shared file system's other host
            tmp_path / f".summary.json.{socket.gethostname()}-1-{child.pid}.tmp",  # another pid namespace
            tmp_path / f".config.yaml.{host}-{child.pid}.tmp",  # another file's: its own write sweeps it
            tmp_path / f".summary.json.{host}-x{child.pid}.tmp"]  # not a pid
    for path in [killed] + kept:
        path.write_text("half")
    killed_dir.mkdir()
    (killed_dir / "weights").write_text("half")
    files.write_atomically(tmp_path / "summary.json", "{}")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["summary.json", killed_dir.name] + [p.name for p in kept])
    # named by this host, this pid namespace and this pid
    namespace = os.stat("/proc/self/ns/pid").st_ino
    staged = files.staging_path(tmp_path / "summary.json", "partial")
    assert staged == tmp_path / f".summary.json.{socket.gethostname()}-{namespace}-{os.getpid()}.partial"
    assert not killed_dir.exists()


def test_a_full_disk_names_the_file_written_not_its_staging_file(tmp_path, monkeypatch):
    """ENOSPC from a write or its fsync names no file (Python's OSError has none): the error names the file the
    user sees, and the old content stays."""
    import errno

    path = tmp_path / "summary.json"
    path.write_text("{}")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as caught:
        files.write_atomically(path, "{\"evals\": []}")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert files.storage_failure(caught.value) == f"no space left on device: {path}"
    assert path.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_storage_failures_are_told_from_other_errors():
    import errno

    tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing "embed_tokens/0.0" in OCDBT database at local file '
                             '"/r/checkpoints/2.orbax-checkpoint-tmp/params/": Failed writing: "/r/checkpoints/2.orbax-'
                             'checkpoint-tmp/params/d/a6": Failed to write 36295 bytes to file 22: No space left on '
                             "device [os_error_code='28']")
    assert files.storage_failure(tensorstore) == \
        "no space left on device: /r/checkpoints/2.orbax-checkpoint-tmp/params/d/a6"
    assert files.storage_failure(OSError(errno.EROFS, "Read-only file system", "/r/x")) == "read-only file system: /r/x"
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert files.storage_failure(wrapped) == "disk quota exceeded"
    assert files.storage_failure(OSError(errno.ENOENT, "No such file", "/r/x")) is None
    assert files.storage_failure(ValueError("[os_error_code='2'] not found")) is None
    assert files.storage_failure(ValueError("bad value")) is None


def test_a_mistake_made_while_handling_a_full_disk_is_reported_as_itself():
    """A bug in a handler of a refused write (here an AttributeError) was read as the disk's refusal it was raised
    during (error_chain follows __context__): one line, "free space", and the bug's traceback hidden."""
    import errno

    def handle_full_disk():
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/r/metrics.jsonl")
        except OSError as refused:
            refused.filenmae.upper()  # the handler's bug

    with pytest.raises(AttributeError) as caught:
        handle_full_disk()
    assert isinstance(caught.value.__context__, OSError)
    assert files.storage_failure(caught.value) is None
    assert files.storage_failure(caught.value.__context__) == "no space left on device: /r/metrics.jsonl"
    bug = KeyError("step")
    bug.__cause__ = OSError(errno.EROFS, "Read-only file system", "/r/x")
    assert files.storage_failure(bug) is None


def test_a_permission_refused_to_no_file_is_no_storage_failure():
    """EPERM/EACCES naming no file (os.kill of another user's process, setuid, a socket) is not the disk's: a bug
    raising one lost its traceback to "operation not permitted"."""
    import errno

    try:
        os.kill(1, 0) if os.getuid() != 0 else None
        raise PermissionError(errno.EPERM, "Operation not permitted")
    except PermissionError as err:
        assert err.filename is None and files.storage_failure(err) is None
    assert files.storage_failure(PermissionError(errno.EACCES, "Permission denied")) is None
    assert files.storage_failure(PermissionError(errno.EACCES, "Permission denied", "/r/x")) == "permission denied: /r/x"


def test_a_lock_path_that_is_a_fifo_or_a_device_is_answered_not_waited_on(tmp_path):
    """A FIFO at RUN/.lock blocked a reader's probe in open() until a writer came (forever): now an answer (cannot
    be told, taken as held), as a device's is; a trainer's start there is refused in a line (it was a traceback)."""
    os.mkfifo(tmp_path / files.LOCK_NAME)
    probe = "import sys; from r1jax import files; print(files.lock_probe(sys.argv[1]), files.lock_held(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=20)
    assert done.stdout == f"{tmp_path}/.lock cannot be read (a FIFO, not a lock file) True\n", done.stderr
    assert files._held_exclusively(tmp_path / files.LOCK_NAME) is False  # (a start's check of it: answered too)
    with pytest.raises(UserError, match=r"its lock .*/\.lock is not a regular file \(a FIFO or a device\)"):
        files.lock_directory(tmp_path, "run directory")
    os.unlink(tmp_path / files.LOCK_NAME)
    os.symlink("/dev/null", tmp_path / files.LOCK_NAME)
    assert files.lock_probe(tmp_path) == f"{tmp_path}/.lock cannot be read (not a regular file)"
    with pytest.raises(UserError, match=r"its lock .*/\.lock is not a regular file"):  # (a device: no flock on it)
        files.lock_directory(tmp_path, "run directory")
