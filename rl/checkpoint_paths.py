"""Which step directory a path names (a run directory, a checkpoint root, a step), and reading it while a trainer
saves.

A trainer that saves a step again first moves the committed copy aside as `N.previous` (a name neither Orbax
nor `resolve` takes for a step) and drops it once the new copy is committed (rl.train.checkpointing); a kill
in between leaves only `N.previous`, which the next run's start puts back. A read of N (named, or the latest
step) meanwhile waits for the new N while a trainer holds the run directory, and names a killed run's copy aside
at once (`_saved_again`).
"""

from __future__ import annotations

import pathlib
import time
from typing import Callable, TypeVar

from r1jax.errors import UserError
from r1jax.files import check_checkpoint_path, lock_probe
from r1jax.rl.step_leases import StepGone, StepSavedAgain, held

T = TypeVar("T")
PREVIOUS_SUFFIX = ".previous"  # step N's committed copy while N is saved again: N.previous


def _steps(path: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and p.is_dir())


def previous_copies(root: pathlib.Path) -> dict[int, pathlib.Path]:
    """Step -> its copy that a re-save moved aside (`N.previous`) and has not dropped or put back yet."""
    if not root.is_dir():
        return {}
    return {int(p.name[:-len(PREVIOUS_SUFFIX)]): p for p in root.iterdir()
            if p.name.endswith(PREVIOUS_SUFFIX) and p.name[:-len(PREVIOUS_SUFFIX)].isdigit() and p.is_dir()}


def resolve(path: str | pathlib.Path) -> tuple[pathlib.Path, int]:
    """(checkpoint root, step) for a run directory, a checkpoint root (its latest step) or a step directory.

    The latest step is the highest-numbered step directory (Orbax renames a step into place only once it is
    complete); if it is damaged, opening it fails naming it rather than falling back to an older step. A copy
    aside (`N.previous`) newer than every step is the latest being saved again: `_saved_again`."""
    path = pathlib.Path(path)
    if not path.exists() and not _saved_again(path, f"checkpoint {str(path)!r} does not exist"):
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    check_checkpoint_path(path.absolute(), "checkpoint")
    if not path.is_dir():
        raise UserError(f"checkpoint {str(path)!r} is a file, not a checkpoint directory")
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    aside = previous_copies(root)
    if aside and max(aside) > max(_steps(root), default=-1):  # (not an older step: the latest is asked for)
        _saved_again(root / str(max(aside)), f"checkpoint {str(path)!r}")
    if root != path:
        if not _steps(root):
            raise UserError(f"run directory {str(path)!r} has no checkpoint yet ({root} holds no step directory)")
        path = root
    steps = _steps(path)
    if path.name.isdigit() and not steps:
        return path.parent, int(path.name)
    if not steps:
        weights, config = any(path.glob("*.safetensors")), (path / "config.json").is_file()
        raise UserError(f"checkpoint {str(path)!r} holds no checkpoint step (no numbered step directory)"
                        + ("; it looks like a Hugging Face checkpoint: convert it with `r1jax import-hf`"
                           if weights and config else
                           "; it holds *.safetensors but no config.json, which a Hugging Face checkpoint needs "
                           "(an incomplete download?)" if weights else
                           "; it looks like a Hugging Face checkpoint with PyTorch *.bin weights: r1jax reads "
                           "*.safetensors only (convert .bin first, then `r1jax import-hf`)"
                           if config and any(path.glob("*.bin")) else ""))
    return path, steps[-1]


RESAVE_WAIT_S = 10.0  # how long a read of step N waits for a trainer's re-save of N to put its new copy in place


