"""User data files: JSONL (one JSON object per line) or Parquet, validated row by row.

Row numbers are 1-based: the line number in a JSONL file (blank lines count but are skipped), the row index
in a Parquet file. A bad row raises UserError naming the file, the row number and the field. Numbers are
accepted where a string is expected for `answer` (a JSON 42 is the answer "42"); booleans are not.
"""

from __future__ import annotations

import json
import pathlib
from typing import Iterator

from r1jax.errors import UserError
from r1jax.rl.tasks import TASKS

SUFFIXES = (".jsonl", ".json", ".parquet")


def read_rows(path: str | pathlib.Path) -> Iterator[tuple[int, dict]]:
    """(row number, row object) for every row of a JSONL or Parquet file."""
    path = pathlib.Path(path)
    if not path.exists():
        raise UserError(f"data file {str(path)!r} does not exist")
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} is not a file")
    if path.suffix == ".parquet":
        yield from _parquet_rows(path)
    elif path.suffix in (".jsonl", ".json"):
        yield from _jsonl_rows(path)
    else:
        raise UserError(f"data file {str(path)!r}: expected one of {', '.join(SUFFIXES)}")


def _jsonl_rows(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
    try:
        handle = path.open("rb")  # bytes: each line is decoded alone, so a bad one is named by its number
    except OSError as err:
        raise UserError(f"data file {str(path)!r} cannot be read: {err.strerror or err}") from err
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{path}: row {number}: not UTF-8 text ({err.reason})") from err
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: row {number}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise UserError(f"{path}: row {number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def _parquet_rows(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise UserError(f"{path}: cannot read Parquet: {err}") from err
    for number, row in enumerate(table.to_pylist(), start=1):
        yield number, row


def text_field(row: dict, field: str, where: str, required: bool, numbers_ok: bool = False) -> str | None:
    """row[field] as a string; None when optional and absent; UserError otherwise."""
    value = row.get(field)
    if value is None:
        if required:
            raise UserError(f"{where}: field {field!r} is missing")
        return None
    if numbers_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise UserError(f"{where}: field {field!r} is empty")
    return value


def check_task(row: dict, where: str, default: str) -> str:
    task = text_field(row, "task", where, required=False) or default
    if task not in TASKS:
        raise UserError(f"{where}: field 'task' = {task!r} is not a known task ({', '.join(sorted(TASKS))})")
    return task


def load_problems(path: str | pathlib.Path, default_task: str = "math", *, need_solution: bool = False
                  ) -> list[dict]:
    """Training rows as problem dicts: prompt, answer, task, solution ("" when absent), difficulty 0.
    With `need_solution` (SFT data), a row without a non-empty `solution` is a UserError naming it."""
    problems = []
    for number, row in read_rows(path):
        where = f"{path}: row {number}"
        problems.append({
            "task": check_task(row, where, default_task),
            "prompt": text_field(row, "prompt", where, required=True),
            "answer": text_field(row, "answer", where, required=True, numbers_ok=True),
            "solution": text_field(row, "solution", where, required=need_solution) or "",
            "difficulty": 0,
        })
    if not problems:
        raise UserError(f"data file {str(path)!r} has no rows")
    return problems
