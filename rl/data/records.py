"""User data files: JSONL (one JSON object per line) or Parquet, validated row by row.

Row numbers are 1-based: the line number in a JSONL file (blank lines count but are skipped), the row index
in a Parquet file. A bad row raises UserError naming the file, the row number and the field: every row is
checked when the file is loaded (before training), and the first bad one stops the load; no row is skipped.
Numbers are accepted where a string is expected for a raw `answer` (a JSON 42 is the answer "42");
booleans are not, nor non-finite floats (JSON's NaN, Infinity or 1e400, a Parquet NaN: no answer "nan").

A field mapping (`data.fields`: problem field -> the file's column, e.g. {prompt: question}) names the
columns that hold a problem's `prompt`, `answer`, `solution`, `task`, `tests` and `entry_point`; unmapped
fields keep their own names. The answer column's text goes through `data.answer_format` (rl.data.answers):
GSM8K's `#### 42` or MATH's last `\\boxed{}` give the reference answer and, when the row has no solution column,
the worked solution.

Countdown rows (`task: countdown`) need a reference the verifier can check (rl.tasks.countdown): an
expression of the numbers such as "(3+5)*2", or the target alone when the prompt lists the numbers
("[19, 36, 55, 7]"); a bare target ("65", the usual `target` column) with no numbers in the prompt is a
UserError naming the row.

Code rows (`task: code`) have `tests` instead of an answer: a list of assertion strings or of
{input, output} objects (or that list as a JSON string), and an optional `entry_point` (rl.rewards.code);
the problem carries the tests as JSON. Their `answer` is optional (a reference program, never scored).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import pathlib
from typing import Iterator, Mapping

from r1jax.errors import UserError
from r1jax.rl.data.answers import split_answer
from r1jax.rl.rewards.code import check_entry_point, encode_tests
from r1jax.rl.tasks import TASKS, algebra, arithmetic, countdown, math_answer
from r1jax.rl.tasks.base import r1_solution

# the problem fields a data.fields mapping may name
PROBLEM_FIELDS = ("prompt", "answer", "solution", "task", "tests", "entry_point")
# the fields that may read one column: the answer's text gives the worked solution too (data.answer_format gsm8k /
# boxed; MATH's {answer: solution} reads its `solution` column for both)
SHARED_COLUMN_FIELDS = ("answer", "solution")


def field_columns(fields: Mapping[str, str] | None) -> dict[str, str]:
    """Each problem field's column under a field mapping: the column it maps the field to, else the field's name."""
    return {name: (fields or {}).get(name, name) for name in PROBLEM_FIELDS}


def check_field_mapping(fields: Mapping[str, str], key: str, file: str) -> None:
    """A field mapping (`key`: data.fields, eval.fields) maps problem fields to column names of `file` ("the data
    file"), and no two fields read one column, mapped or by their own name (answer and solution aside:
    SHARED_COLUMN_FIELDS): {prompt: answer} trained on each row's answer as its prompt."""
    for name, column in fields.items():
        if name not in PROBLEM_FIELDS:
            raise UserError(f"{key}.{name}: not a problem field; map any of {', '.join(PROBLEM_FIELDS)} to {file}'s "
                            "column names, e.g. {prompt: question}")
        if not isinstance(column, str) or not column.strip():
            raise UserError(f"{key}.{name}={column!r}: expected a column name")
    readers: dict[str, list[str]] = {}
    for name, column in field_columns(fields).items():
        readers.setdefault(column, []).append(name)
    for column, names in readers.items():
        if len(names) == 1 or set(names) <= set(SHARED_COLUMN_FIELDS):
            continue
        first = next(name for name in names if name not in SHARED_COLUMN_FIELDS)
        other = next(name for name in names if name != first)
        mapped, unmapped = sorted((first, other), key=lambda name: name not in fields)
        said, fix = (f"{key}.{mapped} and {key}.{unmapped} both name column {column!r}", "one of them") \
            if unmapped in fields else (f"{key}.{mapped}={column!r} is the column {unmapped} reads by its own name "
                                        "(unmapped)", f"{key}.{unmapped}")
        lacks = " (one the file lacks: every row's task is then the default task)" if fix.endswith(".task") else ""
        raise UserError(f"{said}: each problem field reads a column of its own (only answer and solution may share "
                        f"one: the answer's text gives the worked solution); map {fix} to another column{lacks}")

