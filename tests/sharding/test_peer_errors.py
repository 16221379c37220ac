"""sharding.peer_errors with a fake coordination store: which peer error is named, and how long a stopping
process waits for its peers (until each has read its error, not the whole deadline)."""

import signal
import time

import jax
import pytest

from r1jax.sharding import peer_errors


class FakeClient:
    def __init__(self, store=None, on_set=None):
        self.store = dict(store or {})
        self.on_set = on_set
        self.sets = []

    def key_value_set(self, key, value):
        self.sets.append((key, value))
        self.store[key] = value
        if self.on_set:
            self.on_set(self, key)

    def key_value_dir_get(self, prefix):
        return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]


class Exited(BaseException):
    pass


@pytest.fixture
def fake_world(monkeypatch):
    saved = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(peer_errors, "several_processes", lambda: True)
    monkeypatch.setattr(peer_errors, "WATCH_INTERVAL_S", 0.05)

    def exit_(code):
        raise Exited(code)

    monkeypatch.setattr(peer_errors.os, "_exit", exit_)
    yield monkeypatch
    peer_errors._stop_watching.clear()
    signal.signal(signal.SIGINT, saved)


def test_peer_errors_are_the_others_by_index_never_this_process():
    e = peer_errors.ERRORS_KEY
    client = FakeClient({f"{e}10": "ten", f"{e}2": "two", f"{e}0": "zero", f"{peer_errors.SEEN_KEY}3": "1"})
    assert peer_errors._peer_errors(client, 0) == [(2, "two"), (10, "ten")]  # by index: 2 before 10
    assert peer_errors._peer_errors(client, 2) == [(0, "zero"), (10, "ten")]


def test_exit_if_a_peer_stopped_names_the_lowest_other_process(fake_world):
    e = peer_errors.ERRORS_KEY
    client = FakeClient({f"{e}1": "my own", f"{e}3": "three", f"{e}12": "twelve"})
    fake_world.setattr(peer_errors, "coordination_client", lambda: client)
    fake_world.setattr(jax, "process_index", lambda: 1)
    called = []
    fake_world.setattr(peer_errors, "_exit_for_peer", lambda c, me, i, t: called.append((me, i, t)))
    peer_errors.exit_if_a_peer_stopped()
    assert called == [(1, 3, "three")]
    client.store = {f"{e}1": "my own"}  # only this process's own error: nothing to exit for
    peer_errors.exit_if_a_peer_stopped()
    assert len(called) == 1


def test_a_stopping_process_waits_only_until_every_peer_read_its_error(fake_world):
    def peers_read(client, key):  # processes 0 and 2 read process 1's error as soon as it is published
        if key == f"{peer_errors.ERRORS_KEY}1":
            client.store[f"{peer_errors.SEEN_KEY}0"] = "1"
            client.store[f"{peer_errors.SEEN_KEY}2"] = "1"

    client = FakeClient(on_set=peers_read)
    fake_world.setattr(peer_errors, "coordination_client", lambda: client)
    fake_world.setattr(jax, "process_index", lambda: 1)
    fake_world.setattr(jax, "process_count", lambda: 3)
    start = time.monotonic()
    with pytest.raises(Exited) as exited:
        peer_errors.stop_on_error("data row 7 is bad", 2)
    assert exited.value.args == (2,)
    assert time.monotonic() - start < 2.0  # the deadline is 10 * 0.05 + 5 s: not waited out
    assert client.sets == [(f"{peer_errors.ERRORS_KEY}1", "data row 7 is bad"), (f"{peer_errors.DONE_KEY}1", "1")]


def test_process_0_stays_until_every_process_with_an_error_is_done(fake_world):
    e, d = peer_errors.ERRORS_KEY, peer_errors.DONE_KEY
    # process 1 stopped on its own error too and has not finished reading the store yet
    client = FakeClient({f"{e}1": "peer failed"})
    fake_world.setattr(peer_errors, "coordination_client", lambda: client)
    fake_world.setattr(jax, "process_index", lambda: 0)
    fake_world.setattr(jax, "process_count", lambda: 2)
    slept = []
    real_sleep = time.sleep

    def sleep(s):
        slept.append(s)
        if len(slept) == 3:
            client.store[f"{d}1"] = "1"  # process 1 done after a few looks
        real_sleep(0)

    fake_world.setattr(peer_errors.time, "sleep", sleep)
    start = time.monotonic()
    with pytest.raises(Exited):
        peer_errors.stop_on_error("mine", 2)
    assert time.monotonic() - start < 2.0
    # three looks until process 1 is done (its error counts as having read this one's), then the final half-wait
    assert len(slept) == 4 and slept[-1] > slept[0]  # not one look fewer or more: the final wait is longer


def test_with_one_process_stop_on_error_returns_for_the_callers_exit(fake_world):
    fake_world.setattr(peer_errors, "several_processes", lambda: False)
    fake_world.setattr(peer_errors, "coordination_client", lambda: pytest.fail("no store with one process"))
    assert peer_errors.stop_on_error("bad", 2) is None  # no os._exit (Exited would be raised)
    assert not peer_errors._stop_watching.is_set()
