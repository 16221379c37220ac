"""grain pipelines: a random-access source of problems -> shuffle -> shard by JAX process -> repeat -> batch.

Every process builds the same shuffled order from the same seed and takes the slice [index::count], so
processes see disjoint problems; `repeat` reshuffles each epoch with a derived seed and keeps the slices
disjoint (each epoch leaves out its order's last len % count problems, so the slices are equal). A batch is a
list of problem dicts (task, prompt, answer, solution, difficulty) of length `batch_size` per process.

The iterator's state (`it.get_state()`, a small JSON-serialisable dict) restores exactly with
`it.set_state(state)` on an iterator built from the same config, in any process: the trainer checkpoints it.
It holds the position in rows (of this process's stream, epochs after one another), the batch size and the
source's fingerprint: a file's row count, the SHA-256 of its rows (hashed as they are read) and the order it
is read in (data.seed, data.shuffle), or what defines the generated tasks. An iterator of another batch size
continues at the same row (batches start wherever the position is: no row skipped or repeated); a file that
differs from the state's or is read in another order, or a file read in place of generated tasks (or the
reverse), is a UserError naming what changed (rows then and now): the position would mean other rows.
Changed settings of generated tasks (a harder curriculum) go on from the same position. A state without
those (checkpoints before 2026-12-04) is a batch index, read in batches of the iterator's size as before.

The trainer runs its host work (tokenising, decoding, reward scoring) identically on every JAX process and
hands JAX host values as global ones (sharding.distributed), so `make_iterator` without an explicit process
gives every process the whole global batch; a run on N processes then sees exactly a one-process run's data.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import grain

from r1jax.errors import UserError
from r1jax.rl.data.config import DataConfig
from r1jax.rl.tasks import Task


class TaskSource:
    """Problems generated on demand: item i is tasks[i % T].generate(seed, i // T) (grain random access)."""

    def __init__(self, tasks: Sequence[Task], seed: int, size: int):
        if not tasks:
            raise UserError("a task source needs at least one task")
        self.tasks, self.seed, self.size = list(tasks), seed, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(index)
        task = self.tasks[index % len(self.tasks)]
        return task.generate(self.seed, index // len(self.tasks)).to_dict()


def build_source(config: DataConfig):
    """The user's file when `config.path` is set, otherwise the generated tasks."""
    if config.path is not None:
        return config.load_file()
    tasks = [config.task(name) for name in config.tasks]
    return TaskSource(tasks, config.seed, config.num_problems)


def read_source(config: DataConfig) -> tuple[Sequence, dict]:
    """`build_source` and the source's fingerprint (JSON): a file's path, row count and the SHA-256 of its
    rows, hashed while they are read; for generated tasks, the settings that define them."""
    if config.path is not None:
        problems, sha256 = config.load_file_hashed()
        return problems, {"file": config.path, "rows": len(problems), "sha256": sha256,
                          "order": {"seed": config.seed, "shuffle": config.shuffle}}
    tasks = {"tasks": list(config.tasks), "difficulty": config.difficulty, "task_knobs": config.task_knobs,
             "seed": config.seed, "num_problems": config.num_problems}
    return build_source(config), {"tasks": json.loads(json.dumps(tasks, sort_keys=True, default=repr))}


def _process(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        return jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise UserError(f"process index {process_index} is not in [0, {process_count})")
    return process_index, process_count


def make_dataset(source, *, batch_size: int, seed: int = 0, shuffle: bool = True, repeat: bool = True,
                 process_index: Optional[int] = None, process_count: Optional[int] = None) -> grain.MapDataset:
    """Batches of `batch_size` problems for this process (process index/count default to JAX's)."""
    rows = row_stream(source, batch_size=batch_size, seed=seed, shuffle=shuffle, repeat=repeat,
                      process_index=process_index, process_count=process_count)
    return rows.batch(batch_size, drop_remainder=True, batch_fn=list)


def row_stream(source, *, batch_size: int, seed: int = 0, shuffle: bool = True, repeat: bool = True,
               process_index: Optional[int] = None, process_count: Optional[int] = None) -> grain.MapDataset:
    """This process's rows in order, epoch after epoch (`make_dataset` before batching); `batch_size`: the
    batches it must fill."""
    index, count = _process(process_index, process_count)
    if batch_size < 1:
        raise UserError(f"batch size {batch_size}: expected >= 1")
    if len(source) < count * batch_size:
        raise UserError(f"{len(source)} problems cannot fill a batch of {batch_size} on each of "
                        f"{count} processes")
    dataset = grain.MapDataset.source(source)
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    # equal shards (the last len % count rows of each epoch's order go): with unequal ones the processes'
    # epochs start at different batches and one batch could hold a row twice
    dataset = dataset[:len(source) - len(source) % count][index::count]
    if repeat:
        dataset = dataset.repeat(None)  # reseed_each_epoch: a new order every epoch, same on every process
    return dataset


class DataIterator:
    """Batches of `batch_size` rows of a row stream (`row_stream`), from a position in rows; its state
    (module docstring) is that position, the batch size and the source's fingerprint."""

    def __init__(self, rows: grain.MapDataset, batch_size: int, source: dict):
        self.rows, self.batch_size, self.source = rows, batch_size, source
        self._seek(0)

    def _seek(self, row: int) -> None:
        self._first_row = row
        rows = self.rows[row:] if row else self.rows
        self._batches = iter(rows.batch(self.batch_size, drop_remainder=True, batch_fn=list))

    def __iter__(self) -> "DataIterator":
        return self

    def __next__(self) -> list:
        return next(self._batches)

    @property
    def row(self) -> int:
        """The rows read so far: the next batch starts at this row of the stream."""
        return self._first_row + self._batches.get_state()["next_index"] * self.batch_size

    def get_state(self) -> dict:
        return {"row": self.row, "batch_size": self.batch_size, "source": self.source}

    def set_state(self, state: dict, *, checkpoint: Optional[str] = None, stage: Optional[str] = None) -> None:
        """Continue at `state`'s row, in batches of this iterator's size. `checkpoint` and `stage` (where the
        state comes from) make the advice of a changed source's UserError concrete."""
        check_same_source(state, self.source, checkpoint=checkpoint, stage=stage)
        row = state["row"] if "row" in state else state["next_index"] * self.batch_size
        self._seek(int(row))


def check_same_source(state: dict, now: dict, *, checkpoint: Optional[str] = None,
                      stage: Optional[str] = None) -> None:
    """A UserError when iterator state `state` was read from another source than the fingerprint `now`
    (`read_source`'s) describes, or in another order: its position would mean other rows. The trainer checks a
    resumed stage's data so before it writes to the run directory; `set_state` checks it again."""
    saved = state.get("source")
    if saved is None:  # a state before 2026-12-04: no fingerprint to compare
        return
    changed = source_change(saved, now)
    if changed:
        raise UserError(changed + changed_source_advice(saved, checkpoint, stage))


def source_change(saved: dict, now: dict) -> Optional[str]:
    """What differs between a state's source fingerprint `saved` and `now`, or None: the same data."""
    if "file" in saved and "file" in now:
        if (saved["rows"], saved["sha256"]) == (now["rows"], now["sha256"]):
            # the same rows, wherever the file is now; in the same order (a state before 2026-12-04 has none)
            then, order = saved.get("order", now["order"]), now["order"]
            if then == order:
                return None
            return (f"data file {now['file']!r} is read in another order than at the checkpoint: data.seed "
                    f"{then['seed']} -> {order['seed']}, data.shuffle {then['shuffle']} -> {order['shuffle']}")
        rows = (f"{saved['rows']} rows then, {now['rows']} now" if saved["rows"] != now["rows"] else
                f"{now['rows']} rows then and now, but not the same rows in the same order")
        moved = f" (the checkpoint read {saved['file']!r})" if saved["file"] != now["file"] else ""
        return f"data file {now['file']!r}{moved} changed since the checkpoint was saved: {rows}"
    if "tasks" in saved and "tasks" in now:
        # other generated problems (a harder curriculum, more of them) go on from the same position: no row of
        # them is skipped or repeated that was not another's; the resume's config diff names the change
        return None
    return (f"the data changed since the checkpoint was saved: it read {_describe(saved)}, the config reads "
            f"{_describe(now)}")


def _describe(source: dict) -> str:
    if "file" in source:
        return f"data file {source['file']!r} ({source['rows']} rows)"
    return f"the generated tasks {source['tasks']['tasks']}"


def changed_source_advice(saved: dict, checkpoint: Optional[str], stage: Optional[str]) -> str:
    what = f"the file {saved['file']!r} as it was" if "file" in saved else "the data settings as they were"
    if "order" in saved:
        what += f" and its order (data.seed={saved['order']['seed']}, data.shuffle={saved['order']['shuffle']})"
    start = f"init_from: {checkpoint}" if checkpoint else "init_from: RUN_DIR/checkpoints/STEP"
    stages = f"the config's stages from {stage!r} on, " if stage else "the config's stages from this one on, "
    return (f"; the checkpoint's position in it would skip or repeat rows. To resume, restore {what}; to train "
            f"on the changed data, start a new run directory from this checkpoint's policy: {stages}the first "
            f"with `{start}` (r1jax train CONFIG --run-dir NEW_DIR)")


def make_iterator(config: DataConfig, batch_size: int, *, repeat: bool = True,
                  process_index: Optional[int] = None, process_count: Optional[int] = None) -> DataIterator:
    """The training iterator for a data config; `get_state()` / `set_state()` checkpoint it.

    Without a process, every JAX process yields the same global batches of `batch_size` rows (the trainer's
    processes all do the host work on the whole batch). Given one (index and count), the iterator yields
    that process's shard: `batch_size` rows of its own per batch."""
    if process_index is None and process_count is None:
        process_index, process_count = 0, 1
    source, fingerprint = read_source(config)
    rows = row_stream(source, batch_size=batch_size, seed=config.seed, shuffle=config.shuffle, repeat=repeat,
                      process_index=process_index, process_count=process_count)
    return DataIterator(rows, batch_size, fingerprint)
