"""Test session setup: 8 fake CPU devices, set before JAX initialises (tests build meshes on them)."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    + ["--xla_force_host_platform_device_count=8"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    """Subprocesses (`r1jax train` runs) share JAX's persistent compilation cache in pytest's cache directory
    (`pytest --cache-clear` empties it): a run repeating an earlier run's programs skips their compilation."""
    if getattr(config, "cache", None) is not None:
        os.environ["R1JAX_TEST_COMPILATION_CACHE"] = str(config.cache.mkdir("jax-compilation-cache"))
