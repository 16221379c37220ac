"""SIGKILL at any moment of asynchronous checkpointing never leaves a step that restore would load
half-written: the latest step restore finds is complete and holds exactly what was saved for it."""

import os
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from r1jax.rl.config import Config
from r1jax.rl.train.checkpointing import TrainCheckpointer

CHILD = textwrap.dedent("""
    import sys, numpy as np, jax.numpy as jnp
    from r1jax.rl.config import Config
    from r1jax.rl.train.checkpointing import TrainCheckpointer
    checkpointer = TrainCheckpointer(sys.argv[1], keep=2, keep_best=0, async_save=True)
    for step in range(1, 1000):
        trees = {"params": {"w": jnp.full((1024, 1024), float(step)), "b": jnp.full((3000,), float(step))},
                 "opt_state": {"mu": jnp.full((512, 1024), -float(step))}}
        checkpointer.save(step, Config(), trees, {"step": step})
        print(step, flush=True)
""")


@pytest.mark.parametrize("kill_after_s", [0.3, 1.1, 2.3])
def test_sigkill_during_async_saves_leaves_only_complete_checkpoints(tmp_path, kill_after_s):
    root = tmp_path / "checkpoints"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], env={**env, "JAX_PLATFORMS": "cpu"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.time()
    while child.poll() is None and not (root.exists() and any(root.iterdir())):
        time.sleep(0.05)  # wait until the first save has begun
        assert time.time() - started < 120, "no checkpoint activity"
    time.sleep(kill_after_s)
    child.kill()
    child.wait(timeout=30)
    checkpointer = TrainCheckpointer(root, keep=2, keep_best=0, async_save=False)
    step = checkpointer.latest_step()
    printed = [int(x) for x in child.stdout.read().split()]
    assert printed, "the child never got past its first save call"
    if step is None:  # killed before the first commit: nothing to load, and nothing half-loadable
        assert not [p for p in root.iterdir() if p.name.isdigit()]
        return
    assert step <= max(printed)
    _, meta = checkpointer.restore_config_and_meta(step)
    assert meta["step"] == step
    targets = {"params": {"w": jax.ShapeDtypeStruct((1024, 1024), np.float32),
                          "b": jax.ShapeDtypeStruct((3000,), np.float32)},
               "opt_state": {"mu": jax.ShapeDtypeStruct((512, 1024), np.float32)}}
    restored = checkpointer.restore_trees(step, targets)
    assert np.all(np.asarray(restored["params"]["w"]) == step)
    assert np.all(np.asarray(restored["params"]["b"]) == step)
    assert np.all(np.asarray(restored["opt_state"]["mu"]) == -step)
    checkpointer.close()
