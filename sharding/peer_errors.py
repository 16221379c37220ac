"""A process that stops on an error must not leave the others of its run waiting for it (they would wait the
peer timeout, then abort inside JAX without its reason): `stop_on_error` publishes the reason in the
coordination service's key-value store and exits; every process's watcher thread (started by
sharding.distributed.initialize: `watch`) polls the store and exits at once, printing which process stopped and
why. `exit_if_a_peer_stopped` does what the watcher does, for a failure met before its next look.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time

from r1jax.sharding.distributed import coordination_client, several_processes

ERRORS_KEY = "r1jax/error/"  # + process index: why that process stopped
SEEN_KEY = "r1jax/error-seen/"  # + process index: that process read an error and is exiting
DONE_KEY = "r1jax/error-done/"  # + process index: that process has stopped reading the store
WATCH_INTERVAL_S = 0.5

_exiting = threading.Lock()  # held by the one thread that exits this process for a peer's error
_stop_watching = threading.Event()  # set at exit and by stop_on_error: this process's own stop comes first


def stop_on_error(message: str, code: int) -> None:
    """With several processes: tell the others why this one stops (their watchers exit them with `message`),
    wait briefly until they have read it (process 0 hosts the store: it must outlive their reads), and exit
    with `code` at once: a normal exit would wait for the peers in JAX's shutdown barrier, then abort. With
    one process: return, for the caller's normal exit."""
    if not several_processes():
        return
    import jax

    try:  # another Ctrl-C must not cut the wait short: it would skip os._exit for a normal exit (the barrier)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass
    _stop_watching.set()
    me, count = jax.process_index(), jax.process_count()
    client = coordination_client()
    deadline = time.monotonic() + 10 * WATCH_INTERVAL_S + 5
    try:
        client.key_value_set(f"{ERRORS_KEY}{me}", message)
        while time.monotonic() < deadline:
            seen = {int(key.rsplit("/", 1)[1]) for key, _ in client.key_value_dir_get(SEEN_KEY)}
            errors = {int(key.rsplit("/", 1)[1]) for key, _ in client.key_value_dir_get(ERRORS_KEY)}
            if len((seen | errors) - {me}) >= count - 1:  # each peer read it, or stopped on its own error
                break
            time.sleep(WATCH_INTERVAL_S / 5)
        client.key_value_set(f"{DONE_KEY}{me}", "1")  # process 0 waits for this before it exits (the store)
        if me == 0:  # peers stopping on their own errors still read the store: it must outlive them (a peer
            # whose coordinator is gone aborts, SIGABRT, exit 134, when every process hit an error at once)
            while time.monotonic() < deadline:
                errors = {int(key.rsplit("/", 1)[1]) for key, _ in client.key_value_dir_get(ERRORS_KEY)}
                done = {int(key.rsplit("/", 1)[1]) for key, _ in client.key_value_dir_get(DONE_KEY)}
                if errors <= done:
                    break
                time.sleep(WATCH_INTERVAL_S / 5)
            time.sleep(WATCH_INTERVAL_S / 2)  # they exit just after they write
    except Exception:  # the store is gone (process 0 exited): the peers learn it from JAX's heartbeats
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _peer_errors(client, me: int) -> list[tuple[int, str]]:
    """(index, why) of every other process that published why it stopped, by index."""
    errors = sorted((int(key.rsplit("/", 1)[1]), text) for key, text in client.key_value_dir_get(ERRORS_KEY))
    return [(index, text) for index, text in errors if index != me]


def _exit_for_peer(client, me: int, index: int, text: str) -> None:
    """Say which process stopped and why, let it know this one read it, and exit (3). Called by the watcher
    and by `exit_if_a_peer_stopped`: the first to come exits, the other waits for that."""
    if not _exiting.acquire(blocking=False):
        time.sleep(20 * WATCH_INTERVAL_S + 10)  # the other caller's os._exit ends this process
        os._exit(3)
    print(f"r1jax: error: process {index} of this run stopped: {text}", file=sys.stderr, flush=True)
    try:
        client.key_value_set(f"{SEEN_KEY}{me}", "1")
        if me == 0:  # this process hosts the store: a process still reading it when it goes aborts
            deadline = time.monotonic() + 10 * WATCH_INTERVAL_S + 5
            done = f"{DONE_KEY}{index}"
            while time.monotonic() < deadline and done not in dict(client.key_value_dir_get(DONE_KEY)):
                time.sleep(WATCH_INTERVAL_S / 5)
            time.sleep(WATCH_INTERVAL_S / 2)  # the stopped process exits just after it writes
    except Exception:
        pass
    sys.stdout.flush()
    os._exit(3)


def exit_if_a_peer_stopped() -> None:
    """When another process has published why it stopped, exit as the watcher would (naming it): this
    process's own failure, met before the watcher's next look (a collective the stopped peer left: "Gloo
    AllGather failed: Connection closed by peer"), is its consequence, not news worth a traceback."""
    if not several_processes():
        return
    import jax

    client, me = coordination_client(), jax.process_index()
    try:
        errors = _peer_errors(client, me)
    except Exception:
        return
    if errors:
        _exit_for_peer(client, me, *errors[0])


def watch() -> None:
    """Start the thread that exits this process when another one publishes an error (`stop_on_error`)."""
    import jax

    me = jax.process_index()
    client = coordination_client()

    def watch() -> None:
        while not _stop_watching.wait(WATCH_INTERVAL_S):
            try:
                errors = _peer_errors(client, me)
            except Exception:  # shutting down, or the store is gone: JAX's heartbeats take it from here
                return
            if errors and not _stop_watching.is_set():
                _exit_for_peer(client, me, *errors[0])

    threading.Thread(target=watch, name="r1jax-peer-errors", daemon=True).start()
    atexit.register(_stop_watching.set)  # runs before JAX's own exit handler shuts the client down
