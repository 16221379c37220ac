"""Leases on checkpoint steps: a reader (export-hf, export-gguf, eval, generate) holds the step it reads, and a
trainer's pruning (`checkpoint.keep`) leaves a held step for a later save to delete.

A lease is a shared flock on the step directory itself, held while the read lasts: nothing is written (a reader
needs no write permission), and the kernel drops it when the reader ends, however it ends. The trainer deletes
step N only under an exclusive flock of N taken without waiting: held by a reader, the step is left (deleted by
a later save, the trainer's close, or the next run's retention); free, it is deleted while the trainer holds it.
A reader that locks after the trainer, or locks a directory no longer at N, finds the step gone and reads the
new latest. Training never waits on a reader: the worst a reader costs is one step kept a little longer.

A file system without flock on directories (some network and FUSE mounts): no lease, and
`rl.checkpoint_paths.read_latest` rereads as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import threading
from typing import Callable, Iterator, Sequence

from r1jax.files import same_file


class StepGone(Exception):
    """The step was deleted (or is being deleted) before the reader's lease held it."""


class StepSavedAgain(StepGone):
    """The step was saved again while it was read (`Lease.saved_again`): a new copy stands at its path."""


def _open(step_dir: pathlib.Path) -> int | None:
    try:
        return os.open(step_dir, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return None


class Lease:
    """What `held` yields: true when a lease is held (false: none can be taken here, the read goes on unheld)."""

    def __init__(self, fd: int, step_dir: pathlib.Path, holding: bool):
        self._fd, self._step_dir, self.holding = fd, step_dir, holding

    def __bool__(self) -> bool:
        return self.holding

    def saved_again(self) -> bool:
        """Whether another directory stands at the step's path: a lease does not stop a trainer that saves the
        same step again (a stage's end saved again after a stop) from moving it aside as `N.previous` and
        writing a new `N`, so a read by path may have mixed the two copies. (A step deleted is not this.)"""
        return self._step_dir.exists() and not same_file(self._fd, self._step_dir)


@contextlib.contextmanager
def held(root: pathlib.Path, step: int) -> Iterator[Lease]:
    """Hold step `step` of `root` against a trainer's pruning for the `with` block (the `Lease`). Raises
    StepGone when the step is deleted or being deleted."""
    step_dir = root / str(step)
    fd = _open(step_dir)
    if fd is None:
        raise StepGone(f"step {step} was deleted")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StepGone(f"step {step} is being deleted") from None
        except OSError:  # a file system without flock on directories
            yield Lease(fd, step_dir, False)
            return
        if not same_file(fd, step_dir):  # deleted (or moved aside) before the lease held it
            raise StepGone(f"step {step} was deleted")
        yield Lease(fd, step_dir, True)
    finally:
        os.close(fd)


def delete_unless_held(step_dir: pathlib.Path, delete: Callable[[], None]) -> bool:
    """`delete()` of the step directory `step_dir` unless a reader holds it (then False)."""
    fd = _open(step_dir)
    if fd is None:
        return True  # gone already
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    except OSError:  # no flock here: readers take no lease either
        pass
    try:
        delete()
    finally:
        os.close(fd)
    return True


class LeaseRespectingDeleter:
    """Orbax's checkpoint deleter (`CheckpointManager._checkpoint_deleter`, on the process that deletes), deleting
    only steps no reader holds; a held step is tried again at each later deletion and at close."""

    def __init__(self, inner, root: pathlib.Path):
        self._inner, self._root = inner, root
        self._deferred: set[int] = set()
        self._lock = threading.Lock()  # Orbax deletes in its finalize thread; close runs in the caller's

    def delete(self, step: int) -> None:
        if not delete_unless_held(self._root / str(step), lambda: self._inner.delete(step)):
            with self._lock:
                self._deferred.add(step)

    def delete_steps(self, steps: Sequence[int]) -> None:
        with self._lock:
            retry, self._deferred = sorted(self._deferred - set(steps)), set()
        for step in [*retry, *steps]:
            self.delete(step)

    def close(self) -> None:
        self.delete_steps([])
        self._inner.close()
