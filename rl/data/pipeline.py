"""grain pipelines: a random-access source of problems -> shuffle -> shard by JAX process -> repeat -> batch.

Every process builds the same shuffled order from the same seed and takes the slice [index::count], so
processes see disjoint problems; `repeat` reshuffles each epoch with a derived seed and keeps the slices
disjoint (each epoch leaves out its order's last len % count problems, so the slices are equal). A batch is a list of problem dicts (task, prompt, answer, solution, difficulty) of length
`batch_size` per process.

The iterator's state (`it.get_state()`, a small JSON-serialisable dict) restores exactly with
`it.set_state(state)` on an iterator built from the same config, in any process: the trainer checkpoints it.

The trainer runs its host work (tokenising, decoding, reward scoring) identically on every JAX process and
hands JAX host values as global ones (sharding.distributed), so `make_iterator` without an explicit process
gives every process the whole global batch; a run on N processes then sees exactly a one-process run's data.
"""

from __future__ import annotations

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
    return dataset.batch(batch_size, drop_remainder=True, batch_fn=list)


def make_iterator(config: DataConfig, batch_size: int, *, repeat: bool = True,
                  process_index: Optional[int] = None, process_count: Optional[int] = None):
    """The training iterator for a data config; `get_state()` / `set_state()` checkpoint it.

    Without a process, every JAX process yields the same global batches of `batch_size` rows (the trainer's
    processes all do the host work on the whole batch). Given one (index and count), the iterator yields
    that process's shard: `batch_size` rows of its own per batch."""
    if process_index is None and process_count is None:
        process_index, process_count = 0, 1
    dataset = make_dataset(build_source(config), batch_size=batch_size, seed=config.seed,
                           shuffle=config.shuffle, repeat=repeat, process_index=process_index,
                           process_count=process_count)
    return iter(dataset)
