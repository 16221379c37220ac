"""A finished seconds-scale training run, shared by the trainer and CLI tests of this package."""

import os
import pathlib
import subprocess
import sys

import pytest

TRAIN_CONFIG = pathlib.Path(__file__).parent / "data" / "train_tiny.yaml"


def train_command(run_dir):
    return [sys.executable, "-m", "r1jax", "--cpu-devices", "2", "train", str(TRAIN_CONFIG), "--run-dir",
            str(run_dir)]


def subprocess_env():
    """The environment of a CLI subprocess: one CPU device unless told (no test XLA_FLAGS), and the test
    session's shared compilation cache."""
    keep = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env = {**keep, "JAX_PLATFORMS": "cpu"}
    cache = os.environ.get("R1JAX_TEST_COMPILATION_CACHE")
    if cache:
        env.update({"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
    return env


def run_to_end(run_dir):
    result = subprocess.run(train_command(run_dir), env=subprocess_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(run_dir)
    return run_dir
