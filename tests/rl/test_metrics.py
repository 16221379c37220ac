"""A run's metrics: a resumed run's TensorBoard scalars show each step once, as its metrics.jsonl does."""

import json
import os
import struct

import pytest
from tensorboardX.proto.event_pb2 import Event, SessionLog

from r1jax.errors import UserError
from r1jax.rl.train import metrics
from r1jax.rl.train.metrics import MetricsWriter, read_rows


def purged_scalars(directory):
    """{(tag, step): value} as TensorBoard shows a directory's event files: read in name order (the names start
    with the time the file was opened), a SessionLog.START event at step p hiding every scalar at step >= p read
    before it (its EventAccumulator's purge of a restarted run); each (tag, step) once."""
    scalars = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):  # TFRecords: u64 length, u32 CRC of it, the Event, u32 CRC of that
            (length,) = struct.unpack_from("<Q", data, offset)
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                scalars = {(tag, step): v for (tag, step), v in scalars.items() if step < event.step}
            for value in event.summary.value:
                assert (value.tag, event.step) not in scalars, (value.tag, event.step)
                scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def run(run_dir, resume_at, steps, evals_before, eval_steps, value):
    """One process's life: resume at `resume_at`, write `steps`' rows (loss `value`) and evaluations at
    `eval_steps` (pass@1 `value`). Its event file is then renamed to an earlier time, so that the next writer's
    (opened within the same second, under the same name) neither overwrites it nor sorts before it."""
    board = run_dir / "tensorboard"
    before = set(board.glob("events.*")) if board.exists() else set()
    writer = MetricsWriter(run_dir, plots=False)
    writer.resume(resume_at, evals_before)
    for step in steps:
        writer.write({"global_step": step, "step": step, "stage": "grpo", "loss": value})
        if step in eval_steps:
            writer.log_eval({"stage": "grpo", "step": step, "k": 2, "pass@1": value})
    writer.close()
    (written,) = set(board.glob("events.*")) - before
    written.rename(board / f"events.out.tfevents.{1_000_000_000 + len(before)}")


def shown(run_dir):
    """The resumed runs' TensorBoard scalars, wall time aside: {(tag, step): value}."""
    return {key: v for key, v in purged_scalars(run_dir / "tensorboard").items() if key[0] != "grpo/wall_time"}


def test_a_resumed_runs_tensorboard_shows_each_step_once_from_the_resumed_run(tmp_path):
    run(tmp_path, 0, range(1, 6), (), {2, 4}, 1.0)  # killed after step 5; its last checkpoint was step 3
    run(tmp_path, 3, range(4, 7), [{"stage": "grpo", "step": 2, "pass@1": 1.0}], {4, 6}, 2.0)
    losses = {1: 1.0, 2: 1.0, 3: 1.0, 4: 2.0, 5: 2.0, 6: 2.0}  # steps 4 and 5 from the resumed run only
    assert [(r["global_step"], r["loss"]) for r in read_rows(tmp_path / "metrics.jsonl")] == list(losses.items())
    assert shown(tmp_path) == {**{("grpo/loss", s): v for s, v in losses.items()},
                               **{("grpo/step", s): s for s in losses},
                               ("eval/pass_1", 2): 1.0, ("eval/pass_1", 4): 2.0, ("eval/pass_1", 6): 2.0}


def test_a_restart_without_a_checkpoint_hides_the_whole_first_attempt(tmp_path):
    run(tmp_path, 0, range(1, 4), (), {2}, 1.0)  # killed before its first checkpoint: the run starts over
    run(tmp_path, 0, range(1, 3), (), set(), 2.0)
    assert shown(tmp_path) == {("grpo/loss", 1): 2.0, ("grpo/loss", 2): 2.0, ("grpo/step", 1): 1.0,
                               ("grpo/step", 2): 2.0}


def test_an_evaluation_with_one_sample_writes_its_pass_at_1_once(tmp_path):
    writer = MetricsWriter(tmp_path, plots=False)
    writer.log_eval({"stage": "grpo", "step": 1, "k": 1, "pass@1": 0.5, "cons@1": 0.5})
    writer.close()
    assert purged_scalars(tmp_path / "tensorboard") == {("eval/pass_1", 1): 0.5, ("eval/cons_1", 1): 0.5}


