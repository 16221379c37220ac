"""The data config: which problems the policy trains on, how a data file's rows map to them, the shuffle.

A data file (`path`: JSONL or Parquet) holds one problem per row. By default the columns are r1jax's own
field names: `prompt`, `answer`, optional `task` (the verifier; default `default_task`) and `solution` (a
worked solution, for SFT). Other datasets are read as they are through two settings:

- `fields`: problem field -> the file's column, for any of prompt, answer, solution, task; unmapped fields
  keep their own names. GSM8K: `{prompt: question}`; MATH: `{prompt: problem, answer: solution}`. Two fields
  read one column only as answer and solution do (MATH's): `{prompt: answer}` is refused (rl.data.records).
- `answer_format`: how the answer column's text becomes the reference answer (rl.data.answers):
  `raw` (as it is), `gsm8k` (the number after the last `####`, thousands commas removed; the reasoning
  before it is the worked solution), `boxed` (the content of the last `\\boxed{...}`, `\\fbox{...}` or
  `\\boxed 5`; the whole text is the worked solution). A row's own solution column, when present, wins.

The mapping describes the run's user files: `path` and a stage's `data_path` or `teacher` file. The samples
an earlier rejection_sampling stage writes are in r1jax's own field names: read them with
`for_own_file(path)`. A row the mapping does not fit (a missing column, a GSM8K answer without `####`, a
MATH solution without `\\boxed`) is a UserError naming the file, row and field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from r1jax.errors import UserError
from r1jax.rl.data.answers import ANSWER_FORMATS
from r1jax.rl.data.records import check_field_mapping, load_problems_hashed
from r1jax.rl.tasks import TASKS, get_task

# problems generated per epoch (a run reshuffles them each epoch): the held-out set generates every training
# problem once to skip it (rl.evaluate; 0.05-0.2 ms each on a CPU core: about 1-3 minutes at this bound;
# 99,999,999,999,999 hung there)
MAX_NUM_PROBLEMS = 1_000_000
MAX_SEED = 2**32 - 1  # grain's shuffle seed


@dataclasses.dataclass(frozen=True)
class DataConfig:
    tasks: tuple[str, ...] = ("arithmetic",)  # generated tasks, interleaved round-robin (ignored with `path`)
    # difficulty level of every generated task (1-5); at 1 arithmetic's few hundred problems leave none held out
    # beside num_problems' training problems (a config stating only a model could not train)
    difficulty: int = 3
    task_knobs: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)  # {task: {knob: value}}
    path: Optional[str] = None  # user data: JSONL or Parquet, its columns per `fields` (module docstring)
    num_problems: int = 100_000  # generated problems per epoch (a generator is unbounded; grain needs a size)
    seed: int = 0  # problem generation and shuffling
    shuffle: bool = True  # reshuffled every epoch
    default_task: str = "math"  # verifier for user rows without a `task` field
    fields: Dict[str, str] = dataclasses.field(default_factory=dict)  # problem field -> the file's column
    answer_format: str = "raw"  # raw | gsm8k | boxed: how the answer column's text gives the answer

    def check_listed_once(self) -> None:
        """Refuse a task listed twice in data.tasks: task i of T generates problem i // T of its own stream, so a
        second listing generated the same problems, the copies side by side in a batch. Checked before training
        (rl.train.preflight), not on every load: a checkpoint saved with one before this check still loads for
        generate, eval and the exports. With `path` no stage generates from data.tasks (every stage reads the file;
        only a generated held-out set draws on it, its repeats skipped): nothing to refuse."""
        if self.path is not None:
            return
        repeated = sorted({name for name in self.tasks if self.tasks.count(name) > 1})
        if repeated:
            raise UserError(f"data.tasks lists {', '.join(map(repr, repeated))} more than once: each of its problems "
                            "would be generated once per listing, the copies side by side in a batch; list each "
                            "task once")

    def __post_init__(self) -> None:
        if self.path is not None and not self.path.strip():  # read as '.': "data file '.' is not a file"
            raise UserError(f"data.path={self.path!r}: expected a data file's path (or null: problems generated "
                            "from data.tasks)")
        if not self.tasks and self.path is None:
            raise UserError("data.tasks is empty and data.path is not set: nothing to train on")
        for field, name in [*(("data.tasks", name) for name in self.tasks), ("data.default_task", self.default_task)]:
            if name not in TASKS:
                raise UserError(f"{field}: unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
        if not 1 <= self.difficulty <= 5:
            raise UserError(f"data.difficulty = {self.difficulty}: expected 1..5")
        if not 1 <= self.num_problems <= MAX_NUM_PROBLEMS:
            raise UserError(f"data.num_problems = {self.num_problems}: expected in [1, {MAX_NUM_PROBLEMS:,}] (an "
                            "epoch's generated problems; a run reshuffles them every epoch)")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"data.seed = {self.seed}: expected an integer in [0, 2^32-1]")
        check_field_mapping(self.fields, "data.fields", "the data file")
        if self.answer_format not in ANSWER_FORMATS:
            raise UserError(f"data.answer_format={self.answer_format!r}: expected one of {', '.join(ANSWER_FORMATS)}")
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

    def load_file(self, path: Optional[str] = None, *, need_solution: bool = False) -> list[dict]:
        """The problems of `path` (default: data.path) read through this config's mapping: `fields`,
        `answer_format` and `default_task` (rl.data.records.load_problems)."""
        return self.load_file_hashed(path, need_solution=need_solution)[0]

    def load_file_hashed(self, path: Optional[str] = None, *, need_solution: bool = False) -> tuple[list[dict], str]:
        """`load_file` and the SHA-256 of the file's rows (rl.data.records.load_problems_hashed)."""
        path = path if path is not None else self.path
        if path is None:
            raise UserError("data.path is not set: no data file to read")
        return load_problems_hashed(path, self.default_task, need_solution=need_solution, fields=self.fields,
                                    answer_format=self.answer_format)

    def for_own_file(self, path: str) -> "DataConfig":
        """This config reading `path`, a file r1jax wrote in its own field names (an earlier stage's
        samples): no field mapping, answers as they are."""
        return dataclasses.replace(self, path=path, fields={}, answer_format="raw")
