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