def test_a_rows_evaluation_figure_is_written_once_under_eval(tmp_path):
    # a GRPO row carries the periodic evaluation's eval/pass@1: it showed as grpo/eval/pass_1 beside eval/pass_1
    writer = MetricsWriter(tmp_path, plots=False)
    writer.write({"global_step": 3, "step": 3, "stage": "grpo", "loss": 0.5, "eval/pass@1": 0.25})
    writer.log_eval({"stage": "grpo", "step": 3, "k": 1, "pass@1": 0.25})
    writer.close()
    tags = {tag for tag, _ in purged_scalars(tmp_path / "tensorboard")}
    assert tags == {"grpo/loss", "grpo/step", "grpo/wall_time", "eval/pass_1"}
    assert read_rows(tmp_path / "metrics.jsonl")[0]["eval/pass@1"] == 0.25  # the row itself keeps it


class Killed(BaseException):
    """The process killed mid-write (a BaseException, as a signal's exit is: no handler catches it)."""


def test_an_evaluations_samples_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    writer = MetricsWriter(tmp_path, plots=False)
    rows = [{"prompt": "p", "completion": "c", "rewards": {"accuracy": 1.0}, "status": "ok"}] * 3
    writer.write_samples("grpo-step4", rows)
    path = tmp_path / "samples" / "grpo-step4.jsonl"
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows

    def killed(*args):
        raise Killed

    monkeypatch.setattr(os, "fsync", killed)  # after the new rows are written, before they replace the file
    with pytest.raises(Killed):
        writer.write_samples("grpo-step4", rows[:1])
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows  # the file as it was
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    monkeypatch.undo()
    MetricsWriter(tmp_path / "other", primary=False).write_samples("grpo-step4", rows)
    assert not (tmp_path / "other" / "samples").exists()  # only the primary process writes


def test_a_row_cut_by_a_kill_is_skipped_and_a_resume_writes_on_after_the_whole_rows(tmp_path):
    writer = MetricsWriter(tmp_path, plots=False)
    for step in (1, 2):
        writer.write({"global_step": step, "step": step, "stage": "grpo", "loss": 0.5})
    with (tmp_path / "metrics.jsonl").open("a") as f:  # step 3's row cut by a kill
        f.write('{"global_step": 3, "step": 3, "stage": "gr')
    assert [r["global_step"] for r in read_rows(tmp_path / "metrics.jsonl")] == [1, 2]
    resumed = MetricsWriter(tmp_path, plots=False)
    resumed.resume(2, ())
    resumed.write({"global_step": 3, "step": 3, "stage": "grpo", "loss": 0.25})
    resumed.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["global_step"] for line in lines] == [1, 2, 3]  # every line whole


def test_a_full_disk_names_metrics_jsonl(tmp_path, monkeypatch):
    """A row the disk refuses raised an OSError naming no file (the command's one line said only "no space left
    on device"); it names metrics.jsonl."""
    import builtins
    import errno

    writer = MetricsWriter(tmp_path, plots=False)
    real_open = builtins.open

    class Full:
        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr("pathlib.io.open", Full, raising=False)
    monkeypatch.setattr(builtins, "open", Full)
    with pytest.raises(OSError) as caught:
        writer.write({"global_step": 1, "step": 1, "stage": "sft", "loss": 1.0})
    assert caught.value.filename == str(tmp_path / "metrics.jsonl")


def test_numpy_scalars_become_numbers_and_non_finite_floats_null(tmp_path):
    import numpy as np

    writer = MetricsWriter(tmp_path, plots=False)
    row = writer.write({"global_step": np.int32(2), "step": 2, "stage": "grpo", "loss": np.float32(0.5),
                        "kl": float("nan"), "grad_norm": float("inf"), "lengths": [np.int64(3), float("-inf")]})
    writer.close()

    def strict(constant):  # NaN / Infinity are not JSON: another reader of metrics.jsonl refuses them
        raise ValueError(constant)

    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    written = json.loads(line, parse_constant=strict)
    assert {k: written[k] for k in ("global_step", "loss", "kl", "grad_norm", "lengths")} == {
        "global_step": 2, "loss": 0.5, "kl": None, "grad_norm": None, "lengths": [3, None]}
    assert type(written["global_step"]) is int and row["loss"] == 0.5 and type(row["loss"]) is float


