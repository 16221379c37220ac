"""Text to train a tokenizer on: the tasks' own prompts and worked solutions, or a user's file.

Every corpus starts with the prompt templates, which prefix every training sequence.
"""

from __future__ import annotations

import pathlib
from typing import Iterator, Mapping, Sequence

from r1jax.errors import UserError
from r1jax.model.tokenizer import (TEMPLATES, TokenizerConfig, TokenizerLike, load_tokenizer, read_text_lines,
                                   train_tokenizer)
from r1jax.rl.data.config import DataConfig
from r1jax.rl.data.records import SUFFIXES, lone_surrogate, read_rows
from r1jax.rl.tasks import get_task


def task_corpus(task_names: Sequence[str], problems_per_level: int = 400, seed: int = 0) -> Iterator[str]:
    """The templates, then prompt and solution of problems at every difficulty level of each task."""
    yield from TEMPLATES.values()
    for name in task_names:
        for level in get_task(name).levels:
            task = get_task(name, level)
            for index in range(problems_per_level):
                problem = task.generate(seed, index)
                yield problem.prompt
                yield problem.solution


def file_corpus(path: str | pathlib.Path, fields: Mapping[str, str] | None = None) -> Iterator[str]:
    """The templates, then the lines of a text file or the text fields of a data file (JSONL, JSON lines or
    Parquet: rl.data.records.SUFFIXES; prompt, answer, solution, completion: the columns `fields` maps them
    to, else their own names). A `.json` data file was read as text: its tokenizer learned JSON's syntax. Text
    that is not UTF-8, or a field holding a lone surrogate, is a UserError naming the file and the line or row."""
    yield from TEMPLATES.values()
    path = pathlib.Path(path)
    if path.suffix not in SUFFIXES:
        try:
            lines = read_text_lines(path)  # UserError naming the first line that is not UTF-8
        except OSError as err:  # missing, a directory, unreadable: as read_rows names a data file's
            what = "does not exist" if not path.exists() else "is not a file" if not path.is_file() else \
                f"cannot be read: {err.strerror or err}"
            raise UserError(f"data file {str(path)!r} {what}") from err
        yield from lines
        return
    for number, row in read_rows(path):  # a row that is not UTF-8: a UserError naming it
        for field in ("prompt", "answer", "solution", "completion"):
            column = (fields or {}).get(field, field)
            value = row.get(column)
            if isinstance(value, str):
                if bad := lone_surrogate(value):  # as rl.data.records.text_field refuses it for training
                    raise UserError(f"{path}: row {number}: field {column!r} is not valid Unicode ({bad})")
                yield value


def build_tokenizer(tokenizer: TokenizerConfig, data: DataConfig) -> TokenizerLike:
    """The tokenizer of a run: the one in `tokenizer.path` (Hugging Face tokenizer.json or r1jax
    tokenizer.model) when set, else a sentencepiece tokenizer trained on the run's data."""
    if tokenizer.path is not None:
        return load_tokenizer(tokenizer.path)
    corpus = file_corpus(data.path, data.fields) if data.path is not None else task_corpus(data.tasks, seed=data.seed)
    return train_tokenizer(corpus, tokenizer.vocab_size, tokenizer.model_type)
