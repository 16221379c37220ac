"""SIGKILL at any moment of asynchronous checkpointing never leaves a step that restore would load
half-written: the latest step restore finds is complete and holds exactly what was saved for it. A step saved
again keeps its old copy (moved aside) until the new one commits, so a kill in between loses nothing, also
under `keep: 1` and with two processes."""

import os
import socket
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


# -- saving a step that exists again ----------------------------------------------------------------------
# A stage's end saved again after a stop in its last step (or a stage of no steps) replaces a committed step:
# the old copy must outlive the new save's window, or a kill there leaves no checkpoint under keep 1.

class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs in the process (no except, no close)."""


def killed(*args, **kwargs):
    """The manager's save, killed once the new save of the step has started, before it commits."""
    raise Killed()


def trees_of(value):
    return {"params": {"w": np.full((4, 3), value, np.float32)}, "opt_state": {"m": np.full(3, -value, np.float32)}}


def restored_value(root):
    """(latest step, its meta's value, its trees' value) as a fresh run opens the directory."""
    checkpointer = TrainCheckpointer(root, keep=1, keep_best=0, async_save=False)
    try:
        step = checkpointer.latest_step()
        assert step is not None, f"no checkpoint left in {sorted(p.name for p in root.iterdir())}"
        _, meta = checkpointer.restore_config_and_meta(step)
        restored = checkpointer.restore_trees(step, trees_of(0))
    finally:
        checkpointer.close()
    w, m = np.asarray(restored["params"]["w"]), np.asarray(restored["opt_state"]["m"])
    assert np.all(w == w.flat[0]) and np.all(m == -w.flat[0])
    return step, meta["value"], float(w.flat[0])


@pytest.mark.parametrize("async_save", [True, False])
def test_a_kill_while_a_step_is_saved_again_leaves_its_old_copy(tmp_path, monkeypatch, async_save):
    root = tmp_path / "checkpoints"
    checkpointer = TrainCheckpointer(root, keep=1, keep_best=0, async_save=async_save)
    checkpointer.save(3, Config(), trees_of(1), {"value": 1})
    checkpointer.wait()
    monkeypatch.setattr(checkpointer.manager, "save", killed)
    with pytest.raises(Killed):
        checkpointer.save(3, Config(), trees_of(2), {"value": 2})
    assert restored_value(root) == (3, 1, 1.0)
    assert sorted(p.name for p in root.iterdir() if p.name[0].isdigit()) == ["3"]  # put back, nothing aside


def test_a_kill_after_the_new_copy_commits_keeps_the_new_one(tmp_path):
    root = tmp_path / "checkpoints"
    checkpointer = TrainCheckpointer(root, keep=1, keep_best=0, async_save=True)
    checkpointer.save(3, Config(), trees_of(1), {"value": 1})
    checkpointer.save(3, Config(), trees_of(2), {"value": 2})
    checkpointer.manager.wait_until_finished()  # committed; killed before the old copy is dropped
    assert restored_value(root) == (3, 2, 2.0)
    assert sorted(p.name for p in root.iterdir() if p.name[0].isdigit()) == ["3"]


def test_a_step_saved_again_replaces_it_and_leaves_no_copy_aside(tmp_path):
    root = tmp_path / "checkpoints"
    checkpointer = TrainCheckpointer(root, keep=1, keep_best=0, async_save=True)
    for value in (1, 2, 3):  # each in flight when the next re-saves the step
        checkpointer.save(5, Config(), trees_of(value), {"value": value})
    checkpointer.save(6, Config(), trees_of(4), {"value": 4})
    checkpointer.save(6, Config(), trees_of(5), {"value": 5})
    checkpointer.close()
    assert sorted(p.name for p in root.iterdir() if p.name[0].isdigit()) == ["6"]
    assert restored_value(root) == (6, 5, 5.0)


def test_a_run_directory_left_with_only_an_old_copy_says_so_before_a_resume_puts_it_back(tmp_path, monkeypatch):
    from r1jax.errors import UserError
    from r1jax.rl.checkpoint_paths import resolve

    root = tmp_path / "run" / "checkpoints"
    checkpointer = TrainCheckpointer(root, keep=1, keep_best=0, async_save=False)
    checkpointer.save(2, Config(), trees_of(1), {"value": 1})
    monkeypatch.setattr(checkpointer.manager, "save", killed)
    with pytest.raises(Killed):
        checkpointer.save(2, Config(), trees_of(2), {"value": 2})
    for path in (tmp_path / "run", root):
        with pytest.raises(UserError, match=r"re-save of step 2 was interrupted .*2\.previous: resuming the run"):
            resolve(path)
    assert restored_value(root) == (2, 1, 1.0)
    assert resolve(tmp_path / "run") == (root, 2)


RESAVE_CHILD = textwrap.dedent("""
    import sys, jax.numpy as jnp
    from r1jax.rl.config import Config
    from r1jax.rl.train.checkpointing import TrainCheckpointer
    checkpointer = TrainCheckpointer(sys.argv[1], keep=1, keep_best=0, async_save=True)
    for value in range(1, 1000):  # step 7 saved again and again, as a stage's end is after a stop in it
        trees = {"params": {"w": jnp.full((1024, 1024), float(value))},
                 "opt_state": {"m": jnp.full((3,), -float(value))}}
        checkpointer.save(7, Config(), trees, {"value": value})
        print(value, flush=True)
""")


