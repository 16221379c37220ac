"""JAX's persistent compilation cache for the `r1jax` program: each program that took a second or more to compile
is written to a directory, and a later process compiling the same program (a resumed run, the next run of a
config, an eval of its checkpoint) loads it from there instead (tests/rl/data/train_tiny.yaml's whole run on two
CPU devices: 40.0 s cold, 13.5 s warm, 43.2 s with none). A loaded executable is the very program compiled
before: results are unchanged. On TPU the saving is the minutes a large MoE's sampler and update take to
compile, at every restart.

The directory: `r1jax --compilation-cache DIR`, else `$R1JAX_COMPILATION_CACHE` (the option's value from the
environment: a job spec, the test session's own cache in tests/conftest.py), else JAX's own
`JAX_COMPILATION_CACHE_DIR`, else `$XDG_CACHE_HOME/r1jax/jax-compilation` (`~/.cache/...`); `none` turns it
off. That default directory is capped at DEFAULT_MAX_BYTES, least recently used programs evicted first (JAX's
LRU cache); a directory named is JAX's to bound (`JAX_COMPILATION_CACHE_MAX_SIZE`, unbounded by default).
Under several processes JAX writes from process 0 only, so the hosts of a slice gain only from a directory they
all read: `train` moves the default into the run directory (`share_with_the_slice`). JAX keys a program by the
cache's path as well (`jax_persistent_cache_enable_xla_caches`: its GPU autotune cache lives there), so a
cache is found again only at the path it was written to. `r1jax compile` never uses it: its programs are for
compile-only TPU devices, which JAX cannot load back."""

from __future__ import annotations

import glob
import os
import pathlib
import re
import stat
import sys
import warnings

from r1jax.errors import UserError

OFF = "none"
ENVIRONMENT = "R1JAX_COMPILATION_CACHE"
DEFAULT_MAX_BYTES = 16 << 30
UNCACHED_COMMANDS = frozenset({"compile"})
_chosen: dict = {}  # (use_compilation_cache's path and source: share_with_the_slice moves only the default)


def default_directory() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "r1jax" / "jax-compilation"


def cache_directory(option: str | None) -> tuple[str | None, str | None]:
    """(the directory to use, None for none; where it was named: the option or a variable, None for the default)."""
    for value, source in ((option, "--compilation-cache"), (os.environ.get(ENVIRONMENT), f"${ENVIRONMENT}"),
                          (os.environ.get("JAX_COMPILATION_CACHE_DIR"), "$JAX_COMPILATION_CACHE_DIR")):
        if value:
            return (None if value.strip().lower() == OFF else value), source
    return str(default_directory()), None


def use_compilation_cache(option: str | None, command: str) -> str | None:
    """Point JAX's persistent compilation cache at `cache_directory(option)` for `command` (before its first
    compile), or turn it off; the directory used, or None. A directory the user named that cannot be made is a
    UserError; the default one is skipped with a line on stderr (a read-only home must not stop a run)."""
    import jax

    path, source = cache_directory(option)
    _chosen.update(path=path, source=source)
    if path is None or command in UNCACHED_COMMANDS:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    local = "://" not in path
    if local:
        path = str(pathlib.Path(path).expanduser())
        why = _unusable(path)
        if why:
            if source:
                raise UserError(f"{source} {path}: cannot use it as the compilation cache ({why}); name another "
                                f"directory, or 'none'")
            print(f"r1jax: the compilation cache {path} cannot be made ({why}): compiling without one",
                  file=sys.stderr, flush=True)
            jax.config.update("jax_enable_compilation_cache", False)
            return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    if source is None and "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
        # only r1jax's own directory: JAX's LRU cache reads an access-time file beside every entry, which a
        # process writing without a limit (a user's other JAX programs in a directory they named) does not write
        jax.config.update("jax_compilation_cache_max_size", DEFAULT_MAX_BYTES)
    if local:
        replace_damaged_entries(path, bounded=jax.config.jax_compilation_cache_max_size != -1)
    return path


def share_with_the_slice(run_dir: pathlib.Path) -> str | None:
    """Under several processes, before the first compile: r1jax's default directory (each host's own) moves into
    the run directory, which every host mounts (rl.cli.train), so that a resumed run's processes all load its
    programs: JAX writes from process 0 only, so in their own directories the other hosts never found one and
    compiled every program at every restart (which the slowest host's start decides). Unbounded there (a run's
    few programs; JAX's LRU locks a file, which a bucket's mount may not lock). A directory the user named stays
    as it is: it is theirs to share. Returns the new directory, or None."""
    if _chosen.get("path") is None or _chosen.get("source") is not None:
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    path = str(pathlib.Path(run_dir).absolute() / "compilation-cache")  # JAX makes it at its first compile
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_compilation_cache_max_size", -1)
    compilation_cache.reset_cache()  # (read again at the next compile)
    replace_damaged_entries(path, bounded=False)
    _chosen.update(path=path, source="the run directory")
    return path


def _unusable(path: str) -> str | None:
    """Why the local directory `path` (made if missing, private) cannot hold the cache, or None. It holds
    executables this process loads and runs, so a directory every user may write to (/tmp itself) is refused."""
    try:
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).mkdir(mode=0o700, exist_ok=True)
        mode = os.stat(path).st_mode
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    if mode & stat.S_IWOTH:
        return (f"writable by every user (mode {stat.S_IMODE(mode):o}): a program planted there would run in this "
                "process")
    return None if os.access(path, os.W_OK | os.X_OK) else "not writable"


def replace_damaged_entries(path: str, bounded: bool) -> None:
    """Mend the local cache `path` where JAX only warns, one line on stderr in place of its warning:
    - an entry JAX cannot read (cut short by a full disk or a kill while JAX wrote it in place) is removed, so
      the program compiled in its stead is written again: JAX warned at every later run and kept the file (its
      `put` skips a file that exists). JAX names only the program, so every entry of that name goes (its other
      shapes compile once more);
    - after a write that failed, in a `bounded` directory every entry without its access-time file (written
      before its access time was) is removed: JAX's eviction reads that file for every entry, so one missing
      failed every later write."""
    previous = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        found = _CACHE_ERROR.match(str(message))
        if found is None:
            return previous(message, category, filename, lineno, file, line)
        action, name, why = found.group(1), found.group(2), found.group(3).splitlines()[0][:200]
        if action == "reading":
            for entry in pathlib.Path(path).glob(f"{glob.escape(name)}-*-cache"):
                _remove_entry(entry)
            done = "compiled again, the copy replaced"
        else:
            if bounded:
                for entry in pathlib.Path(path).glob("*-cache"):
                    if not _access_time_file(entry).exists():
                        _remove_entry(entry)
            done = "compiled, not kept"
        print(f"r1jax: {action} {name!r} in the compilation cache {path} failed ({why}): {done}", file=sys.stderr,
              flush=True)

    warnings.showwarning = showwarning


def _access_time_file(entry: pathlib.Path) -> pathlib.Path:
    return entry.with_name(entry.name.removesuffix("-cache") + "-atime")


def _remove_entry(entry: pathlib.Path) -> None:
    for stale in (entry, _access_time_file(entry)):
        stale.unlink(missing_ok=True)


_CACHE_ERROR = re.compile(r"Error (reading|writing) persistent compilation cache entry for '([^'/]+)': (.*)", re.S)
