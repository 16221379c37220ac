"""`python -m tests.rl.signal_at_step SIGNAL STEP ARGS...` runs `r1jax ARGS...` and sends SIGNAL (INT, TERM or
KILL) to its own process right after metrics.jsonl gets the row of global step STEP.

A signal sent from outside lands wherever the run happens to be; this one lands at a known step, after the
step's row and before its step boundary (the stop check and the checkpoint): the tests of stops and kills
at a chosen step (a stage's last step, inside rejection sampling or distillation) use it. The run itself is
the real command line in a real process: only MetricsWriter.write is wrapped.

`python -m tests.rl.signal_at_step series STATE STOPS ARGS...` runs `r1jax ARGS...` once per comma-separated
stop of STOPS (`INT:5`, `TERM:9`, ...; `none`: no signal, to the end), one after another in this process, each
resuming where the one before stopped (the later runs reuse the earlier ones' traced and compiled programs:
one process start and one tracing instead of one each), until one fails. Before each run it prints SERIES_MARK
to stderr; after each it writes one JSON line to STATE: its exit code and the run directory as it was left
(checkpoint steps, dataset files, metrics rows, the summary's evaluations). A SIGKILL ends the series.
`series STATE STOPS ARGS... THEN STOPS ARGS...` goes on, after the runs of the first ARGS, with those of the
next (another run directory, another config): tests/rl/test_pipeline.py's uninterrupted run and its stopped
ones are one process. `run_in_turn` holds that loop; tests/rl/staleness_probe.py's series of runs use it too.
"""

import dataclasses
import json
import os
import pathlib
import signal
import sys
from typing import Any, Callable, Iterable, Sequence

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


SERIES_MARK = "=== signal_at_step: next run ==="


def run_dir_state(run_dir: pathlib.Path) -> dict:
    listing = lambda name: sorted(p.name for p in (run_dir / name).iterdir()) if (run_dir / name).is_dir() else []
    metrics, summary = run_dir / "metrics.jsonl", run_dir / "summary.json"
    return {"checkpoints": sorted(int(n) for n in listing("checkpoints") if n.isdigit()),
            "datasets": listing("datasets"),
            "rows": [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else [],
            "evals": json.loads(summary.read_text())["evals"] if summary.exists() else None}


@dataclasses.dataclass
class SeriesRun:
    """One run of `run_in_turn`: `r1jax argv`, once `arm()` has wrapped what this run needs; `after(code)` gets
    its exit code."""

    argv: list[str]
    arm: Callable[[], None] = lambda: None
    after: Callable[[int], None] = lambda code: None


def run_in_turn(runs: Iterable[SeriesRun], wrapped: Sequence[tuple[Any, str]] = ((MetricsWriter, "write"),)) -> int:
    """`r1jax` once per item of `runs`, one after another in this process (the later runs reuse the earlier
    ones' traced and compiled programs: one process start and one tracing instead of one each), until one
    fails: its exit code (0: every run ended well). Before each run every attribute of `wrapped` ((class, name)
    or (dict, key) pairs) is put back as it was before the first (the run before's wrappers are off: a resumed
    stage writes its step's row again), the run's `arm` wraps its own, and SERIES_MARK goes to stderr."""
    get = lambda owner, name: owner[name] if isinstance(owner, dict) else getattr(owner, name)
    originals = [(owner, name, get(owner, name)) for owner, name in wrapped]
    for run in runs:
        for owner, name, original in originals:
            if isinstance(owner, dict):
                owner[name] = original
            else:
                setattr(owner, name, original)
        run.arm()
        print(SERIES_MARK, file=sys.stderr, flush=True)
        code = main(run.argv, as_program=True)
        run.after(code)
        if code:
            return code
    return 0


THEN = "THEN"  # between the (STOPS, ARGS...) groups of one series


def series(state_path: str, groups: list[tuple[str, list[str]]]) -> int:
    """The runs of each (STOPS, ARGS) group in turn; one STATE line per finished run."""

    def arm(stop: str) -> Callable[[], None]:
        if stop == "none":
            return lambda: None
        name, step = stop.split(":")
        return lambda: signal_after_row(signal.Signals[f"SIG{name}"], int(step))

    def write_state(run_dir: pathlib.Path) -> Callable[[int], None]:
        def write(code: int) -> None:
            with open(state_path, "a") as f:
                f.write(json.dumps({"code": code, **run_dir_state(run_dir)}) + "\n")
        return write

    return run_in_turn(SeriesRun(argv, arm(stop), write_state(pathlib.Path(argv[argv.index("--run-dir") + 1])))
                       for stops, argv in groups for stop in stops.split(","))


def series_groups(args: list[str]) -> list[tuple[str, list[str]]]:
    """STOPS ARGS... [THEN STOPS ARGS...]... as (STOPS, ARGS) groups."""
    groups, group = [], []
    for arg in [*args, THEN]:
        if arg == THEN:
            groups.append((group[0], group[1:]))
            group = []
        else:
            group.append(arg)
    return groups


if __name__ == "__main__":
    if sys.argv[1] == "series":
        sys.exit(series(sys.argv[2], series_groups(sys.argv[3:])))
    signal_after_row(signal.Signals[f"SIG{sys.argv[1]}"], int(sys.argv[2]))
    sys.exit(main(sys.argv[3:], as_program=True))