@pytest.mark.parametrize("kill_after_s", [0.7, 1.9])
def test_sigkill_while_one_step_is_saved_again_and_again_keeps_a_complete_copy(tmp_path, kill_after_s):
    root = tmp_path / "checkpoints"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    child = subprocess.Popen([sys.executable, "-c", RESAVE_CHILD, str(root)], env={**env, "JAX_PLATFORMS": "cpu"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.time()
    while child.poll() is None and not (root / "7").is_dir():
        time.sleep(0.02)  # wait until step 7 first committed
        assert time.time() - started < 120, "no checkpoint committed"
    time.sleep(kill_after_s)
    child.kill()
    child.wait(timeout=30)
    printed = [int(x) for x in child.stdout.read().split()]
    assert len(printed) > 1, "the child never saved the step again"
    checkpointer = TrainCheckpointer(root, keep=1, keep_best=0, async_save=False)
    try:
        assert checkpointer.latest_step() == 7, sorted(p.name for p in root.iterdir())
        _, meta = checkpointer.restore_config_and_meta(7)
        targets = {"params": {"w": jax.ShapeDtypeStruct((1024, 1024), np.float32)},
                   "opt_state": {"m": jax.ShapeDtypeStruct((3,), np.float32)}}
        restored = checkpointer.restore_trees(7, targets)
    finally:
        checkpointer.close()
    assert meta["value"] <= max(printed)
    assert np.all(np.asarray(restored["params"]["w"]) == meta["value"])
    assert np.all(np.asarray(restored["opt_state"]["m"]) == -meta["value"])


TWO_PROCESS_CHILD = textwrap.dedent("""
    import os, pathlib, sys
    from r1jax.sharding import distributed
    pid, port, tmp = int(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
    distributed.initialize(distributed.Launch(coordinator=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                                              peer_timeout_s=60))
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from r1jax.rl.config import Config
    from r1jax.rl.train.checkpointing import TrainCheckpointer
    shard = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), PartitionSpec("d"))  # one device per process

    def trees(v):
        w = jax.make_array_from_callback((4, 3), shard, lambda i: np.full((4, 3), v, np.float32)[i])
        return {"params": {"w": w}}

    def opened(root):
        checkpointer = TrainCheckpointer(root, keep=1, keep_best=0)
        step = checkpointer.latest_step()
        target = {"params": {"w": jax.ShapeDtypeStruct((4, 3), np.float32, sharding=shard)}}
        w = checkpointer.restore_trees(step, target)["params"]["w"]
        meta = checkpointer.restore_config_and_meta(step)[1]
        checkpointer.close()
        return [step, meta["v"], float(np.asarray(w.addressable_shards[0].data).flat[0]),
                sorted(p.name for p in root.iterdir() if p.name[0].isdigit())]

    class Killed(BaseException):
        pass

    checkpointer = TrainCheckpointer(tmp / "resaved", keep=1, keep_best=0)
    for v in (1, 2, 3):
        checkpointer.save(3, Config(), trees(v), {"v": v})
    checkpointer.close()
    checkpointer = TrainCheckpointer(tmp / "killed", keep=1, keep_best=0)
    checkpointer.save(3, Config(), trees(1), {"v": 1})
    checkpointer.manager.save = lambda *a, **k: (_ for _ in ()).throw(Killed())
    try:
        checkpointer.save(3, Config(), trees(2), {"v": 2})
    except Killed:
        pass
    print("RESULT", opened(tmp / "resaved"), opened(tmp / "killed"), flush=True)
""")


def test_two_processes_save_a_step_again_and_put_back_an_old_copy_together(tmp_path):
    """Process 0 moves, drops and puts back the old copy; both processes then list the same steps."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
    children = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_CHILD, str(pid), str(port), str(tmp_path)],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for pid in (0, 1)]
    outputs = [child.communicate(timeout=240)[0] for child in children]
    for child, output in zip(children, outputs):
        assert child.returncode == 0, output[-3000:]
        result = [line for line in output.splitlines() if line.startswith("RESULT")]
        assert result == ["RESULT [3, 3, 3.0, ['3']] [3, 1, 1.0, ['3']]"], output[-3000:]


def test_retention_keeps_the_latest_and_the_best_and_drops_steps_without_metrics(tmp_path):
    """keep 2, keep_best 1 by eval/pass@1, six saves with metrics at steps 2 (best) and 4 only: 2, 5 and 6
    remain (steps saved without metrics, or with rows lacking eval/pass@1, are not kept for good)."""
    checkpointer = TrainCheckpointer(tmp_path, keep=2, keep_best=1, async_save=False)
    for step in range(1, 7):
        metrics = {"eval/pass@1": 0.9} if step == 2 else {"eval/pass@1": 0.1} if step == 4 else \
            {"loss": 0.5} if step in (3, 5) else None
        checkpointer.save(step, Config(), {"params": {"w": np.full((4, 3), step, np.float32)}}, {"step": step},
                          metrics)
    checkpointer.wait()
    assert sorted(checkpointer.manager.all_steps()) == [2, 5, 6]
    checkpointer.close()
