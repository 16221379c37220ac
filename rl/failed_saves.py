"""A checkpoint save the file system refuses (full, read-only, over a file-size limit) ends in one line and leaves
nothing written on after it: Orbax's managers closed whole (`close_failed`), the save's writer threads waited for
(`wait_for_writers`), and the reports of its background threads dropped (`quiet_failed_saves`). Used by
rl.checkpoint's one-off saves (init, import-hf) and by the trainer's checkpointer (rl.train.checkpointing).
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
import threading
import time

import orbax.checkpoint as ocp

from r1jax.files import storage_failure


WRITERS_WAIT_S = 120.0  # the most a failed save waits for Orbax's writes still under way


CLOSE_TRIES = 3


def close_failed(manager: ocp.CheckpointManager | None) -> None:
    """Close a manager whose save failed, its errors dropped (the save's is the one raised): its close raises
    that error again before it shuts down its checkpointer and metadata stores, whose threads then wrote on
    into the step after it was taken back; a close tried again shuts them down."""
    for _ in range(CLOSE_TRIES if manager is not None else 0):
        try:
            manager.close()
            return
        except BaseException:  # noqa: BLE001 - the save's own error, again
            continue


def save_threads() -> set[threading.Thread]:
    """The threads that write a save's files: Orbax's (a commit future's: an item's arrays, its metadata) and
    their event loops' executor workers (asyncio's `asyncio_N`: Orbax's directory creations)."""
    return {t for t in threading.enumerate()
            if type(t).__module__.split(".")[0] == "orbax" or t.name.startswith("asyncio_")}


def _writing(thread: threading.Thread) -> bool:
    """Whether `thread` still writes: an Orbax thread while it lives; an executor worker (`asyncio_N`) only while
    it runs a call or has one queued. An idle worker lives as long as its loop's executor, which another event
    loop (any library's, started after the snapshot) may never shut down: waiting for it took the full
    WRITERS_WAIT_S at every failed save."""
    if not thread.is_alive() or thread is threading.current_thread():
        return False
    if type(thread).__module__.split(".")[0] == "orbax":
        return True
    work = next((a for a in getattr(thread, "_args", ()) if hasattr(a, "empty")), None)  # its executor's queue
    if work is not None and not work.empty():
        return True
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:  # a call under way: the worker's _WorkItem.run is on its stack
        if frame.f_code.co_name == "run" and frame.f_code.co_filename.endswith(os.path.join("futures", "thread.py")):
            return True
        frame = frame.f_back
    return work is None  # not a thread-pool worker: unknown, waited for while it lives


def wait_for_writers(before: set[threading.Thread], timeout_s: float = WRITERS_WAIT_S) -> None:
    """Wait (at most `timeout_s`) until every writer thread that a save started (not in `before`) has ended or,
    an executor worker, gone idle (`_writing`). A failed save raises at its first item's error while the
    others' threads still write: the partial step reappeared after it was taken back (refusing the next try)
    and their writes died at the interpreter's exit on a traceback ("cannot schedule new futures after
    interpreter shutdown"). A writer may start another (the metadata after the arrays): the threads are listed
    again until none writes, twice in a row (a worker between taking a call and running it looks idle)."""
    deadline, quiet = time.monotonic() + timeout_s, 0
    while quiet < 2 and time.monotonic() < deadline:
        running = [t for t in save_threads() - before if _writing(t)]
        quiet = 0 if running else quiet + 1
        if running:  # Thread.join itself: Orbax's join raises its thread's error
            threading.Thread.join(running[0], max(0.0, min(0.05, deadline - time.monotonic())))
        else:
            time.sleep(0.01)


class _StorageFailureReports(logging.Filter):
    """Drops Orbax's reports of a save the file system refused (full, read-only): each of its background threads
    logged the error with its traceback (a page per thread), and the same error reaches the trainer at the next
    save or at the end, where the command prints it as one line naming the file (rl.cli.main). Also asyncio's
    "Future exception was never retrieved" of such a refusal: a tensorstore write that the failed save's event
    loop no longer awaited, reported with its tensorstore spec when collected."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "asyncio" and "orbax" not in pathlib.PurePath(record.pathname).parts:  # not a save's
            return True
        error = record.exc_info[1] if record.exc_info else None
        try:
            text = record.getMessage()
        except Exception:  # a report that does not format: logging's own handler says so (raised here, its caller's)
            return True
        return not ((error is not None and storage_failure(error)) or storage_failure(ValueError(text)))


def quiet_failed_saves() -> None:
    """A save the disk refuses leaves one line, not pages: Orbax's threads' reports dropped, and the "Event loop
    is closed" reports of the writes tensorstore finishes after the failure closed Orbax's loop."""
    for logger in map(logging.getLogger, ("absl", "asyncio")):
        if not any(isinstance(f, _StorageFailureReports) for f in logger.filters):
            logger.addFilter(_StorageFailureReports())
    drop_closed_loop_reports()


def drop_closed_loop_reports() -> None:
    """After a failed restore, tensorstore still finishes the reads Orbax started and hands each result to
    Orbax's event loop, which the failure closed; every hand-off then reports "Event loop is closed" through
    sys.unraisablehook, a page of tracebacks around the error, before or after it. Drop those reports (only
    those; a restore that succeeds makes none) from the first restore on."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_reports", False):
        return

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_closed_loop_reports = True
    sys.unraisablehook = hook
