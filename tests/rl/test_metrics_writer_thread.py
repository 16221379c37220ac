"""rl.train.metrics' TensorBoard scalars and tensorboardX's writer thread: rows never wait on a busy thread; a thread
that dies (a full disk, a slow one that then refuses) stops the next row or lets close return, never hangs."""

import pytest

from r1jax.errors import UserError
from r1jax.rl.train import metrics
from r1jax.rl.train.metrics import MetricsWriter

from tests.rl.test_metrics import purged_scalars


@pytest.fixture
def small_tensorboard_queue(monkeypatch):
    """tensorboardX's own queue size (10): a few rows fill it, as a slow or full disk's rows fill the run's."""
    monkeypatch.setattr(metrics, "TENSORBOARD_QUEUE", 10)


def test_a_rows_scalars_do_not_wait_for_tensorboards_writer_thread(tmp_path, monkeypatch):
    """Rows of a GRPO row's ~45 scalars are written while TensorBoard's writer thread is busy in a write: with
    tensorboardX's default queue of 10 each row waited on that thread (50 ms a wait: ~230 ms a tiny GRPO step)."""
    import threading

    from tensorboardX import record_writer

    writer = MetricsWriter(tmp_path, plots=False)
    writer.write({"global_step": 1, "step": 1, "stage": "grpo", "loss": 1.0})
    release, write = threading.Event(), record_writer.RecordWriter.write
    monkeypatch.setattr(record_writer.RecordWriter, "write", lambda self, data: (release.wait(), write(self, data)))
    written = []

    def rows():
        for step in range(2, 6):
            written.append(writer.write({"global_step": step, "step": step, "stage": "grpo",
                                         **{f"figure_{i}": float(i) for i in range(45)}}))

    row_writer = threading.Thread(target=rows, daemon=True)
    row_writer.start()
    row_writer.join(timeout=10)
    finished = not row_writer.is_alive()
    release.set()
    row_writer.join(timeout=10)
    assert finished and len(written) == 4, "the rows waited on TensorBoard's busy writer thread"
    writer.close()
    scalars = purged_scalars(tmp_path / "tensorboard")  # every scalar written once the thread went on
    assert {step for tag, step in scalars if tag == "grpo/figure_44"} == {2, 3, 4, 5}
    assert len(scalars) == 3 + 4 * 47  # (every row has its `step` and `wall_time` too)


def test_tensorboards_writer_thread_dying_on_a_full_disk_stops_the_next_row(tmp_path, monkeypatch,
                                                                            small_tensorboard_queue):
    """TensorBoard's writer thread died on a full disk (its own line) while metrics.jsonl still took rows (a
    partly filled page): the next rows' scalars filled its queue, which nothing reads any more, and the trainer
    hung. The next row now raises, naming the directory, and the writer still closes."""
    import errno
    import threading

    from tensorboardX import record_writer

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = MetricsWriter(tmp_path, plots=False)
    writer.write({"global_step": 1, "step": 1, "stage": "sft", "loss": 1.0})  # starts TensorBoard's thread
    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # its report: the command's hook's line
    raised = []

    def rows():
        try:
            for step in range(2, 40):
                writer.write({"global_step": step, "step": step, "stage": "sft", "loss": 1.0, "lr": 0.1})
        except UserError as err:
            raised.append(err)
        writer.close()

    row_writer = threading.Thread(target=rows, daemon=True)
    row_writer.start()
    row_writer.join(timeout=30)
    assert not row_writer.is_alive(), "hung on TensorBoard's full queue"
    assert raised and str(raised[0]).startswith(f"{tmp_path / 'tensorboard'}: TensorBoard's writer stopped")


def test_a_tensorboardx_without_the_private_writer_parts_writes_scalars_as_before(tmp_path, monkeypatch):
    """MetricsWriter looks at tensorboardX's private _get_file_writer().event_writer._worker for a dead writer
    thread; a version without them must write scalars as before, not fail on an AttributeError."""
    from tensorboardX import SummaryWriter

    scalars = []
    writer = MetricsWriter(tmp_path, plots=False)
    writer._tensorboard()  # (its constructor calls _get_file_writer)
    monkeypatch.delattr(SummaryWriter, "_get_file_writer")
    monkeypatch.setattr(SummaryWriter, "add_scalar", lambda self, tag, value, step: scalars.append((tag, value, step)))
    writer.write({"global_step": 1, "step": 1, "stage": "sft", "loss": 1.5})
    assert ("sft/loss", 1.5, 1) in scalars


def test_tensorboards_writer_thread_dying_after_a_slow_write_stops_the_run_too(tmp_path, monkeypatch,
                                                                               small_tensorboard_queue):
    """A slow disk that then refuses (NFS): the rows filled the writer's queue while its thread was still writing,
    the next scalar waited on that full queue, and the thread then died: add_scalar (and, after the error, close's
    stop signal) waited for good."""
    import errno
    import threading
    import time

    from tensorboardX import record_writer

    def slow_then_full(self, data):
        time.sleep(0.3)
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = MetricsWriter(tmp_path, plots=False)
    writer.write({"global_step": 1, "step": 1, "stage": "sft", "loss": 1.0})
    monkeypatch.setattr(record_writer.RecordWriter, "write", slow_then_full)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)
    done = []

    def rows():
        with pytest.raises(UserError, match="TensorBoard's writer stopped"):
            for step in range(2, 40):
                writer.write({"global_step": step, "step": step, "stage": "sft", "loss": 1.0, "lr": 0.1})
        writer.close()
        done.append(True)

    row_writer = threading.Thread(target=rows, daemon=True)
    row_writer.start()
    row_writer.join(timeout=10)
    assert done, "hung on TensorBoard's full queue"


def test_close_waits_out_a_full_queue_whose_writer_dies_in_a_slow_write(tmp_path, monkeypatch,
                                                                        small_tensorboard_queue):
    """close() checked the writer thread once: alive, its queue full, then dying in a slow write that failed,
    tensorboardX's stop signal waited on that full queue for good. close now waits while the thread lives and
    the queue is full, and empties a dead thread's queue."""
    import errno
    import threading
    import time

    from tensorboardX import record_writer

    def slow_then_full(self, data):
        time.sleep(0.5)
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = MetricsWriter(tmp_path, plots=False)
    writer.write({"global_step": 1, "step": 1, "stage": "sft", "loss": 1.0})
    events = writer._writer_thread()[1]
    time.sleep(0.2)  # the first row written: the thread waits on an empty queue
    monkeypatch.setattr(record_writer.RecordWriter, "write", slow_then_full)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)
    tb = writer._tensorboard()
    tb.add_scalar("sft/loss", 2.0, 2)  # taken at once: the thread is in its slow write
    time.sleep(0.1)
    while not events.full():
        tb.add_scalar("sft/loss", 3.0, 3)
    closed = []

    def close():
        try:
            writer.close()
        finally:  # (whatever close says of the dead writer: the point is that it returns)
            closed.append(True)

    closer = threading.Thread(target=close, daemon=True)
    closer.start()
    closer.join(timeout=10)
    assert closed, "close hung on TensorBoard's full queue"
