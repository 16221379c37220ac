"""The data config: which problems the policy trains on and how they are shuffled."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from r1jax.errors import UserError
from r1jax.rl.tasks import TASKS, get_task


@dataclasses.dataclass(frozen=True)
class DataConfig:
    tasks: tuple[str, ...] = ("arithmetic",)  # generated tasks, interleaved round-robin (ignored with `path`)
    difficulty: int = 1  # difficulty level of every generated task (1-5)
    task_knobs: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)  # {task: {knob: value}}
    path: Optional[str] = None  # user data: JSONL or Parquet with prompt, answer[, task, solution]
    num_problems: int = 100_000  # generated problems per epoch (a generator is unbounded; grain needs a size)
    seed: int = 0  # problem generation and shuffling
    shuffle: bool = True  # reshuffled every epoch
    default_task: str = "math"  # verifier for user rows without a `task` field

    def __post_init__(self) -> None:
        if not self.tasks and self.path is None:
            raise UserError("data.tasks is empty and data.path is not set: nothing to train on")
        for name in (*self.tasks, self.default_task):
            if name not in TASKS:
                raise UserError(f"data.tasks: unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
        if not 1 <= self.difficulty <= 5:
            raise UserError(f"data.difficulty = {self.difficulty}: expected 1..5")
        if self.num_problems < 1:
            raise UserError(f"data.num_problems = {self.num_problems}: expected >= 1")
        for name, knobs in self.task_knobs.items():
            if name not in self.tasks:
                raise UserError(f"data.task_knobs.{name}: {name!r} is not in data.tasks {list(self.tasks)}")
            try:
                self.task(name)
            except UserError as err:
                raise UserError(f"data.task_knobs.{name}: {err}") from None

    def task(self, name: str, difficulty: Optional[int] = None):
        """Task `name` at `difficulty` (default: data.difficulty) with this config's knobs for it."""
        return get_task(name, difficulty or self.difficulty, **self.task_knobs.get(name, {}))
