"""Metrics out of a run: metrics.jsonl (one object per step), TensorBoard scalars, and refreshed plots.

Held-out evaluations (after each stage and periodically; the summary's `evals`) reach TensorBoard as `eval/*`
and the accuracy plot as `eval/pass@1`, end-of-stage ones included.

The PNG plots are redrawn at most once every `PLOT_INTERVAL_S` seconds (after an evaluation, or every
`plot_every` rows) and always when the run closes (a stop by signal included; a run killed outright keeps
its last draw; a start refused before `resume` or any row draws none, leaving the run directory as it was):
each draw of the nine figures takes about a second of CPU (matplotlib; four draws and the import were 6 s of
tests/rl/data/train_tiny.yaml's 25 s run), which a seconds-long step should not pay at every evaluation;
TensorBoard is the live view. A config with `plots: false` draws none.

metrics.jsonl is appended a row at a time: a kill mid-write can cut its last line, which `read_rows` skips
(and a resume rewrites the file without it; any other unreadable line is an error naming it); an evaluation's
samples/*.jsonl (`write_samples`) and the plots are written whole, each replacing its file at once
(`r1jax.files.write_atomically`).

Only the primary process (JAX process 0) writes. On resume, rows past the restored step are dropped first,
so a resumed run's metrics.jsonl equals an uninterrupted run's (wall time aside). TensorBoard's event files are
append-only: the resumed run's new event file opens with a purge event (SessionLog.START at the restored step + 1,
tensorboardX's `purge_step`), so TensorBoard hides the earlier files' scalars from that step on (the steps
and evaluations run again, and a restart without a checkpoint drops them all) and shows each step once.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Mapping, Sequence

import numpy as np

from r1jax.errors import UserError
from r1jax.files import write_atomically, writing
from r1jax.rl.train.plots import write_plots


def _plain(value: Any) -> Any:
    """JSON-safe scalars: numpy/JAX scalars to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_rows(path: pathlib.Path) -> list[dict]:
    """metrics.jsonl's rows. A last line without its newline that does not parse is one a kill cut mid-write: it
    is skipped (a resume rewrites the file without it). Any other line that is not a JSON object in UTF-8 is a
    UserError naming the file and the line: skipping it, a resume would drop it and every row after it."""
    if not path.exists():
        return []
    pieces = path.read_bytes().split(b"\n")  # the last piece: b"" after a final newline, else an unended line
    rows = []
    for number, raw in enumerate(pieces, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if number == len(pieces):  # cut by a kill mid-write: the run resumes before it
                break
            problem = f"not UTF-8 text ({err.reason})" if isinstance(err, UnicodeDecodeError) else \
                f"not JSON ({err.msg})"
            raise UserError(f"{path}: line {number}: {problem}; a metrics row is one JSON object per line: "
                            "fix or delete that line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}: line {number}: a metrics row must be a JSON object, got "
                            f"{type(row).__name__}; fix or delete that line")
        rows.append(row)
    return rows


def truncate_after(path: pathlib.Path, global_step: int) -> None:
    """Keep only rows with global_step <= `global_step` (used when resuming from a checkpoint; 0: a run that
    starts over keeps none, whatever the file holds, unread)."""
    if global_step == 0:
        if path.exists():
            write_atomically(path, "")
        return
    rows = [r for r in read_rows(path) if r.get("global_step", 0) <= global_step]
    write_atomically(path, "".join(json.dumps(r) + "\n" for r in rows))  # a kill here keeps the rows


PLOT_INTERVAL_S = 60.0
# TensorBoard scalars that may wait for tensorboardX's writer thread: many rows' worth (a GRPO row has ~45). Its
# default, 10, filled within every row (its scalars are put faster than the thread, which shares the interpreter,
# takes them), and each full queue waited 50 ms in `_room_in_queue`: a tiny GRPO step spent ~230 ms writing its
# row, an SFT step ~56 ms.
TENSORBOARD_QUEUE = 4096


def _summary_writer_class():
    """tensorboardX's SummaryWriter. Its module imports torch when torch is installed, only to accept torch
    tensors (2 s of a CLI run's start on a 2-core host); the rows here are Python numbers, so unless torch is
    already loaded the import runs with torch hidden (`sys.modules["torch"] = None` makes `import torch` an
    ImportError, which tensorboardX handles) and torch stays importable afterwards."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    def __init__(self, run_dir: pathlib.Path, primary: bool = True, plot_every: int = 10,
                 plot_interval_s: float = PLOT_INTERVAL_S, plots: bool = True):
        self.run_dir, self.primary, self.plot_every = pathlib.Path(run_dir), primary, plot_every
        self.plots = plots  # the config's `plots`: false draws none
        self.plot_interval_s = plot_interval_s
        self.path = self.run_dir / "metrics.jsonl"
        self._evals: list[Mapping] | None = None
        self._tb = None
        self._purge_step: int | None = None  # set by `resume`: TensorBoard drops earlier files' steps from it on
        self._rows_since_plot = 0
        self._begun = False  # resumed, or something written: `close` redraws the plots
        self.start = time.time()
        self._plotted_at = time.monotonic()  # the first plots come after an interval, or at close

    def evals(self) -> Sequence[Mapping] | None:
        """The run's held-out evaluations so far (logged, or restored by `resume`), which the plots draw;
        None when there are none: the plots then take evaluation figures from the metrics rows."""
        return self._evals

    def resume(self, global_step: int, evals: Sequence[Mapping]) -> None:
        """Continue a run from `global_step` (0: from the start) whose evaluations so far are `evals`: later rows
        are dropped, here and (by a purge event) in TensorBoard. Called before anything is written."""
        self._evals = list(evals) or None
        self._purge_step = global_step + 1
        self._begun = True
        if self.primary:
            truncate_after(self.path, global_step)

    def _tensorboard(self):
        if self._tb is None:  # imported once something is written
            # tensorboardX names a file by the second and the host: a suffix keeps a quick restart's file apart
            self._tb = _summary_writer_class()(str(self.run_dir / "tensorboard"), flush_secs=10,
                                               max_queue=TENSORBOARD_QUEUE,
                                               purge_step=self._purge_step,
                                               filename_suffix=f".{self._purge_step or 1}.{os.getpid()}")
        return self._tb

    def _writer_thread(self):
        """(thread, queue) of tensorboardX's writer (private parts: None where another version lacks them)."""
        file_writer = getattr(self._tb, "_get_file_writer", None)
        events = getattr(file_writer() if file_writer else None, "event_writer", None)
        worker, queue = getattr(events, "_worker", None), getattr(events, "_event_queue", None)
        return (worker, queue) if worker is not None and queue is not None else None

    def _add_scalar(self, tag: str, value: float, step: int) -> None:
        """TensorBoard's scalar, once its writer is known alive. tensorboardX writes on a thread of its own, which a
        refused write (a full disk) ends, said in one line (rl.cli.main); add_scalar then blocks for good once its
        queue is full: metrics.jsonl, still taking rows (a partly filled page), let the run reach that: it hung.
        A full queue is waited on here while the thread lives (a slow disk), so the put cannot block on a thread
        that dies meanwhile (this thread is the queue's only writer)."""
        tb = self._tensorboard()
        if self._room_in_queue() is False:
            raise UserError(f"{self.run_dir / 'tensorboard'}: TensorBoard's writer stopped (its error is said "
                                "above: a full or read-only disk?); free space or make it writable, then run again "
                                "(`r1jax train --run-dir DIR` resumes from the last checkpoint)")
        tb.add_scalar(tag, value, step)

    def _room_in_queue(self) -> bool | None:
        """Wait while tensorboardX's writer thread lives and its queue is full (a slow disk), so that a put (a
        scalar, close's stop signal) cannot block on a thread that dies meanwhile (this thread is the queue's only
        writer); whether the thread lives (None: tensorboardX's private parts absent)."""
        thread = self._writer_thread()
        if thread is None:
            return None
        worker, queue = thread
        while worker.is_alive() and queue.full():
            worker.join(0.05)
        return worker.is_alive()

    def write(self, row: Mapping[str, Any]) -> dict:
        """Append one step's row (must hold `global_step`, `step` and `stage`); returns the row written."""
        row = _plain({**row, "wall_time": round(time.time() - self.start, 3)})
        self._begun = True
        if not self.primary:
            return row
        with writing(self.path), self.path.open("a") as f:  # a full disk names the file
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "global_step" \
                    and not key.startswith("eval/"):  # log_eval writes those, on their own axis
                self._add_scalar(f"{row['stage']}/{key}", value, row["global_step"])
        self._rows_since_plot += 1
        if self._rows_since_plot >= self.plot_every:
            self.refresh_plots()
        return row

    def log_eval(self, entry: Mapping[str, Any]) -> None:
        """One held-out evaluation (a summary `evals` entry): TensorBoard `eval/*` at its step, on one axis
        across stages, and the plots redrawn with it."""
        self._evals = [*(self._evals or []), entry]
        self._begun = True
        if not self.primary:
            return
        k = entry["k"]
        # dict.fromkeys: with k = 1, pass@k is pass@1, written once
        for key in dict.fromkeys(("pass@1", f"cons@{k}", f"pass@{k}", "format_rate", "response_length",
                                  "reflection_rate")):
            if isinstance(entry.get(key), (int, float)):
                self._add_scalar(f"eval/{key}", entry[key], entry["step"])
        self.refresh_plots()

    def write_samples(self, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """An evaluation's decoded samples as `samples/<name>.jsonl`, written whole (`write_atomically`: a kill
        mid-write keeps what the file held before, or no file)."""
        if not self.primary:
            return
        out = self.run_dir / "samples"
        out.mkdir(exist_ok=True)
        write_atomically(out / f"{name}.jsonl", "".join(json.dumps(_plain(row)) + "\n" for row in rows))

    def refresh_plots(self, force: bool = False) -> None:
        """Redraw the plots, unless they were drawn less than `plot_interval_s` ago (`force`: regardless)."""
        if not (self.primary and self.plots) or (
                not force and time.monotonic() - self._plotted_at < self.plot_interval_s):
            return
        write_plots(read_rows(self.path), self.run_dir / "plots", self.evals())
        self._rows_since_plot = 0
        self._plotted_at = time.monotonic()

    def close(self) -> None:
        if self.primary and self._begun:
            self.refresh_plots(force=True)
            if self._tb is not None:
                if self._room_in_queue() is False:  # its stop signal would wait on a full queue for good
                    _drain(self._writer_thread()[1])
                with writing(self.run_dir / "tensorboard"):  # its flush: a full disk names the directory
                    self._tb.close()


def _drain(events) -> None:
    """Empty a queue no thread reads any more (items still in its feeder's flight included)."""
    import queue

    with contextlib.suppress(queue.Empty):
        while True:
            events.get(timeout=0.2)
