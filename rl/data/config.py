"""The data config: which problems the policy trains on and how they are shuffled."""

from __future__ import annotations

import dataclasses
from typing import Optional

from model.errors import UserError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    tasks: tuple[str, ...] = ("arithmetic",)  # generated tasks, interleaved round-robin (ignored with `path`)
    difficulty: int = 1  # difficulty level of every generated task (1-5)
    path: Optional[str] = None  # user data: JSONL or Parquet with prompt, answer[, task, solution]
    num_problems: int = 100_000  # generated problems per epoch (a generator is unbounded; grain needs a size)
    seed: int = 0  # problem generation and shuffling
    shuffle: bool = True  # reshuffled every epoch
    default_task: str = "math"  # verifier for user rows without a `task` field

    def __post_init__(self) -> None:
        from rl.tasks import TASKS

        if not self.tasks and self.path is None:
            raise UserError("data.tasks is empty and data.path is not set: nothing to train on")
        for name in (*self.tasks, self.default_task):
            if name not in TASKS:
                raise UserError(f"data.tasks: unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
        if not 1 <= self.difficulty <= 5:
            raise UserError(f"data.difficulty = {self.difficulty}: expected 1..5")
        if self.num_problems < 1:
            raise UserError(f"data.num_problems = {self.num_problems}: expected >= 1")
