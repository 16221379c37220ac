"""Test session setup: 8 fake CPU devices, set before JAX initialises (tests build meshes on them), JAX's
persistent compilation cache for the test processes and their subprocesses, XLA:CPU's quicker-to-compile
fusion emitters, and programs compiled with XLA's most expensive optimisations off unless a module asks for
`optimized_xla_compile`."""

import gc
import os

# XLA:CPU's older (LLVM IR) fusion emitters: its MLIR fusion emitters, the default, take about twice as long to
# compile a program (tests/rl/test_sampler.py, no compilation cache, `-n 2`: 115 s -> 62 s; a tiny sampler's
# generate program 9.1 s -> 5.0 s) and the tests' programs are seconds of compiling behind milliseconds of
# running. LLVM's code is generated as one module, not split for parallel threads, and the emitted IR is not
# verified: the CPU time of compiling tests/rl/test_grpo_step.py's two steps fell from 11.5-12.9 s to 9.7-10.4 s
# (traced: the compiling threads' time 14.4 -> 9.9 s; splitting and cloning the module took 1.6 s of it), and
# that module with tests/rl/test_continuous.py ran in 195 s instead of 211 s. XLA's FAST_COMPILE preset for the CPU
# caps its HLO simplification at 4 rounds of the fixed-point loop (25 by default) and flattens calls after fusion:
# compiling tests/rl/test_grpo_step.py's step took 2.7 s instead of 3.9 s, and that module with
# tests/rl/test_packing.py ran in 151 s of CPU time instead of 156 s (the two builds side by side on the two cores).
# The subprocesses the tests start compile so too (tests/rl/conftest.py). A user's run keeps XLA's default.
FAST_COMPILE_XLA_FLAGS = ["--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1",
                          "--xla_cpu_emitter_verification_level=0", "--xla_cpu_opt_preset=FAST_COMPILE"]
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f
     and "xla_cpu_use_fusion_emitters" not in f]
    + ["--xla_force_host_platform_device_count=8", *FAST_COMPILE_XLA_FLAGS])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402  (after the environment above: JAX reads JAX_PLATFORMS when it is imported)
import pytest  # noqa: E402
from jax._src import compilation_cache  # noqa: E402  (private; jax is pinned below 0.11 in pyproject.toml)


def pytest_configure(config):
    """The session's programs go to JAX's persistent compilation cache in pytest's cache directory (`pytest
    --cache-clear` empties it), shared by both xdist workers and by the `r1jax train` subprocesses: a program
    compiled once in the session loads from there afterwards. In-process that matters as much as in the
    subprocesses: each Trainer (and each test's `jax.jit` of a new closure) traces anew, so JAX's in-memory
    caches miss and the same program would compile again (a 20-step tiny GRPO run: 86 s without, 17 s with, on
    a busy 2-core host). A cached executable is the very program compiled before: results are unchanged."""
    if getattr(config, "cache", None) is not None:
        path = str(config.cache.mkdir("jax-compilation-cache"))
        os.chmod(path, 0o700)  # whatever the umask: `r1jax` refuses a cache directory every user may write to
        os.environ["R1JAX_TEST_COMPILATION_CACHE"] = path
        os.environ["R1JAX_COMPILATION_CACHE"] = path  # every `r1jax` subprocess's, not the user's ~/.cache
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        # Programs compiled for libtpu's compile-only TPU devices (tests/sharding, tests/rl/test_aot.py) are
        # written but cannot be read back ("PjRtCompiler must be constructed with a Client to call
        # DeserializeLoadedExecutable"): each hit would warn and compile again. JAX skips the cache for the
        # runtimes in this set.
        compilation_cache._UNSUPPORTED_RUNTIMES.add("compile_only_runtime")


# The session's programs are compiled with XLA's most expensive optimisations off (jax_disable_most_optimizations:
# LLVM at -O0), as the `r1jax` subprocesses' are (tests/rl/conftest.py): XLA's part of compiling a tiny model's
# programs drops 1.4-4x (tests/rl/test_grpo_step.py's sharded step 21.6 s -> 15.4 s, the quick bench's update
# step 13.0 s -> 3.2 s, on a loaded 2-core host; tracing is unchanged), and the programs compute the same thing.
# Only the backend's code generation is cut (jax._src.compiler: xla_backend_optimization_level 0, LLVM's
# expensive passes off): every HLO pass runs, so a compiled program's collectives, loops and FLOPs (what tests
# read from `as_text()`) are the optimised build's. Results can differ from the optimised build's in the last
# bits (1.5e-8 in that step's parameters): a module whose figures were measured on the optimised build (or
# that compiles for TPU) asks for `optimized_xla_compile`.
jax.config.update("jax_disable_most_optimizations", True)


def pytest_collection_finish(session):
    """Python's cyclic garbage collector, tuned for a session that traces JAX programs, as the `r1jax` program
    tunes it (rl.cli.main.collect_garbage_less_often): every object alive after collection (the test modules and
    everything they import) frozen out of the collections, which then walk only what the tests made since, and
    gen-0 collections every 10,000 allocations in place of 700. tests/rl/test_sampler.py alone: 2,094 / 191 / 13
    collections of generations 0 / 1 / 2 took 5.4 s; 610 / 55 / 6 now take 1.7-1.8 s. Garbage is still
    collected, later; nothing a test computes depends on when."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


@pytest.fixture(scope="module")
def optimized_xla_compile():
    """A module's programs compiled with every XLA optimisation, as a run compiles them; JAX's in-memory caches
    are cleared on entry and exit so no executable crosses that line (the persistent cache keys on the
    setting)."""
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", True)
    jax.clear_caches()