def test_an_unreadable_last_line_that_ends_with_its_newline_is_named(tmp_path):
    # only a last line without its newline can be one a kill cut mid-write; a whole bad line is an error
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"global_step": 1}\n{not json\n')
    with pytest.raises(UserError, match="line 2: not JSON"):
        read_rows(path)
    path.write_bytes(b'{"global_step": 1}\n{not json')
    assert read_rows(path) == [{"global_step": 1}]


def drawn(monkeypatch):
    """The plot draws a MetricsWriter makes, each as the global steps of the rows it draws."""
    calls = []
    monkeypatch.setattr(metrics, "write_plots",
                        lambda rows, out, evals: calls.append([r["global_step"] for r in rows]))
    return calls


def test_plots_are_redrawn_every_plot_every_rows(tmp_path, monkeypatch):
    calls = drawn(monkeypatch)
    writer = MetricsWriter(tmp_path, plot_every=3, plot_interval_s=0)
    for step in range(1, 8):
        writer.write({"global_step": step, "step": step, "stage": "grpo", "loss": 0.5})
    assert calls == [[1, 2, 3], [1, 2, 3, 4, 5, 6]]
    writer.log_eval({"stage": "grpo", "step": 7, "k": 1, "pass@1": 0.5})  # drawn with it: 3 rows to the next
    for step in range(8, 11):
        writer.write({"global_step": step, "step": step, "stage": "grpo", "loss": 0.5})
    assert [len(c) for c in calls] == [3, 6, 7, 10]


def test_plots_false_or_a_secondary_process_draws_and_writes_nothing(tmp_path, monkeypatch):
    calls = drawn(monkeypatch)
    for run_dir, options in [(tmp_path / "off", {"plots": False}), (tmp_path / "other", {"primary": False})]:
        run_dir.mkdir()
        writer = MetricsWriter(run_dir, plot_every=1, plot_interval_s=0, **options)
        writer.write({"global_step": 1, "step": 1, "stage": "grpo", "loss": 0.5})
        writer.log_eval({"stage": "grpo", "step": 1, "k": 1, "pass@1": 0.5})
        writer.close()
        assert calls == []
        if options.get("primary") is False:
            assert list(run_dir.iterdir()) == []  # no metrics.jsonl, no TensorBoard file
    assert [p.name for p in (tmp_path / "off").iterdir()] and (tmp_path / "off" / "metrics.jsonl").exists()


def test_a_writer_closed_before_resume_or_any_row_draws_nothing(tmp_path, monkeypatch):
    calls = drawn(monkeypatch)
    MetricsWriter(tmp_path).close()  # a start refused: the run directory stays as it was
    assert calls == [] and list(tmp_path.iterdir()) == []
    resumed = MetricsWriter(tmp_path)
    resumed.resume(0, ())
    resumed.close()
    assert calls == [[]]


def test_a_resume_restores_the_evaluations_the_plots_draw(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(metrics, "write_plots", lambda rows, out, evals: seen.append(evals))
    entry = {"stage": "grpo", "step": 2, "k": 1, "pass@1": 0.5}
    writer = MetricsWriter(tmp_path)
    writer.resume(3, [entry])
    assert writer.evals() == [entry]
    writer.log_eval({**entry, "step": 4})
    writer.close()
    assert seen[-1] == [entry, {**entry, "step": 4}]


def test_bools_and_missing_evaluation_figures_reach_no_scalar(tmp_path):
    writer = MetricsWriter(tmp_path, plots=False)
    writer.write({"global_step": 1, "step": 1, "stage": "grpo", "loss": 0.5, "stopped": True})
    writer.log_eval({"stage": "grpo", "step": 1, "k": 2, "pass@1": 0.5, "cons@2": None, "format_rate": "n/a"})
    writer.close()
    tags = {tag for tag, _ in purged_scalars(tmp_path / "tensorboard")}
    assert tags == {"grpo/loss", "grpo/step", "grpo/wall_time", "eval/pass_1"}
    assert read_rows(tmp_path / "metrics.jsonl")[0]["stopped"] is True


def test_blank_lines_are_no_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"global_step": 1}\n  \n\n{"global_step": 2}\n')
    assert read_rows(path) == [{"global_step": 1}, {"global_step": 2}]


def test_a_line_of_json_that_is_no_object_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"global_step": 1}\n[1, 2]\n')
    with pytest.raises(UserError, match="line 2: a metrics row must be a JSON object, got list"):
        read_rows(path)


def test_a_restart_from_step_0_empties_the_file_unread(tmp_path):
    """A run that starts over keeps no row, not even one without a global step or one it cannot read."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n{"global_step": 0}\n{not json\n{"global_step": 1}\n')
    metrics.truncate_after(path, 0)
    assert path.read_text() == ""
