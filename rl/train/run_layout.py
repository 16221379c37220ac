"""What a run directory holds (README "A run directory"), and a check that what is there is of the kind the run
writes: a file named `plots` (or a directory named `metrics.jsonl`) stopped a run with a traceback at its first
write there, after its training (FileExistsError at the end's plots), where the start now names it. One level
down the same holds for the entries whose names the run knows at its start: a directory named `plots/loss.png`
(IsADirectoryError at the end's plots), `datasets/<stage>.jsonl` (after a rejection_sampling stage sampled) or
`samples/<stage>-step<N>.jsonl` (at an evaluation), and a file named `checkpoints/tokenizer` (at the first
save). Checkpoint steps (Orbax replaces what is there), TensorBoard's event files (named by the time and host)
and the trees below are not looked at."""

from __future__ import annotations

import os
import pathlib
import re
from typing import Iterator, Sequence

from r1jax.errors import UserError
from r1jax.rl.train.config import StageConfig
from r1jax.rl.train.plots import PLOTS

RUN_DIRECTORIES = ("checkpoints", "tokenizer", "tensorboard", "plots", "samples", "datasets")
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
RUN_ENTRIES = RUN_DIRECTORIES + RUN_FILES


def dataset_path(run_dir: str | pathlib.Path, stage_name: str) -> pathlib.Path:
    """The samples a rejection_sampling stage keeps (rl.train.stage_rejection)."""
    return pathlib.Path(run_dir) / "datasets" / f"{stage_name}.jsonl"


def stats_path(dataset: str | pathlib.Path) -> pathlib.Path:
    """The statistics written beside a rejection_sampling stage's `dataset` (`NAME.jsonl` -> `NAME.stats.json`)."""
    return pathlib.Path(str(dataset)[:-len(".jsonl")] + ".stats.json")


def samples_name(stage_name: str, step: int) -> str:
    """An evaluation's samples, `samples/<name>.jsonl` (rl.train.held_out, rl.train.metrics.write_samples)."""
    return f"{stage_name}-step{step}"


def _known_entries(run_dir: pathlib.Path, stages: Sequence[StageConfig], plots: bool) -> Iterator[tuple[str, bool]]:
    """(name relative to `run_dir`, whether the run writes a directory there) of every entry the run writes
    under a name it knows at its start, the top level's first; of samples/ the ones there of a stage's name."""
    yield from ((name, name in RUN_DIRECTORIES) for name in RUN_ENTRIES)
    yield "checkpoints/tokenizer", True  # the tokenizer beside the checkpoints (rl.train.policy_io)
    if plots:
        yield from ((f"plots/{name}.png", False) for name in PLOTS)
    for stage in stages:
        if stage.kind == "rejection_sampling":
            dataset = dataset_path(run_dir, stage.name)
            yield from ((str(path.relative_to(run_dir)), False) for path in (dataset, stats_path(dataset)))
    if (run_dir / "samples").is_dir():  # one file per evaluation: a short listing
        steps = {re.escape(stage.name) + r"-step\d+\.jsonl" for stage in stages}  # samples_name's, any step
        for name in sorted(os.listdir(run_dir / "samples")):
            if any(re.fullmatch(pattern, name) for pattern in steps):
                yield f"samples/{name}", False


def check_run_entries(run_dir: pathlib.Path, stages: Sequence[StageConfig] = (),
                      plots: bool = False) -> None:
    """UserError naming the first entry of `run_dir` the run writes (RUN_ENTRIES; below them those named
    in the module docstring, for the config's `stages` and `plots`) that is not of the kind the run writes there
    (a dangling symlink, which the run cannot write through either, included)."""
    for name, directory in _known_entries(run_dir, stages, plots):
        path = run_dir / name
        if not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir() if directory else path.is_file():
            continue
        found = "a symlink to nothing" if not path.exists() else "a directory" if path.is_dir() else \
            "not a regular file or directory" if not path.is_file() else "a file"
        raise UserError(f"run directory {str(run_dir)!r}: {name!r} is {found}, where the run writes "
                        f"{'a directory' if directory else 'a file'}; move it out of the run directory")
