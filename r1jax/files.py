"""Files a kill must not leave half-written: run state rewritten in place (config.yaml, summary.json, metrics.jsonl
cut back on resume, the tokenizer saved beside every checkpoint, datasets)."""

from __future__ import annotations

import os
import pathlib


def write_atomically(path: str | os.PathLike, data: str | bytes) -> None:
    """`path` holds `data` whole, or what it held before: written beside it, then renamed over it (a rename
    within one directory is atomic on POSIX file systems)."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
            f.flush()
            os.fsync(f.fileno())  # the data on disk before the name points at it (a host crash, not only a kill)
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # and the rename
        finally:
            os.close(directory)
    finally:
        tmp.unlink(missing_ok=True)
