"""The `r1jax` program's persistent compilation cache (rl/cli/compilation_cache.py): where it goes, when it is
off, and that a second run loads the first run's programs."""

import os
import pathlib
import re
import subprocess
import sys
import warnings

import jax
import pytest

from r1jax.errors import UserError
from r1jax.rl.cli import compilation_cache
from r1jax.rl.cli.compilation_cache import cache_directory, use_compilation_cache
from tests.rl.conftest import REPO, subprocess_env

VARIABLES = ("R1JAX_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR", "JAX_COMPILATION_CACHE_MAX_SIZE")


@pytest.fixture
def settings(monkeypatch, tmp_path):
    """JAX's config updates recorded, not made (the test session's own cache stays), in an environment naming
    no cache, XDG_CACHE_HOME in tmp_path."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    made = {}
    monkeypatch.setattr(jax.config, "update", lambda name, value: made.__setitem__(name, value))
    return made


def test_the_option_wins_then_r1jax_s_variable_then_jax_s_then_the_default(monkeypatch, tmp_path, settings):
    default = str(tmp_path / "xdg" / "r1jax" / "jax-compilation")
    assert cache_directory(None) == (default, None)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/jax")
    assert cache_directory(None) == ("/jax", "$JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("R1JAX_COMPILATION_CACHE", "/r1jax")
    assert cache_directory(None) == ("/r1jax", "$R1JAX_COMPILATION_CACHE")
    assert cache_directory("/given") == ("/given", "--compilation-cache")
    assert cache_directory("None") == (None, "--compilation-cache")
    monkeypatch.setenv("R1JAX_COMPILATION_CACHE", "none")
    assert cache_directory(None) == (None, "$R1JAX_COMPILATION_CACHE")  # off, whatever JAX's variable says


def test_only_r1jax_s_own_directory_is_bounded(tmp_path, settings):
    default = tmp_path / "xdg" / "r1jax" / "jax-compilation"
    assert use_compilation_cache(None, "train") == str(default) and default.is_dir()
    assert settings == {"jax_enable_compilation_cache": True, "jax_compilation_cache_dir": str(default),
                        "jax_compilation_cache_max_size": compilation_cache.DEFAULT_MAX_BYTES}
    settings.clear()
    named = tmp_path / "named"
    assert use_compilation_cache(str(named), "eval") == str(named)  # a user's directory: JAX's LRU files may be
    assert settings == {"jax_enable_compilation_cache": True, "jax_compilation_cache_dir": str(named)}  # absent


@pytest.mark.parametrize("option, command", [("none", "train"), (None, "compile")])
def test_off_when_asked_and_for_compile_s_compile_only_devices(option, command, settings):
    assert use_compilation_cache(option, command) is None
    assert settings == {"jax_enable_compilation_cache": False}


def test_a_named_directory_that_cannot_be_one_is_refused_the_default_skipped(monkeypatch, tmp_path, settings,
                                                                           capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"--compilation-cache .*/file/cache: cannot use it as the compilation "
                                        r"cache \(\w+Error.*name another directory, or 'none'"):
        use_compilation_cache(str(tmp_path / "file" / "cache"), "train")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o1777)  # as /tmp: anyone could plant an executable there
    with pytest.raises(UserError, match=r"writable by every user \(mode 1777\)"):
        use_compilation_cache(str(shared), "train")
    assert use_compilation_cache(str(tmp_path / "mine"), "train") == str(tmp_path / "mine")
    assert (tmp_path / "mine").stat().st_mode & 0o777 == 0o700
    settings.clear()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a read-only home must not stop a run
    assert use_compilation_cache(None, "train") is None and settings == {"jax_enable_compilation_cache": False}
    assert re.search(r"the compilation cache .*/file/r1jax/jax-compilation cannot be made \(\w+Error",
                     capsys.readouterr().err)


def r1jax_init(tmp_path, out, *options, **env):
    """`r1jax init tiny OUT` (one layer) as a program, every program it compiles cached (no 1 s floor), no cache
    named."""
    base = {k: v for k, v in subprocess_env().items() if k not in VARIABLES}
    base.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
    return subprocess.run([sys.executable, "-m", "r1jax", *options, "init", "tiny", str(tmp_path / out),
                           "model.num_hidden_layers=1"],
                          env=base, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_second_run_loads_the_programs_the_first_wrote_and_replaces_a_damaged_one(tmp_path):
    cache = tmp_path / "xdg" / "r1jax" / "jax-compilation"
    assert r1jax_init(tmp_path, "first").returncode == 0
    written = {p.name: p.read_bytes() for p in cache.glob("*-atime")}  # when each program was last read
    assert written and len(written) == len(list(cache.glob("*-cache")))
    damaged = max(cache.glob("*-cache"), key=lambda p: p.stat().st_size)
    whole = damaged.stat().st_size
    damaged.write_bytes(damaged.read_bytes()[:1000])  # cut short, as by a full disk
    second = r1jax_init(tmp_path, "second")
    assert second.returncode == 0 and "Warning" not in second.stderr, second.stderr
    program = damaged.name.split("-")[0]
    assert re.search(rf"r1jax: reading '{program}' in the compilation cache {cache} failed \(\w+Error: .*\): "
                     r"compiled again, the copy replaced", second.stderr), second.stderr
    read = {p.name: p.read_bytes() for p in cache.glob("*-atime")}
    assert read.keys() == written.keys() and all(read[k] != written[k] for k in read)  # each loaded, none new
    assert damaged.stat().st_size > whole // 2  # written again, whole (the same program, compiled anew)
    off = r1jax_init(tmp_path, "third", "--compilation-cache", "none", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "j"))
    assert off.returncode == 0 and not (tmp_path / "j").exists()
    assert pathlib.Path(tmp_path / "third" / "0").is_dir() and os.listdir(cache)


def test_entries_a_failed_write_left_without_their_access_time_are_removed_in_a_bounded_cache(tmp_path, monkeypatch,
                                                                                             capsys):
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    for name in ("jit_a-1", "jit_b-2", "jit_c-3"):
        (tmp_path / f"{name}-cache").write_bytes(b"x")
    for name in ("jit_b-2", "jit_c-3"):
        (tmp_path / f"{name}-atime").write_bytes(b"t")
    compilation_cache.replace_damaged_entries(str(tmp_path), bounded=True)
    warnings.showwarning(UserWarning(f"Error writing persistent compilation cache entry for 'jit_d': "
                                     f"FileNotFoundError: [Errno 2] No such file: '{tmp_path}/jit_a-1-atime'"),
                         UserWarning, "compiler.py", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jit_b-2-atime", "jit_b-2-cache", "jit_c-3-atime",
                                                          "jit_c-3-cache"]
    warnings.showwarning(UserWarning("Error reading persistent compilation cache entry for 'jit_b': ZstdError: x"),
                         UserWarning, "compiler.py", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jit_c-3-atime", "jit_c-3-cache"]
    err = capsys.readouterr().err
    assert "r1jax: writing 'jit_d' in the compilation cache" in err and "failed (FileNotFoundError" in err
    assert "compiled again, the copy replaced" in err


def test_several_processes_move_the_default_into_the_run_directory_a_named_one_stays(tmp_path, settings,
                                                                                    monkeypatch):
    from jax.experimental.compilation_cache import compilation_cache as jax_cache

    monkeypatch.setattr(jax_cache, "reset_cache", lambda: settings.__setitem__("reset", True))
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    use_compilation_cache(None, "train")
    settings.clear()
    moved = compilation_cache.share_with_the_slice(tmp_path / "run")
    assert moved == str(tmp_path / "run" / "compilation-cache")
    assert settings == {"jax_compilation_cache_dir": moved, "jax_compilation_cache_max_size": -1, "reset": True}
    settings.clear()
    use_compilation_cache(str(tmp_path / "mine"), "train")  # the user's: theirs to share
    settings.clear()
    assert compilation_cache.share_with_the_slice(tmp_path / "run") is None and settings == {}
