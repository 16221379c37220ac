"""The run's console (rl.train.console): what a person watching sees, and a reader that goes away."""

import io
import os
import subprocess
import sys
import textwrap

from rich.console import Console

from r1jax.rl.train.console import RunConsole

WATCHED_RUN = textwrap.dedent("""
    import time
    from r1jax.rl.train.console import RunConsole
    console = RunConsole()
    console.log("stage 1/2: sft")
    time.sleep(0.3)  # the reader is gone by now
    console.start_stage("grpo", 3, 0)
    for step in range(1, 4):
        console.update(step, {"reward/total": 1.5, "loss": 0.25})
        console.log("x" * 70_000)  # past a pipe's buffer: a write must fail
    console.end_stage()
    console.log("done")
    print("the run went on", flush=True)
""")


def without_a_reader(script: str) -> tuple[int, bytes]:
    """`script`'s exit code and stdout, its stderr a pipe whose reader has gone."""
    read, write = os.pipe()
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=write)
    os.close(write)
    os.close(read)
    out, _ = run.communicate(timeout=120)
    return run.returncode, out


def test_a_reader_that_goes_away_quiets_the_console_and_the_run_goes_on():
    # `r1jax train ... 2>&1 | head -1`: before, rich's broken-pipe rule raised SystemExit(1) inside the run
    assert without_a_reader(WATCHED_RUN) == (0, b"the run went on\n")


def test_a_reader_that_stays_sees_every_line():
    run = subprocess.run([sys.executable, "-c", WATCHED_RUN], capture_output=True, timeout=120)
    assert run.returncode == 0 and run.stdout == b"the run went on\n"
    err = run.stderr.decode()
    assert err.count("x") == 3 * 70_000 and "stage 1/2: sft" in err and "done" in err


LATER_WRITER = textwrap.dedent("""
    import sys, time
    from r1jax.rl.train.console import RunConsole
    console = RunConsole()
    time.sleep(0.3)  # the reader is gone by now
    console.log("x" * 70_000)  # past a pipe's buffer: the write fails, the console quiets
    print("quiet", console.console.quiet, flush=True)
    sys.stderr.write("y" * 70_000)  # another writer to stderr: /dev/null now
    sys.stderr.flush()
    print("the run went on", flush=True)
""")


def test_after_the_reader_goes_away_stderr_is_dev_null_for_every_writer():
    """After the console's reader went away, standard error goes to /dev/null (console.py's docstring): a later
    write to stderr by anything else in the process (a warning, a log handler) must not fail the run with a
    BrokenPipeError, and the console itself writes no more."""
    assert without_a_reader(LATER_WRITER) == (0, b"quiet True\nthe run went on\n")


def _console(enabled=True):
    rc = RunConsole(enabled=enabled)
    rc.console = Console(file=io.StringIO(), width=200, force_terminal=False, highlight=False)
    return rc


def test_a_stage_bar_starts_at_the_steps_done_and_a_zero_total_is_one():
    rc = _console()
    rc.start_stage("grpo", 10, 4)
    task = rc.progress.tasks[0]
    assert (task.description, task.total, task.completed, task.fields["stats"]) == ("grpo", 10, 4, "")
    rc.end_stage()
    assert rc.progress is None
    rc.start_stage("sft", 0, 0)
    assert rc.progress.tasks[0].total == 1
    rc.end_stage()


def test_update_shows_the_known_metrics_in_order_and_skips_missing_or_none():
    rc = _console()
    rc.start_stage("grpo", 10, 0)
    rc.update(5, {"loss": None, "tokens_per_s": 999.6, "reward/accuracy": 0.25, "reward/total": 1.5,
                  "response_length/mean": 123.4, "kl": 0.1})
    task = rc.progress.tasks[0]
    assert task.completed == 5
    assert task.fields["stats"] == "reward 1.50 acc 0.25 len 123 tok/s 1000"
    rc.update(6, {"loss": 0.1234})
    assert rc.progress.tasks[0].fields["stats"] == "loss 0.123"
    rc.end_stage()


def test_a_disabled_console_prints_nothing_and_draws_no_bar():
    rc = _console(enabled=False)
    rc.log("hello")
    rc.start_stage("grpo", 3, 0)
    rc.update(1, {"loss": 0.5})
    rc.end_stage()
    assert rc.progress is None and rc.console.file.getvalue() == ""
    on = _console()
    on.log("hello")
    assert on.console.file.getvalue() == "hello\n"
