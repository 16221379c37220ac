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


def test_a_stopping_process_waits_for_every_other_peer_not_counting_its_own_error(fake_world):
    e, s = peer_errors.ERRORS_KEY, peer_errors.SEEN_KEY
    client = FakeClient({f"{s}0": "1"})  # process 0 read it at once; process 2 reads it after three looks
    fake_world.setattr(peer_errors, "coordination_client", lambda: client)
    fake_world.setattr(jax, "process_index", lambda: 1)
    fake_world.setattr(jax, "process_count", lambda: 3)
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 3:
            client.store[f"{s}2"] = "1"

    fake_world.setattr(peer_errors.time, "sleep", sleep)
    with pytest.raises(Exited):
        peer_errors.stop_on_error("mine", 2)
    assert len(slept) == 3 and f"{e}1" in client.store  # its own error is no peer's reading of it
    assert peer_errors._stop_watching.is_set()  # the watcher must not exit it for a peer meanwhile


def exit_for_peer(client, me, index, text):
    try:
        peer_errors._exit_for_peer(client, me, index, text)
    finally:
        peer_errors._exiting.release()  # os._exit would have ended the process holding it


def test_a_process_exits_3_naming_the_peer_and_its_error_and_says_it_read_it(fake_world, capsys):
    client = FakeClient()
    with pytest.raises(Exited) as exited:
        exit_for_peer(client, 2, 0, "data row 7 is bad")
    assert exited.value.args == (3,)
    assert capsys.readouterr().err == "r1jax: error: process 0 of this run stopped: data row 7 is bad\n"
    assert client.sets == [(f"{peer_errors.SEEN_KEY}2", "1")]


def test_process_0_exiting_for_a_peer_waits_until_that_peer_is_done_with_the_store(fake_world):
    client, slept = FakeClient(), []

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 3:
            client.store[f"{peer_errors.DONE_KEY}1"] = "1"

    fake_world.setattr(peer_errors.time, "sleep", sleep)
    start = time.monotonic()
    with pytest.raises(Exited):
        exit_for_peer(client, 0, 1, "boom")
    assert time.monotonic() - start < 2.0 and len(slept) == 4  # three looks, then the half-wait


def test_the_watcher_leaves_this_processs_own_stop_first(fake_world):
    called = []

    class Stopping(FakeClient):  # this process starts stopping on its own error while the watcher reads
        def key_value_dir_get(self, prefix):
            peer_errors._stop_watching.set()
            return super().key_value_dir_get(prefix)

    client = Stopping({f"{peer_errors.ERRORS_KEY}1": "peer's"})
    fake_world.setattr(peer_errors, "coordination_client", lambda: client)
    fake_world.setattr(jax, "process_index", lambda: 0)
    fake_world.setattr(peer_errors, "_exit_for_peer", lambda *args: called.append(args))
    peer_errors.watch()
    time.sleep(0.3)
    assert called == []
