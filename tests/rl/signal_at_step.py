"""`python -m tests.rl.signal_at_step SIGNAL STEP ARGS...` runs `r1jax ARGS...` and sends SIGNAL (INT, TERM or
KILL) to its own process right after metrics.jsonl gets the row of global step STEP.

A signal sent from outside lands wherever the run happens to be; this one lands at a known step, after the
step's row and before its step boundary (the stop check and the checkpoint): the tests of stops and kills
at a chosen step (a stage's last step, inside rejection sampling or distillation) use it. The run itself is
the real command line in a real process: only MetricsWriter.write is wrapped.
"""

import os
import signal
import sys

from r1jax.rl.cli.main import main
from r1jax.rl.train.metrics import MetricsWriter


def signal_after_row(sig: signal.Signals, global_step: int) -> None:
    write = MetricsWriter.write

    def write_then_signal(self, row):
        written = write(self, row)
        if row["global_step"] == global_step:
            os.kill(os.getpid(), sig)
        return written

    MetricsWriter.write = write_then_signal


if __name__ == "__main__":
    signal_after_row(signal.Signals[f"SIG{sys.argv[1]}"], int(sys.argv[2]))
    sys.exit(main(sys.argv[3:], as_program=True))
