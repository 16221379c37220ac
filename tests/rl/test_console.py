"""The run's console (rl.train.console): what a person watching sees, and a reader that goes away."""

import os
import subprocess
import sys
import textwrap

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


def test_a_reader_that_goes_away_quiets_the_console_and_the_run_goes_on():
    # `r1jax train ... 2>&1 | head -1`: before, rich's broken-pipe rule raised SystemExit(1) inside the run
    read, write = os.pipe()
    run = subprocess.Popen([sys.executable, "-c", WATCHED_RUN], stdout=subprocess.PIPE, stderr=write)
    os.close(write)
    os.close(read)
    out, _ = run.communicate(timeout=120)
    assert (run.returncode, out) == (0, b"the run went on\n")


def test_a_reader_that_stays_sees_every_line():
    run = subprocess.run([sys.executable, "-c", WATCHED_RUN], capture_output=True, timeout=120)
    assert run.returncode == 0 and run.stdout == b"the run went on\n"
    err = run.stderr.decode()
    assert err.count("x") == 3 * 70_000 and "stage 1/2: sft" in err and "done" in err