SUFFIXES = (".jsonl", ".json", ".parquet")


def read_rows(path: str | pathlib.Path, digest=None) -> Iterator[tuple[int, dict]]:
    """(row number, row object) for every row of a JSONL or Parquet file. A `digest` (a hashlib object) is
    updated with every row as it is read: a JSONL row's bytes (line endings aside), a Parquet row as
    canonical JSON; a file with the same rows in the same order gives the same digest."""
    path = pathlib.Path(path)
    if not path.exists():
        raise UserError(f"data file {str(path)!r} does not exist")
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} is not a file")
    if path.suffix == ".parquet":
        yield from _parquet_rows(path, digest)
    elif path.suffix in (".jsonl", ".json"):
        yield from _jsonl_rows(path, digest)
    else:
        raise UserError(f"data file {str(path)!r}: expected one of {', '.join(SUFFIXES)}")


def row_number(path: str | pathlib.Path, index: int) -> int:
    """The row number (module docstring: a JSONL file's blank lines count) of the `index`-th (0-based) problem
    `load_problems` reads from `path`, for a message naming it as its loader does ("FILE: row N"); the file is
    read again up to that row (only when a problem is refused)."""
    return next(itertools.islice(read_rows(path), index, None))[0]


def _jsonl_rows(path: pathlib.Path, digest=None) -> Iterator[tuple[int, dict]]:
    try:
        handle = path.open("rb")  # bytes: each line is decoded alone, so a bad one is named by its number
    except OSError as err:
        raise UserError(f"data file {str(path)!r} cannot be read: {err.strerror or err}") from err
    with handle:
        first = True  # the first row that is not blank: where a JSON document that is not JSON Lines shows
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM some editors write first
            except UnicodeDecodeError as err:
                raise UserError(f"{path}: row {number}: not UTF-8 text ({err.reason})") from err
            if not line.strip():
                continue
            if digest is not None:
                digest.update(raw.rstrip(b"\r\n") + b"\n")
            hint = _not_json_lines(line) if first else ""
            first = False
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: row {number}: not valid JSON ({err.msg}){hint}") from err
            except RecursionError as err:  # json's decoder recurses once per nested [ or {
                raise UserError(f"{path}: row {number}: not valid JSON (nested too deeply)") from err
            except ValueError as err:  # an integer past Python's 4,300 digits
                raise UserError(f"{path}: row {number}: not readable JSON ({err})") from err
            if not isinstance(row, dict):
                raise UserError(f"{path}: row {number}: expected a JSON object, got {type(row).__name__}{hint}")
            yield number, row


def _not_json_lines(line: str) -> str:
    """What a data file's first row says when it opens a JSON array or an object spread over lines (a `.json`
    dataset saved whole): the reader takes JSON Lines, one object per line, and said only "row 1: expected a
    JSON object, got list" or "not valid JSON (Expecting property name ...)"."""
    array = line.lstrip().startswith("[")
    if not array and line.strip() != "{":
        return ""
    return ("; a data file holds JSON Lines, one JSON object per line, not " + ("a JSON array" if array else
            "an object over several lines") + ": convert it, e.g. jq -c " + ("'.[]'" if array else ".")
            + " FILE.json > FILE.jsonl")


def _parquet_rows(path: pathlib.Path, digest=None) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise UserError(f"{path}: cannot read Parquet: {err}") from err
    try:
        rows = table.to_pylist()
    except UnicodeDecodeError as err:  # pyarrow reads a string column's bytes unchecked; Python decodes them
        raise UserError(_not_utf8_cell(path, table) or f"{path}: a string is not UTF-8 text ({err.reason})") from None
    for number, row in enumerate(rows, start=1):
        if digest is not None:
            digest.update(json.dumps(row, sort_keys=True, default=repr).encode() + b"\n")
        yield number, row


