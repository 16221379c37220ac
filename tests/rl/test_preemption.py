"""rl.train.preemption.StopRequest in one process and, with distributed faked, in several: which signals it
holds, the second Ctrl-C, handlers restored, and the per-step agreement of a multi-process run."""

import signal

import pytest

from r1jax.rl.train import preemption
from r1jax.rl.train.preemption import StopRequest


@pytest.fixture
def guard_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _mark(_signum, _frame):
    pass


def test_one_process_holds_sigterm_and_sigint_and_gives_them_back(guard_signals):
    signal.signal(signal.SIGTERM, _mark)
    signal.signal(signal.SIGINT, _mark)
    with StopRequest() as stop:
        assert not stop and stop.signal is None
        assert signal.getsignal(signal.SIGTERM) != _mark and signal.getsignal(signal.SIGINT) != _mark
        signal.raise_signal(signal.SIGTERM)
        assert stop and stop.signal == signal.SIGTERM
        try:
            signal.raise_signal(signal.SIGTERM)  # a second SIGTERM is no Ctrl-C: no KeyboardInterrupt
        except KeyboardInterrupt:
            pytest.fail("a second SIGTERM raised KeyboardInterrupt")
        assert stop.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is _mark and signal.getsignal(signal.SIGINT) is _mark


def test_a_closed_terminals_sighup_checkpoints_and_stops_as_sigterm_does(guard_signals):
    """SIGHUP killed a run outright (exit 129), losing its steps since the last checkpoint."""
    signal.signal(signal.SIGHUP, _mark)
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGHUP)
        assert stop and stop.signal == signal.SIGHUP
    assert signal.getsignal(signal.SIGHUP) is _mark


def test_a_hang_up_ignored_by_nohup_stays_ignored(guard_signals):
    """`nohup r1jax train &` asks for the run to outlive the terminal: a SIGHUP must not stop it."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        signal.raise_signal(signal.SIGHUP)
        assert not stop and stop.signal is None
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


def test_a_sighup_among_several_processes_goes_to_jaxs_notifier(monkeypatch, guard_signals):
    _, forwarded = several_processes(monkeypatch, stop_at=2)
    with StopRequest(step=lambda: 2) as stop:
        signal.raise_signal(signal.SIGHUP)
        assert forwarded == [signal.SIGTERM] and stop and stop.signal == signal.SIGHUP


def test_a_second_ctrl_c_stops_at_once(guard_signals):
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop and stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def test_a_ctrl_c_after_a_sigterm_stops_at_once(guard_signals):
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


class _FakeDistributed:
    def __init__(self, stop_at):
        self.stop_at, self.barriers, self.syncs = stop_at, [], []

    def multi_process(self):
        return True

    def barrier(self, name, what):
        self.barriers.append(name)

    def reached_preemption_sync_point(self, step):
        self.syncs.append(step)
        return step == self.stop_at


def several_processes(monkeypatch, stop_at: int) -> tuple[_FakeDistributed, list]:
    """A faked multi-process run agreeing to stop at step `stop_at`, and the signals JAX's notifier got."""
    fake = _FakeDistributed(stop_at=stop_at)
    monkeypatch.setattr(preemption, "distributed", fake)
    forwarded = []
    signal.signal(signal.SIGTERM, lambda s, f: forwarded.append(s))  # stands in for JAX's notifier
    return fake, forwarded


def test_several_processes_agree_once_per_step_and_leave_sigterm_to_jax(monkeypatch, guard_signals):
    fake, _ = several_processes(monkeypatch, stop_at=5)
    current = [3]
    with StopRequest(step=lambda: current[0]) as stop:
        assert fake.syncs == [3]  # the sync manager counts from the step the run starts at
        assert signal.getsignal(signal.SIGTERM) is not signal.getsignal(signal.SIGINT)  # SIGTERM not ours
        current[0] = 4
        assert not stop and not stop  # asked twice at one step: one barrier, one sync point
        assert fake.barriers == ["step-4"] and fake.syncs == [3, 4]
        current[0] = 5
        assert stop and stop.signal == signal.SIGTERM  # a peer's notice, no signal here
        assert fake.barriers == ["step-4", "step-5"] and fake.syncs == [3, 4, 5]


def test_a_ctrl_c_among_several_processes_goes_to_jaxs_notifier(monkeypatch, guard_signals):
    _, forwarded = several_processes(monkeypatch, stop_at=2)
    current = [1]
    with StopRequest(step=lambda: current[0]) as stop:
        signal.raise_signal(signal.SIGINT)  # forwarded to the notifier as SIGTERM
        assert forwarded == [signal.SIGTERM] and stop.signal == signal.SIGINT
        assert not stop  # the stop waits for the step the processes agree on
        current[0] = 2
        assert stop and stop.signal == signal.SIGINT  # the signal this process got is kept


def test_without_a_step_function_one_process_rules_apply_even_with_peers(monkeypatch, guard_signals):
    fake = _FakeDistributed(stop_at=0)
    monkeypatch.setattr(preemption, "distributed", fake)
    with StopRequest() as stop:
        assert not stop and fake.syncs == [] and fake.barriers == []
        signal.raise_signal(signal.SIGTERM)
        assert stop


def test_a_closed_terminals_sighup_leaves_the_runs_last_lines_no_terminal_to_fail_on(tmp_path):
    """After the hang-up every write to the terminal fails (EIO): the run's "stopped by signal 1" line ended the
    stop with a traceback and exit 1 (its checkpoint written). Its output now goes nowhere, and it exits 0."""
    import subprocess
    import sys

    script = tmp_path / "hang_up.py"
    script.write_text(
        "import os, pty, signal, sys\n"
        "from r1jax.rl.train.preemption import StopRequest\n"
        "master, slave = pty.openpty()\n"
        "os.dup2(slave, 1)\n"
        "os.close(master)  # the terminal closes\n"
        "with StopRequest() as stop:\n"
        "    signal.raise_signal(signal.SIGHUP)\n"
        "    assert stop\n"
        "    print('stopped by signal 1 at step 3', flush=True)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
