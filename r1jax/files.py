"""Files a kill must not leave half-written: run state rewritten in place (config.yaml, summary.json, metrics.jsonl
cut back on resume, the tokenizer saved beside every checkpoint, datasets); a run directory's lock, which
keeps a second trainer out of it; the paths tensorstore can write (UTF-8 only); a path removed whatever it is;
where to stage a file or directory before it takes its name, and the stages a killed process left."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import pathlib
import re
import shutil
import socket
import stat
import time
from typing import IO

from r1jax.errors import UserError, error_chain

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


def same_file(handle: IO | int, path: pathlib.Path) -> bool:
    """Whether the open file `handle` (or file descriptor) is still the file at `path`."""
    try:
        there = os.stat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(handle if isinstance(handle, int) else handle.fileno())
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@contextlib.contextmanager
def writing(path: str | os.PathLike, *aliases: str | os.PathLike):
    """An OSError raised inside names `path`: a write's or a flush's (ENOSPC from `f.write`) names no file, and
    one naming a staging file (`aliases`) would name a file the user never sees."""
    try:
        yield
    except OSError as err:
        named = None if err.filename is None else os.fspath(err.filename)
        if err.errno is not None and (named is None or named in {os.fspath(a) for a in aliases}):
            raise OSError(err.errno, err.strerror, os.fspath(path)) from err
        raise


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
    """`path` holds `data` whole, or what it held before: written beside it, then renamed over it (a rename
    within one directory is atomic on POSIX file systems). A failure names `path` (`writing`)."""
    path = pathlib.Path(path)
    tmp = staging_path(path, "tmp")
    with writing(path, tmp):
        _write_atomically(path, tmp, data)


def _write_atomically(path: pathlib.Path, tmp: pathlib.Path, data: str | bytes) -> None:
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
        if path.exists() and not path.is_file():  # (a FIFO's open was a traceback: not seekable)
            raise UserError(f"{what} {directory}: its lock {path} is not a regular file (a FIFO or a device): "
                            "remove it, then run again")
        handle = open(path, "a+", encoding="utf-8")
        try:
            held = _lock_exclusive(handle, path)
        except OSError as err:
            handle.close()
            logging.getLogger(__name__).warning("%s %s cannot be locked (%s): nothing keeps a second trainer out",
                                                what, directory, err)
            return None
        if held:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its name yet"
            handle.close()
            if held == "shared":  # readers' probes only, past PROBE_GRACE_S: one stopped mid-probe
                raise UserError(f"{what} {directory}: its lock {path} is held shared, by no trainer, for over "
                                f"{PROBE_GRACE_S:g} s (a reader of the run stopped while probing it, e.g. "
                                "Ctrl-Z: let it go on or end it), then run again") from None
            raise UserError(f"{what} {directory} is in use by another trainer ({holder}; {path}): wait for it to "
                            "end, or stop it (SIGTERM saves a checkpoint), then run again") from None
        if same_file(handle, path):
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


PROBE_GRACE_S = 5.0  # how long a start waits out readers' `lock_probe` probes (each held for microseconds)


def _lock_exclusive(handle: IO, path: pathlib.Path) -> str | None:
    """An exclusive flock on `handle` taken without waiting for a trainer that holds it, but past readers' probes
    of it (`lock_probe`'s shared flocks: a probe refused a trainer's start as 'in use by another trainer', and
    one descheduled on a loaded host held it past a fixed 0.1 s). None: locked; "exclusive": a trainer holds it
    (said at once); "shared": readers held it all of PROBE_GRACE_S. OSError: no flock here."""
    deadline = time.monotonic() + PROBE_GRACE_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            if _held_exclusively(path):
                return "exclusive"
            if time.monotonic() >= deadline:
                return "shared"
            time.sleep(0.01)


def _held_exclusively(path: pathlib.Path) -> bool:
    """Whether a process holds an exclusive flock on `path` (a trainer's), not only shared ones (readers')."""
    try:
        with _open_lock(path) as probe:
            fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # (a shared lock beside readers' ones; closing drops it)
    except BlockingIOError:
        return True
    except OSError:  # gone (the next try opens the new one), or unreadable: its holders cannot be told apart
        return False
    return False


def _open_lock(path: pathlib.Path) -> IO:
    """`path` opened for reading without waiting (a FIFO there blocked its open until a writer came: forever);
    OSError (naming what it is) when it is not a regular file, which no trainer's lock is."""
    handle = open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK))
    kind = os.fstat(handle.fileno()).st_mode
    if not stat.S_ISREG(kind):
        handle.close()
        raise OSError(errno.ENODEV, "a FIFO, not a lock file" if stat.S_ISFIFO(kind) else "not a regular file",
                      str(path))
    return handle