def _not_utf8_cell(path: pathlib.Path, table) -> str | None:
    """'PATH: row N: field F is not UTF-8 text (why)' for the first row of a string column whose bytes are not
    UTF-8, or None when that is in a nested column."""
    import pyarrow as pa

    bad = []
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for number, raw in enumerate(column.cast(pa.large_binary()).to_pylist(), start=1):
                try:
                    if raw is not None:
                        raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    bad.append((number, name, err.reason))
                    break
    if not bad:
        return None
    number, name, reason = min(bad)
    return f"{path}: row {number}: field {name!r} is not UTF-8 text ({reason})"


def text_field(row: dict, field: str, where: str, required: bool, numbers_ok: bool = False,
               mapped_from: str | None = None) -> str | None:
    """row[field] as a string; None when optional and absent; UserError otherwise. `mapped_from` names the
    problem field a data.fields mapping reads from this column, for the message."""
    name = f"{field!r}" + (f" (data.fields.{mapped_from})" if mapped_from and mapped_from != field else "")
    value = row.get(field)
    if value is None:
        if required:
            raise UserError(f"{where}: field {name} is missing" + ("" if field in row else _columns(row, mapped_from)))
        return None
    if numbers_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):  # JSON NaN, Infinity, 1e400; a Parquet NaN
            raise UserError(f"{where}: field {name} is {value}, not a finite number (a NaN, an infinity, or a "
                            f"number past a float's range such as 1e400)")
        value = str(value)
    if not isinstance(value, str):
        raise UserError(f"{where}: field {name} must be a string, got {type(value).__name__}")
    if bad := lone_surrogate(value):
        raise UserError(f"{where}: field {name} is not valid Unicode ({bad})")
    if required and not value.strip():
        raise UserError(f"{where}: field {name} is empty")
    return value


