"""A checkpointed data iterator resumes at the same row: under another batch size no row is skipped or
repeated, and a data file that changed since the checkpoint (or replaced generated tasks) is refused, naming
the file and the rows then and now, instead of resuming at a position that now means other rows."""

import json
import re
import signal

import pytest
import yaml

from r1jax.errors import UserError
from r1jax.rl.data import DataConfig, make_iterator
from r1jax.rl.cli.main import main
from r1jax.rl.data.pipeline import row_stream

from tests.rl.conftest import TRAIN_CONFIG, console, run_signalled_at


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def problems(n, start=0):
    return [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "solution": f"{i} + 1 = {i + 1}"}
            for i in range(start, start + n)]


def saved_state(iterator):
    return json.loads(json.dumps(iterator.get_state()))  # what a checkpoint stores


def prompts(batches):
    return [row["prompt"] for batch in batches for row in batch]


def stream(config, rows):
    """The first `rows` rows an uninterrupted iterator yields (epochs after one another)."""
    iterator = make_iterator(config, 1)
    return prompts(next(iterator) for _ in range(rows))


def resumed(config, state, batch_size, batches):
    iterator = make_iterator(config, batch_size)
    iterator.set_state(state)
    return prompts(next(iterator) for _ in range(batches))


@pytest.mark.parametrize("batch_size", [8, 5, 3, 1])
def test_another_batch_size_continues_at_the_same_row(tmp_path, batch_size):
    """Stopped after 3 batches of 4 (row 12 of a 30-row file), resumed in batches of 8, 5, 3 or 1: the rows
    that follow are the uninterrupted run's, on across the epoch boundary (row 30). The batch index alone
    resumed batches of 8 at row 24 (rows 12-23 never trained on) and batches of 3 at row 9 (9-11 twice)."""
    config = DataConfig(path=str(write_rows(tmp_path / "d.jsonl", problems(30))), seed=3)
    iterator = make_iterator(config, 4)
    for _ in range(3):
        next(iterator)
    state = saved_state(iterator)
    rows = 48 // batch_size * batch_size
    assert resumed(config, state, batch_size, rows // batch_size) == stream(config, 12 + rows)[12:]


def test_a_batch_size_changed_twice_still_continues_at_the_same_row():
    config = DataConfig(tasks=("arithmetic", "countdown"), num_problems=20, seed=4)
    first = make_iterator(config, 4)
    next(first)
    second = make_iterator(config, 3)
    second.set_state(saved_state(first))
    next(second)
    assert resumed(config, saved_state(second), 2, 10) == stream(config, 27)[7:]


def test_a_state_of_an_older_checkpoint_is_a_batch_index_in_batches_of_the_size_then():
    """States saved before the row position was recorded ({'next_index': batches}) resume as they did."""
    config = DataConfig(tasks=("arithmetic",), num_problems=30, seed=2)
    uninterrupted = make_iterator(config, 4)
    expected = [next(uninterrupted) for _ in range(10)][5:]
    assert resumed(config, {"next_index": 5}, 4, 5) == prompts(expected)


@pytest.mark.parametrize("change, named", [
    (lambda rows: problems(100, start=500) + rows, "200 rows then, 300 now"),  # the reviewer's: 100 prepended
    (lambda rows: rows[:150], "200 rows then, 150 now"),
    (lambda rows: rows[1:] + rows[:1], "200 rows then and now, but not the same rows in the same order"),
    (lambda rows: rows[:7] + [{**rows[7], "answer": "0"}] + rows[8:], "200 rows then and now, but not the same"),
])
def test_a_changed_data_file_is_refused_naming_it_and_its_rows(tmp_path, change, named):
    path = write_rows(tmp_path / "data.jsonl", problems(200))
    config = DataConfig(path=str(path))
    iterator = make_iterator(config, 4)
    next(iterator)
    state = saved_state(iterator)
    write_rows(path, change(problems(200)))
    changed = make_iterator(config, 4)
    with pytest.raises(UserError) as info:
        changed.set_state(state, checkpoint="RUN/checkpoints/3", stage="grpo")
    message = str(info.value)
    assert f"data file {str(path)!r} changed since the checkpoint was saved: {named}" in message, message
    assert "restore the file" in message and "from 'grpo' on" in message, message
    assert "`init_from: RUN/checkpoints/3`" in message and "--run-dir NEW_DIR" in message, message
    assert "\n" not in message


def test_the_same_rows_resume_wherever_the_file_is_and_however_its_lines_end(tmp_path):
    rows = problems(20)
    config = DataConfig(path=str(write_rows(tmp_path / "data.jsonl", rows)), seed=1)
    iterator = make_iterator(config, 4)
    next(iterator)
    state = saved_state(iterator)
    expected = prompts(next(iterator) for _ in range(6))
    moved = tmp_path / "moved.jsonl"
    moved.write_text("\n".join(json.dumps(row) for row in rows[:10]) + "\n\n" +
                     "\r\n".join(json.dumps(row) for row in rows[10:]))  # a blank line, CRLF, no final newline
    assert resumed(DataConfig(path=str(moved), seed=1), state, 4, 6) == expected


def test_the_same_file_read_in_another_order_is_refused(tmp_path):
    """data.seed or data.shuffle changed on resume: the same rows in another order, where the checkpoint's
    position skips some and repeats others."""
    config = DataConfig(path=str(write_rows(tmp_path / "data.jsonl", problems(20))), seed=1)
    iterator = make_iterator(config, 4)
    next(iterator)
    state = saved_state(iterator)
    for changed, named in ((DataConfig(path=config.path, seed=2), "data.seed 1 -> 2, data.shuffle True -> True"),
                           (DataConfig(path=config.path, seed=1, shuffle=False), "data.shuffle True -> False")):
        with pytest.raises(UserError, match=re.escape(named) + ".*restore the file .* and its order "
                                            r"\(data.seed=1, data.shuffle=True\)"):
            make_iterator(changed, 4).set_state(state)
    old = {k: v for k, v in state.items()}
    old["source"] = {k: v for k, v in state["source"].items() if k != "order"}  # saved before it was recorded
    make_iterator(DataConfig(path=config.path, seed=2), 4).set_state(old)


def test_a_changed_parquet_file_is_refused_and_the_same_rows_rewritten_resume(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(problems(12)), path)
    config = DataConfig(path=str(path))
    iterator = make_iterator(config, 4)
    next(iterator)
    state = saved_state(iterator)
    expected = prompts(next(iterator) for _ in range(2))
    pq.write_table(pa.Table.from_pylist(problems(12)), path, compression="gzip")  # other bytes, same rows
    assert resumed(config, state, 4, 2) == expected
    pq.write_table(pa.Table.from_pylist(problems(13)), path)
    with pytest.raises(UserError, match=re.escape("changed since the checkpoint was saved: 12 rows then, 13 now")):
        make_iterator(config, 4).set_state(state)


def test_generated_tasks_go_on_under_new_settings_and_a_switch_to_a_file_is_refused(tmp_path):
    """A harder curriculum on resume is a deliberate change (the config diff logs it): the new problems go on
    from the same position. A file in the tasks' place would be read from a position that means nothing."""
    config = DataConfig(tasks=("arithmetic",), num_problems=40)
    iterator = make_iterator(config, 4)
    next(iterator)
    state = saved_state(iterator)
    harder = make_iterator(DataConfig(tasks=("arithmetic",), num_problems=50, difficulty=2), 4)
    harder.set_state(state)
    assert harder.row == 4
    path = write_rows(tmp_path / "d.jsonl", problems(8))
    with pytest.raises(UserError, match=r"it read the generated tasks \['arithmetic'\], the config reads data file"):
        make_iterator(DataConfig(path=str(path)), 4).set_state(state)


def test_a_run_resumed_on_a_changed_sft_file_is_refused_before_it_trains(tmp_path, capsys):
    """End to end: an SFT stage on a 40-row file killed after its checkpoint of step 1; 10 rows prepended to
    the file; the resume stops naming the file, its rows then and now and the checkpoint to start a new run
    from, before it trains (it went on at the saved batch index of the reshuffled file, saying nothing)."""
    path = write_rows(tmp_path / "sft.jsonl", problems(40))
    config = yaml.safe_load(TRAIN_CONFIG.read_text())
    config.update(checkpoint={"every": 1, "keep": 10, "async_save": False},
                  stages=[{"name": "sft", "kind": "sft", "steps": 3, "batch_size": 8, "data_path": str(path)}])
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    code, stderr = run_signalled_at(run_dir, signal.SIGKILL, 2, tmp_path / "sft.yaml")
    assert code != 0 and (run_dir / "checkpoints" / "1").is_dir(), stderr[-3000:]
    write_rows(path, problems(10, start=100) + problems(40))
    # the refused resume in this process (it stops before it trains: no process of its own needed)
    code = main(["train", str(tmp_path / "sft.yaml"), "--run-dir", str(run_dir)], as_program=False)
    log = console(capsys.readouterr().err)
    assert code != 0, log[-3000:]
    assert f"data file {str(path)!r} changed since the checkpoint was saved: 40 rows then, 50 now" in log, log
    assert f"`init_from: {run_dir / 'checkpoints' / '1'}`" in log, log


def test_a_source_of_exactly_one_batch_per_process_fills_it():
    rows = [{"prompt": str(i)} for i in range(4)]
    stream = row_stream(rows, batch_size=4, shuffle=False, repeat=False, process_index=0, process_count=1)
    assert [r["prompt"] for r in stream] == ["0", "1", "2", "3"]
    second = row_stream(rows, batch_size=2, shuffle=False, repeat=False, process_index=1, process_count=2)
    assert [r["prompt"] for r in second] == ["1", "3"]
    with pytest.raises(UserError, match="3 problems cannot fill a batch of 2 on each of 2 processes"):
        row_stream(rows[:3], batch_size=2, process_index=0, process_count=2)