def lock_held(directory: str | os.PathLike) -> bool:
    """Whether a process holds `directory`/.lock (`lock_directory`'s: a trainer lives there). True also where
    it cannot be told (`lock_probe`'s reason): the caller takes it as held."""
    return lock_probe(directory) is not False


def lock_probe(directory: str | os.PathLike) -> bool | str:
    """Whether a process holds `directory`/.lock, probed by a shared flock taken and dropped at once without
    waiting (no lock file: False), or why that cannot be told: a lock file not ours to read, or no regular file (a
    FIFO: its open no longer waits for a writer), a file system without flock (not told by /proc/locks either: it
    lists no other host's lock on a shared file system)."""
    path = pathlib.Path(directory) / LOCK_NAME
    try:
        handle = _open_lock(path)
    except FileNotFoundError:
        return False
    except OSError as err:
        return f"{path} cannot be read ({err.strerror or err})"
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as err:
            return f"{path} cannot be locked here ({err.strerror or err})"
        return False  # (closing drops the probe's lock)


# a file system refusing a write: full, over quota, read-only, or not ours to write (chattr +i, permissions)
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                   errno.EPERM: "operation not permitted", errno.EFBIG: "file too large"}
_REMEDIES = {errno.ENOSPC: "free space", errno.EDQUOT: "free space or raise the quota",
             errno.EROFS: "make it writable", errno.EACCES: "make it writable",
             errno.EPERM: "make it writable (an immutable file: chattr -i; another owner)",
             errno.EFBIG: "write where no file-size limit stops it (the file system's, or the shell's `ulimit -f`)"}


# refusals that are the file system's only when they name a file: EPERM and EACCES without one are os.kill's,
# setuid's, a socket's (ENOSPC and the others from a write name no file either: `writing` names it)
_NAMED_ONLY = {errno.EACCES, errno.EPERM}

# errors that are a program's mistake: one raised while a refused write was being handled is a bug of that
# handler, reported as itself (with its traceback), not as the disk's refusal it happened during
_MISTAKES = (TypeError, AttributeError, NameError, LookupError, AssertionError, ArithmeticError,
             NotImplementedError, RecursionError)


def storage_failure(err: BaseException) -> str | None:
    """One line saying what the file system refused and where ("no space left on device: PATH"), when
    `err` is such a refusal: an OSError with its errno, or tensorstore's (Orbax's checkpoint writes), which
    arrives as a ValueError whose text holds the errno as `[os_error_code='28']` and the path as `"PATH"`.
    Anything else, or a program's mistake made while handling a refusal (`_MISTAKES`): None."""
    refusal = _refusal(err)
    if refusal is None:
        return None
    code, path = refusal
    return f"{_STORAGE_ERRNOS[code]}: {os.fsdecode(path)}" if path else _STORAGE_ERRNOS[code]


def storage_remedy(err: BaseException) -> str | None:
    """What the user can do about the refusal `storage_failure` reads in `err` ("free space", "make it
    writable", a file-size limit), or None."""
    refusal = _refusal(err)
    return None if refusal is None else _REMEDIES[refusal[0]]


def _refusal(err: BaseException) -> tuple[int, str | bytes | None] | None:
    """(errno, the refused path or None) of the file system's refusal in `err`'s chain (storage_failure)."""
    for link in error_chain(err):
        if isinstance(link, _MISTAKES):
            return None
        if isinstance(link, OSError) and link.errno in _STORAGE_ERRNOS:
            if link.errno in _NAMED_ONLY and link.filename is None:
                continue  # no file refused: a process's (os.kill, setuid) or a socket's, not the file system's
            return link.errno, link.filename
        found = re.search(r"\[os_error_code='?(\d+)'?\]", str(link))
        if found and int(found.group(1)) in _STORAGE_ERRNOS:
            paths = re.findall(r'(?:Failed writing|file|local file|Error opening file|path):? "([^"]+)"', str(link))
            return int(found.group(1)), (paths[-1] if paths else None)
    return None