def lone_surrogate(value: str) -> str | None:
    """Where `value` holds a lone surrogate (JSON's "\\ud800", which no tokenizer can encode), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"a lone surrogate at character {err.start}"
    return None


def _columns(row: dict, mapped_from: str | None) -> str:
    """The columns a row has, for a missing field's message: another dataset's names (GSM8K's `question`) are
    mapped with data.fields, which the message names when the field is a problem field."""
    shown = ", ".join(repr(str(key)) for key in list(row)[:12]) + (", ..." if len(row) > 12 else "")
    mapping = f"; data.fields.{mapped_from} names the column that holds it" if mapped_from else ""
    return f" (the row's columns: {shown or 'none'}{mapping})"


def check_reference(task: str, prompt: str, answer: str, where: str) -> None:
    """UserError (`where`: the reference's file, row and field) for a reference the task's verifier can never
    score: the row would earn a reward of 0 for every answer, in training and in `r1jax score` alike."""
    checks = {"countdown": lambda: countdown.check_reference(prompt, answer),
              "math": lambda: math_answer.check_reference(answer),
              "arithmetic": lambda: arithmetic.check_reference(answer),
              "algebra": lambda: algebra.check_reference(answer)}
    problem = checks[task]() if task in checks else None
    if problem:
        raise UserError(f"{where}: {problem}")


def check_task(row: dict, where: str, default: str, field: str = "task") -> str:
    task = text_field(row, field, where, required=False, mapped_from="task") or default
    if task not in TASKS:
        raise UserError(f"{where}: field {field!r} = {task!r} is not a known task ({', '.join(sorted(TASKS))})")
    return task


def problem_from_row(row: dict, where: str, default_task: str = "math", *, need_solution: bool = False,
                     fields: dict | None = None, answer_format: str = "raw") -> dict:
    """A problem dict (task, prompt, answer, solution, difficulty 0) from one row, through the mapping.
    The solution is the row's solution column when present, else what the answer format derives ("")."""
    column = field_columns(fields)
    task = check_task(row, where, default_task, column["task"])
    prompt = text_field(row, column["prompt"], where, required=True, mapped_from="prompt")
    if task == "code":
        return _code_problem(row, where, column, prompt, need_solution)
    text = text_field(row, column["answer"], where, required=True, numbers_ok=answer_format == "raw",
                      mapped_from="answer")
    try:
        answer, derived = split_answer(text, answer_format)
    except ValueError as err:
        raise UserError(f"{where}: field {column['answer']!r} (data.answer_format={answer_format}): {err}") from None
    check_reference(task, prompt, answer, f"{where}: field {column['answer']!r}")
    # a derived worked solution in the R1 format, its reasoning thought and its reference answered, as the
    # tasks' own solutions are (rl.tasks.base.r1_solution): GSM8K's text before `####` alone taught an SFT
    # stage to reason and stop with no answer (accuracy and format rewards 0 on its own targets)
    derived = r1_solution([derived], answer) if derived else ""
    if derived and column["solution"] == column["answer"]:  # MATH's `solution` column is its answer: derive it
        return {"task": task, "prompt": prompt, "answer": answer, "solution": derived, "difficulty": 0}
    solution = text_field(row, column["solution"], where, required=need_solution and not derived,
                          mapped_from="solution") or derived
    return {"task": task, "prompt": prompt, "answer": answer, "solution": solution, "difficulty": 0}


def _code_problem(row: dict, where: str, column: dict, prompt: str, need_solution: bool) -> dict:
    tests = row.get(column["tests"])
    if tests is None:
        raise UserError(f"{where}: field {column['tests']!r} is missing (code rows need tests)")
    entry_point = check_entry_point(row.get(column["entry_point"]), where)  # (first: `max`'s tests name no program)
    encoded = encode_tests(tests, where, entry_point, column["tests"])
    problem = {"task": "code", "prompt": prompt,
               "answer": text_field(row, column["answer"], where, required=False, mapped_from="answer") or "",
               "solution": text_field(row, column["solution"], where, required=need_solution,
                                      mapped_from="solution") or "",
               "difficulty": 0, "tests": encoded}
    if entry_point is not None:
        problem["entry_point"] = entry_point
    return problem


def load_problems(path: str | pathlib.Path, default_task: str = "math", *, need_solution: bool = False,
                  fields: dict | None = None, answer_format: str = "raw") -> list[dict]:
    """Training rows as problem dicts: prompt, answer, task, solution ("" when absent), difficulty 0, read
    through the field mapping and answer format (module docstring). With `need_solution` (SFT data), a row
    without a worked solution is a UserError naming it. Each call gets dicts of its own; the file is read
    once while it stays as it was (`load_problems_hashed`)."""
    return load_problems_hashed(path, default_task, need_solution=need_solution, fields=fields,
                                answer_format=answer_format)[0]


# The files read lately, each parsed once while unchanged: a run's start-up reads its data file in the
# preflight, the data pipeline and the held-out check (2.6 s per 100,000 GSM8K rows each time). Key: the file
# (`_file_identity`) and how it is read; value: its problems and the SHA-256 of its rows.
_LOADED: dict[tuple, tuple[list[dict], str]] = {}
_LOADED_KEEP = 4


def load_problems_hashed(path: str | pathlib.Path, default_task: str = "math", *, need_solution: bool = False,
                         fields: dict | None = None, answer_format: str = "raw") -> tuple[list[dict], str]:
    """`load_problems` and the SHA-256 of the file's rows (read_rows' digest), from one read of the file."""
    identity = _file_identity(path)
    key = identity and identity + (default_task, need_solution, json.dumps(fields or {}, sort_keys=True),
                                   answer_format)
    if key not in _LOADED:
        digest = hashlib.sha256()
        problems = [problem_from_row(row, f"{path}: row {number}", default_task, need_solution=need_solution,
                                     fields=fields, answer_format=answer_format)
                    for number, row in read_rows(path, digest)]
        if not problems:
            raise UserError(f"data file {str(path)!r} has no rows")
        if key is None:  # a path open() refused but the rows were read from (not kept)
            return problems, digest.hexdigest()
        while len(_LOADED) >= _LOADED_KEEP:
            del _LOADED[next(iter(_LOADED))]
        _LOADED[key] = problems, digest.hexdigest()
    problems, sha256 = _LOADED[key]
    return [dict(p) for p in problems], sha256


def _file_identity(path) -> tuple | None:
    """The file's path and the SHA-256 of its bytes (a read without parsing: 0.1 s for 47 MB of JSONL rows; a
    size and modification time could miss a rewrite within the file system's clock tick)."""
    try:
        with open(path, "rb") as handle:
            return str(pathlib.Path(path).resolve()), hashlib.file_digest(handle, "sha256").hexdigest()
    except (OSError, ValueError):
        return None  # read_rows names what is wrong
