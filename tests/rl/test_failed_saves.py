"""rl.failed_saves.wait_for_writers: a failed save waits for its writer threads, not for an idle executor worker
(`asyncio_N`) that some other event loop keeps for good (it took the full WRITERS_WAIT_S, 120 s, at every
failed save: the trainer's snapshot is taken when its checkpointer opens, long before)."""

import asyncio
import threading
import time

from r1jax.rl.failed_saves import save_threads, wait_for_writers


def test_an_idle_executor_worker_of_another_loop_is_not_waited_for_but_a_busy_one_is():
    before, release, finished = save_threads(), threading.Event(), threading.Event()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0))  # its asyncio_0 then idles for good
        assert [t.name for t in save_threads() - before] == ["asyncio_0"]
        start = time.monotonic()
        wait_for_writers(before, timeout_s=5)
        assert time.monotonic() - start < 1

        loop.run_in_executor(None, lambda: release.wait(10) and finished.set())  # a write: waited for until done
        threading.Timer(0.3, release.set).start()
        start = time.monotonic()
        wait_for_writers(before, timeout_s=5)
        assert 0.25 < time.monotonic() - start < 2 and finished.is_set()
    finally:
        release.set()
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def test_a_second_stop_while_a_failed_save_waits_for_its_writers_still_takes_the_step_back(tmp_path, monkeypatch):
    """save_policy took a failed save's step back after waiting for its writers: a second Ctrl-C or SIGTERM in
    that wait skipped the take-back, and the partial step refused the next try ("exists and is not empty")."""
    import pytest
    from flax import nnx

    from r1jax.rl import checkpoint
    from r1jax.rl.config import Config

    class Refusing:  # a save that got as far as its step directory, then the disk refused
        def save(self, step, args):
            (tmp_path / "ck" / f"{step}.orbax-checkpoint-tmp" / "params").mkdir(parents=True)
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    def second_stop(before, timeout_s=0):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_manager", lambda root: Refusing())
    monkeypatch.setattr(checkpoint, "wait_for_writers", second_stop)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_policy(tmp_path / "ck", Config(), nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    assert sorted(tmp_path.rglob("*")) == []
