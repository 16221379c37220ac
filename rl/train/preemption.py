"""SIGTERM / SIGINT / SIGHUP become a request to checkpoint and stop at a step boundary (exit code 0). SIGHUP (the
terminal closed, an ssh session dropped) killed the run outright before, losing the steps since its last checkpoint.

One process: the handler sets a flag that the next step boundary sees.

Several JAX processes must stop at the same step, since the checkpoint is written by all of them together.
`jax.distributed.initialize` installs JAX's preemption notifier as the C-level SIGTERM handler (a Python
handler would replace it), so SIGTERM is left to it: the notice reaches every process through the
coordination service, which picks the first step every process can still reach (the largest step reported,
plus one; `multihost_utils.reached_preemption_sync_point`). Our SIGINT handler forwards SIGINT to that
notifier as a SIGTERM, and so does our SIGHUP handler. Each step boundary is also a barrier bounded by the peer
timeout, so a peer that stops answering fails the others with its name instead of hanging them
(sharding.distributed.PeerLost).
"""

from __future__ import annotations

import signal
from typing import Callable, Optional

from r1jax.sharding import distributed


class StopRequest:
    def __init__(self, step: Optional[Callable[[], int]] = None):
        """`step()` gives the current global step; with it, a multi-process run agrees on stops per step."""
        self.signal: int | None = None
        self._previous = {}
        self._step = step
        self._peers = step is not None and distributed.multi_process()
        self._decided: tuple[int, bool] | None = None  # (step, stop) agreed at the last step boundary

    def __enter__(self) -> "StopRequest":
        owned = (signal.SIGINT, signal.SIGHUP) if self._peers else (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        for sig in owned:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # `nohup r1jax train`: the hang-up is ignored, as the user asked, and the run goes on
            self._previous[sig] = signal.signal(sig, self._handle)
        if self._peers:  # the sync manager counts from the step this run starts at (resumed or 0)
            distributed.reached_preemption_sync_point(self._step())
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.signal = signum
        if signum == signal.SIGHUP:
            drop_hung_up_output()
        if self._peers:
            signal.raise_signal(signal.SIGTERM)  # to JAX's notifier, which tells every process

    def __bool__(self) -> bool:
        if not self._peers:
            return self.signal is not None
        step = self._step()
        if self._decided is None or self._decided[0] != step:
            distributed.barrier(f"step-{step}", f"the end of step {step}")
            stop = distributed.reached_preemption_sync_point(step)
            if stop and self.signal is None:
                self.signal = signal.SIGTERM  # received by JAX's notifier here or in a peer
            self._decided = (step, stop)
        return self._decided[1]

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def drop_hung_up_output() -> None:
    """stdout and stderr on a terminal that hung up (the SIGHUP of a closed terminal) go to /dev/null: each write
    there fails (EIO), and the run's next line ("stopped by signal 1 at step N") ended the stop with a traceback,
    exit 1, where it checkpoints and exits 0."""
    import os
    import select

    for fd in (1, 2):
        poll = select.poll()
        try:
            poll.register(fd, select.POLLOUT)
            hung_up = any(events & (select.POLLHUP | select.POLLERR) for _, events in poll.poll(0))
        except (OSError, ValueError):  # closed
            continue
        if hung_up:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)

