"""What a person watching the run sees: one progress bar per stage and readable log lines (process 0 only)."""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

SHOWN = (("reward/total", "reward", "{:.2f}"), ("reward/accuracy", "acc", "{:.2f}"),
         ("response_length/mean", "len", "{:.0f}"), ("tokens_per_s", "tok/s", "{:.0f}"), ("loss", "loss", "{:.3f}"))


def silence_libraries() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("absl", "orbax", "jax", "grain", "tensorboardX", "matplotlib"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _StderrConsole(Console):
    """Standard error's console, outliving its reader: a write to a pipe whose reader went away (`r1jax train ...
    2>&1 | head`) quiets it, standard error going to /dev/null from then on, and the run goes on (metrics.jsonl,
    TensorBoard and checkpoints keep it). rich's own rule (stdout to /dev/null, SystemExit(1)) stopped the run
    at once: exit 1, no message, no checkpoint of its stage."""

    def __init__(self):
        super().__init__(stderr=True, highlight=False)

    def on_broken_pipe(self) -> None:
        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())


class RunConsole:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.console = _StderrConsole()
        self.progress: Progress | None = None
        self.task = None

    def log(self, message: str) -> None:
        if self.enabled:
            (self.progress.console if self.progress else self.console).print(message)

    def start_stage(self, name: str, total: int, done: int) -> None:
        if not self.enabled:
            return
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(name, total=max(total, 1), completed=done, stats="")

    def update(self, step: int, metrics: dict) -> None:
        if not self.enabled or self.progress is None:
            return
        stats = " ".join(f"{label} {fmt.format(metrics[key])}" for key, label, fmt in SHOWN
                         if metrics.get(key) is not None)
        self.progress.update(self.task, completed=step, stats=stats)

    def end_stage(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
