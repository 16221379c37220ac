"""What a run directory holds (README "A run directory"), and a check that what is there is of the kind the run
writes: a file named `plots` (or a directory named `metrics.jsonl`) stopped a run with a traceback at its first
write there, after its training (FileExistsError at the end's plots), where the start now names it."""

from __future__ import annotations

import pathlib

from r1jax.errors import UserError

RUN_DIRECTORIES = ("checkpoints", "tokenizer", "tensorboard", "plots", "samples", "datasets")
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
RUN_ENTRIES = RUN_DIRECTORIES + RUN_FILES


def check_run_entries(run_dir: pathlib.Path) -> None:
    """UserError naming the first entry of `run_dir` (RUN_ENTRIES) that is not of the kind the run writes there
    (a dangling symlink, which the run cannot write through either, included)."""
    for name in RUN_ENTRIES:
        path = run_dir / name
        if not (path.exists() or path.is_symlink()):
            continue
        wanted = "a directory" if name in RUN_DIRECTORIES else "a file"
        if path.is_dir() if name in RUN_DIRECTORIES else path.is_file():
            continue
        found = "a symlink to nothing" if not path.exists() else "a directory" if path.is_dir() else \
            "not a regular file or directory" if not path.is_file() else "a file"
        raise UserError(f"run directory {str(run_dir)!r}: {name!r} is {found}, where the run writes {wanted}; move "
                        "it out of the run directory")
