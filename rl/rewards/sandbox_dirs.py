"""The sandbox's run directories on the host (rl.rewards.sandbox): each scoring process's run root, its runs'
directories under it, the roots of killed processes swept, and trees removed without ever raising.

    root = make_run_root()          # /tmp/r1jax-sandbox-PID-XXXX, 0711, after sweeping dead processes' roots
    remove_tree(path)               # never raises, at any depth
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import subprocess
import tempfile

log = logging.getLogger(__name__)
RUN_ROOT_PREFIX = "r1jax-sandbox-"  # run directories live in /tmp/r1jax-sandbox-PID-XXXX/ (PID: its owner)
RUN_ROOT_NAME = re.compile(re.escape(RUN_ROOT_PREFIX) + r"([0-9]+)-[A-Za-z0-9_]+")  # tempfile.mkdtemp's suffix


_run_root: str | None = None  # this process's parent of run directories (set_run_root, or made on first use)


def make_run_root() -> str:
    """A fresh parent for run directories, mode 0711 (the sandbox users reach their own run directory, list no
    one's), after removing those of processes that are gone (sweep_stale_run_roots)."""
    sweep_stale_run_roots()
    root = tempfile.mkdtemp(prefix=f"{RUN_ROOT_PREFIX}{os.getpid()}-")
    os.chmod(root, 0o711)
    return root


def sweep_stale_run_roots() -> list[str]:
    """Remove the run roots of processes that are gone (killed: their cleanup never ran): only names
    RUN_ROOT_NAME matches, only real directories (a symlink is never followed) owned by this user, only when
    the owner pid in the name is not alive. Anything else, or a root another pool removes meanwhile, is left.
    Returns the paths removed."""
    removed, temp = [], tempfile.gettempdir()
    try:
        entries = list(os.scandir(temp))
    except OSError:
        return removed
    for entry in entries:
        match = RUN_ROOT_NAME.fullmatch(entry.name)
        try:
            if (match is None or not entry.is_dir(follow_symlinks=False) or os.path.exists(f"/proc/{int(match[1])}")
                    or entry.stat(follow_symlinks=False).st_uid != os.geteuid()):
                continue
        except OSError:
            continue
        remove_tree(entry.path)  # (rmtree itself refuses a symlink, follows none inside)
        removed.append(entry.path)
    return removed


def set_run_root(path: str) -> None:
    """Put this process's run directories under `path` (the reward pool's, which it removes at close)."""
    global _run_root
    _run_root = path


def get_run_root() -> str:
    global _run_root
    if _run_root is None or not os.path.isdir(_run_root):
        _run_root = make_run_root()
        atexit.register(remove_tree, _run_root)
    return _run_root


SHARED_TEMP = ("/tmp", "/dev/shm", "/var/tmp", "/run/lock", "/var/lock")  # world-writable places (and tempfile's)
# a run's files outlived it (/var/lock: often a link to /run/lock, swept once)


def remove_user_files(uid: int) -> list[str]:
    """Remove what `uid` (a run's sandbox user, rlimits_only as root, its processes killed) left at the top of the
    host's world-writable temporary directories, where nothing else of that user lives: a program wrote files of
    RLIMIT_FSIZE each, as many as its wall time allowed, into /dev/shm (the host's memory), /tmp and /run/lock,
    and they outlived the run. A symlink is removed, never followed. Returns the paths removed."""
    removed = []
    for directory in dict.fromkeys(os.path.realpath(top) for top in (tempfile.gettempdir(), *SHARED_TEMP)):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    remove_tree(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue
            removed.append(entry.path)
    return removed


def remove_tree(path: str, remove=None) -> None:
    """`remove()` (default: shutil.rmtree(path, ignore_errors=True)), never raising: a tree it cannot remove (one
    deeper than Python's recursion limit: an rlimits_only program's 3,000 nested directories raised RecursionError
    out of its run, then out of every later sweep of its run root, and no sandbox or pool could start on the host)
    goes by `rm -rf`, which has no depth limit and follows no symlink; where that cannot run (no `rm` on PATH, past
    60 s) the tree stays, with a warning (before, its FileNotFoundError or TimeoutExpired came out)."""
    try:
        (remove or (lambda: shutil.rmtree(path, ignore_errors=True)))()
    except (RecursionError, OSError):
        try:
            subprocess.run(["rm", "-rf", "--", path], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("code sandbox: cannot remove %s (%s); remove it by hand", path, err)
