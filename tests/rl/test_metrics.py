"""A run's metrics: a resumed run's TensorBoard scalars show each step once, as its metrics.jsonl does."""

import struct

from tensorboardX.proto.event_pb2 import Event, SessionLog

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
