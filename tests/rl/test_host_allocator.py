"""rl.host_allocator: after `retain_freed_memory`, freed large blocks are reused instead of page-faulted
back in (each run in a fresh process, since the options act on arenas made afterwards)."""

import subprocess
import sys

import pytest

from r1jax.rl.cli import main as cli_main

# mallocs, touches and frees a 64 MB block 20 times in a worker thread (XLA's CPU runtime allocates from
# its own threads) and prints the minor page faults that took.
SCRIPT = """
import ctypes, resource, sys, threading
from r1jax.rl.host_allocator import retain_freed_memory
ok = retain_freed_memory() if sys.argv[1] == "retain" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def churn():
    for _ in range(20):
        block = libc.malloc(64 << 20)
        ctypes.memset(block, 1, 64 << 20)
        libc.free(block)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
thread = threading.Thread(target=churn)
thread.start()
thread.join()
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    ok, count = out.stdout.split()
    return ok, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    ok, retained = faults("retain")
    _, default = faults("default")
    pages = (64 << 20) // 4096
    assert ok == "True"
    assert default >= 15 * pages  # glibc mmaps and unmaps each block: every touch faults, every time
    assert retained <= 3 * pages  # faulted in once, then reused


def test_only_the_command_line_program_sets_the_malloc_options(monkeypatch, tmp_path):
    """`main(argv)` called from another program (a test runner, a notebook) leaves that process's malloc and
    garbage collector as they are; `r1jax ...` itself (argv from the command line) sets the malloc options
    before JAX starts, and the collector's (rl.cli.main.collect_garbage_less_often); so does `main(argv,
    as_program=True)`."""
    calls = []
    monkeypatch.setattr(cli_main, "retain_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(cli_main, "collect_garbage_less_often", lambda: calls.append("gc"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    args = ["export-hf", str(tmp_path / "missing"), str(tmp_path / "out")]
    assert cli_main.main(args) == 2 and calls == []  # a missing checkpoint: a one-line error either way
    monkeypatch.setattr(sys, "argv", ["r1jax", *args])
    assert cli_main.main() == 2 and calls == ["malloc", "gc"]
    # a script that wraps the program (tests/rl/signal_at_step.py) says so with its own argv
    assert cli_main.main(args, as_program=True) == 2 and calls == ["malloc", "gc"] * 2