def _saved_again(step_dir: pathlib.Path, said: str) -> bool:
    """Whether the step directory `step_dir` (N), absent, is a step saved again: N moved aside as `N.previous`
    and the new N not yet renamed into place. While a trainer holds the run directory (its lock, beside the
    checkpoint root: r1jax.files.lock_probe, probed again at each poll) this waits (at most RESAVE_WAIT_S,
    polling) for the new N: true once it stands. A re-save that outlasts the wait, or a copy aside that no
    trainer will finish (a killed run's: its next start puts it back, rl.train.checkpointing), is a UserError
    at once, `said` and the copy aside."""
    aside = step_dir.with_name(step_dir.name + PREVIOUS_SUFFIX)
    if not step_dir.name.isdigit() or not aside.is_dir():
        return False
    # the run directory, above the checkpoint root as named (a relative `3` is in it; a RUN/checkpoints that links
    # elsewhere) and above its real path (a root named through a link to RUN/checkpoints: no lock was found)
    run_dirs = dict.fromkeys((step_dir.absolute().parent.parent, step_dir.parent.resolve().parent))
    probes = [lock_probe(run_dir) for run_dir in run_dirs]
    deadline = time.monotonic() + RESAVE_WAIT_S
    while any(probes) and not step_dir.exists() and aside.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # a trainer killed meanwhile: its copy aside is named now, not after the wait
        probes = [lock_probe(run_dir) for run_dir in run_dirs]
    if step_dir.exists() or not aside.exists():  # (put back, or dropped once the new copy committed)
        return step_dir.exists()
    if True not in probes and any(probes):  # (waited as if held: a live re-save is not to be cut short)
        raise UserError(f"{said}: step {step_dir.name} is not in place after {RESAVE_WAIT_S:g} s, its previous copy in "
                        f"{aside}; whether a trainer saves it again cannot be told "
                        f"({[p for p in probes if p][0]}): read again later; if no trainer runs there, resuming the "
                        "run puts it back")
    if any(probes):
        raise UserError(f"{said}: step {step_dir.name} is being saved again (not in place after {RESAVE_WAIT_S:g} s), "
                        f"its previous copy in {aside}: read again once the trainer's save of it ends (a large model's "
                        "outlasts the wait)")
    raise UserError(f"{said}: a re-save of step {step_dir.name} was interrupted and left its previous copy in "
                    f"{aside}: resuming the run puts it back (or rename it to {step_dir})")


LIVE_READ_TRIES = 4  # reads of a run directory's latest step while its trainer saves and rotates steps


def read_latest(path: str | pathlib.Path, read: Callable[[pathlib.Path], T]) -> T:
    """`read(step directory)` of the step `path` names (a run directory or checkpoint root: its latest). A trainer
    may save and rotate steps there meanwhile (`checkpoint.keep`): the read holds its step (rl.step_leases), so
    the trainer's pruning leaves it to a later save (a step saved again while read, moved aside for its new copy,
    is read again: the read by path may have mixed the copies); where no lease can be taken (a file system
    without flock), a read that fails while the steps listed change is tried again on the new latest step.
    Either way inspecting a live run reads one whole step, or fails naming real damage. (Read once and unheld,
    a live run's step could vanish under generate or eval: a traceback, or a healthy run reported damaged or
    incomplete.)"""
    for attempt in range(LIVE_READ_TRIES):
        root, step = resolve(path)
        listed = _steps(root)
        try:
            with held(root, step) as lease:
                try:
                    value = read(root / str(step))
                except (UserError, OSError):
                    if lease.saved_again():  # its failure may be the mix of two copies: read the new one
                        raise StepSavedAgain(f"step {step} was saved again while it was read") from None
                    raise
                if lease.saved_again():
                    raise StepSavedAgain(f"step {step} was saved again while it was read")
                return value
        except (UserError, OSError, StepGone) as err:
            named = pathlib.Path(path).absolute() == (root / str(step)).absolute()  # a step given: no other
            if isinstance(err, StepGone) and named and not isinstance(err, StepSavedAgain) \
                    and not (root / f"{step}{PREVIOUS_SUFFIX}").is_dir():  # moved aside to be saved again: wait
                raise UserError(f"checkpoint {root / str(step)} was deleted (a trainer rotating its steps?)") from None
            if not isinstance(err, StepGone) and (named or not root.is_dir() or _steps(root) == listed):
                raise
            if attempt + 1 == LIVE_READ_TRIES:
                raise UserError(f"checkpoint {root}: its steps changed under each of {LIVE_READ_TRIES} reads (a "
                                f"trainer saving and rotating them?), the last of step {step}: {err}") from err
    raise AssertionError("unreachable")
