"""Files a kill must not leave half-written: run state rewritten in place (config.yaml, summary.json, metrics.jsonl
cut back on resume, the tokenizer saved beside every checkpoint, datasets); a run directory's lock, which
keeps a second trainer out of it; the paths tensorstore can write (UTF-8 only); a path removed whatever it is;
where to stage a file or directory before it takes its name, and the stages a killed process left."""

from __future__ import annotations

import fcntl
import logging
import os
import pathlib
import shutil
import socket
import time
from typing import IO

from r1jax.errors import UserError

LOCK_NAME = ".lock"  # in a run directory: who trains in it (a flock held while the trainer lives)


def not_utf8(text: str) -> str | None:
    """Where `text` is not valid UTF-8 ("byte 0xff at character 3"; a byte that is not arrives from argv and the
    os module as a surrogate escape), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        char = ord(err.object[err.start])
        what = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"character U+{char:04X}"
        return f"{what} at character {err.start}"
    return None


def check_checkpoint_path(path: str | os.PathLike, what: str) -> None:
    """A UserError naming `what` when `path` is not valid UTF-8: Orbax's storage layer (tensorstore) takes
    UTF-8 paths only, and failed with a traceback at the first save (a run's first stage trained, then lost)."""
    where = not_utf8(os.fspath(path))
    if where:
        raise UserError(f"{what} {os.fspath(path)!r} is not valid UTF-8 ({where}): checkpoints are read and written "
                        "by tensorstore, which takes UTF-8 paths only; rename it")


def remove(path: pathlib.Path) -> None:
    """`path` gone, a directory with what it holds (a link: the link only)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def staging_path(path: pathlib.Path, kind: str) -> pathlib.Path:
    """Where to write what becomes `path` (`.NAME.HOST-PIDNS-PID.KIND` beside it: renamed to `path` when whole),
    after removing the ones processes of this host and pid namespace that no longer run left there (a SIGKILL or
    a host crash lets no cleanup run: an export's partial directory held up to the whole model's bytes). Another
    host's (a shared file system), another container's (a pid namespace of its own) and a live process's are left
    alone."""
    prefix, suffix = f".{path.name}.{process_home()}-", f".{kind}"
    ours = path.with_name(f"{prefix}{os.getpid()}{suffix}")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return ours  # no directory to look in: the write itself says what is wrong
    for sibling in siblings:
        pid = sibling.name[len(prefix):-len(suffix)]
        if sibling.name.startswith(prefix) and sibling.name.endswith(suffix) and pid.isdigit() and not _alive(int(pid)):
            try:
                remove(sibling)
            except OSError:  # another process's sweep took it first, or it cannot be removed: not this write's concern
                pass
    return ours


def process_home() -> str:
    """Where this process's pid means this process: its host name and its pid namespace (containers sharing a
    host name, as with host networking, each have their own pids)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}-{namespace}"


def _alive(pid: int) -> bool:
    """Whether a process `pid` runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_file(handle: IO, path: pathlib.Path) -> bool:
    """Whether the open file `handle` is still the file at `path`."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(handle.fileno())
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
    """`path` holds `data` whole, or what it held before: written beside it, then renamed over it (a rename
    within one directory is atomic on POSIX file systems)."""
    path = pathlib.Path(path)
    tmp = staging_path(path, "tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
            f.flush()
            os.fsync(f.fileno())  # the data on disk before the name points at it (a host crash, not only a kill)
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # and the rename
        finally:
            os.close(directory)
    finally:
        tmp.unlink(missing_ok=True)


def lock_directory(directory: str | os.PathLike, what: str) -> IO | None:
    """Hold an exclusive flock on `directory`/.lock for as long as the returned file stays open (the process
    ending, even by SIGKILL, lets it go), with the holder's pid, host and start time in it. Held already: a
    UserError naming `what` and the holder. A file system without flock (some FUSE mounts): a warning, and
    None: the directory goes unguarded."""
    path = pathlib.Path(directory) / LOCK_NAME
    for _ in range(10):
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its name yet"
            handle.close()
            raise UserError(f"{what} {directory} is in use by another trainer ({holder}; {path}): wait for it to "
                            "end, or stop it (SIGTERM saves a checkpoint), then run again") from None
        except OSError as err:
            handle.close()
            logging.getLogger(__name__).warning("%s %s cannot be locked (%s): nothing keeps a second trainer out",
                                                what, directory, err)
            return None
        if _same_file(handle, path):
            break
        # removed after it was opened (a refused start takes back the lock file it added): a lock on it guards
        # nothing, and the next trainer would lock a new .lock beside it
        handle.close()
    else:
        raise UserError(f"{what} {directory}: its lock file {path} was replaced under each of 10 tries: other "
                        "trainers are starting there")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle
