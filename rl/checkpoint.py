"""Orbax checkpoints that carry their own resolved config, so any command can open them unaided.

Layout: a checkpoint directory is an Orbax CheckpointManager root; each step `N/` holds the items
`config` (the resolved run config as JSON) and `params` (the policy's NNX state: parameters and routing
bias). Later items (optimizer state, reference params, RNG, data iterator) join as the trainer needs them.

A path given by a user may be a run directory (its `checkpoints/`), a checkpoint root (its latest step),
or one step directory (rl.checkpoint_paths: which step it names, and a read of it while a trainer saves it
again).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
import sys
from typing import Mapping

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from r1jax.errors import UserError, error_chain
from r1jax.files import check_checkpoint_path, storage_failure
from r1jax.model.decoder import Policy
from r1jax.model.factory import abstract_policy
from r1jax.model.tokenizer import TokenizerLike, is_tokenizer_dir, load_tokenizer
from r1jax.rl import checksums
from r1jax.rl.checkpoint_paths import read_latest, resolve
from r1jax.rl.config import Config, stored_config, to_dict
from r1jax.rl.failed_saves import (close_failed, drop_closed_loop_reports, quiet_failed_saves, save_threads,
                                   wait_for_writers)
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import abstract_sharded
from r1jax.sharding.rules import Rules

# What Orbax and tensorstore raise for a missing, truncated or mismatched item (KeyError: no such item;
# ValueError: unreadable data, bad JSON, a tree that differs from the target; OSError: missing files), also as
# the cause of the bare Exception Orbax wraps an array's failed read in (a data file of the item missing)
RESTORE_ERRORS = (KeyError, ValueError, OSError)


def restore_error(err: BaseException) -> BaseException | None:
    """The error itself, or the first in its chain of causes, when it is one of RESTORE_ERRORS; else None."""
    return next((link for link in error_chain(err) if isinstance(link, RESTORE_ERRORS)), None)


def _manager(root: pathlib.Path, items=("config", "params", checksums.ITEM), **options) -> ocp.CheckpointManager:
    """A manager of `root`. One that reads (read_only) skips every step's `metrics` item, which only the trainer's
    keep_best uses: Orbax reads them all as it starts, and one step's damaged metrics file stopped generate / eval /
    the exports of any other step with a JSONDecodeError traceback."""
    if options.get("read_only"):
        options.setdefault("lightweight_initialize", True)
    return ocp.CheckpointManager(root.absolute(), item_names=items, options=ocp.CheckpointManagerOptions(**options))


def save_policy(root: str | pathlib.Path, config: Config, policy: Policy, step: int = 0) -> pathlib.Path:
    """Write `policy` and `config` as step `step` under `root`; returns the step directory."""
    root = pathlib.Path(root)
    check_checkpoint_path(root.absolute(), "checkpoint")  # (a relative path in a directory that is not UTF-8)
    made, step_made = not root.exists(), not (root / str(step)).exists()
    quiet_failed_saves()
    before = save_threads()
    manager = None
    try:
        manager = _manager(root)
        state = nnx.to_pure_dict(nnx.state(policy))
        manager.save(step, args=ocp.args.Composite(**{
            "config": ocp.args.JsonSave(to_dict(config)), "params": ocp.args.StandardSave(state),
            checksums.ITEM: ocp.args.JsonSave(checksums.checksums({"params": state}))}))
        manager.wait_until_finished()
        manager.close()
    except BaseException as err:  # a stop too (Ctrl-C, SIGTERM under sigterm_interrupts): nothing left behind
        try:  # a second stop (Ctrl-C, a job's SIGTERM then more) in the wait still takes the step back
            close_failed(manager)
            wait_for_writers(before)  # else they write on into what is taken back (and die at exit on a traceback)
        finally:
            _take_back(root, step, made, step_made)
        if isinstance(err, OSError):  # a parent that is a file, a read-only or missing mount, a full disk
            raise UserError(f"checkpoint {str(root)!r} cannot be written: {err.strerror or err}"
                            f"{f' ({err.filename!r})' if err.filename else ''}") from None
        refused = storage_failure(err)  # tensorstore's (a ValueError) for a disk that filled mid-write
        if refused:
            raise UserError(f"checkpoint {str(root)!r} cannot be written: {refused}") from None
        raise
    return root / str(step)


def _take_back(root: pathlib.Path, step: int, made: bool, step_made: bool) -> None:
    """What a failed or stopped save left: its uncommitted step (or the step it committed as it stopped), and
    `root` itself when the save made it (it then held a partial step that refused the next try: "exists and is
    not empty; refusing to overwrite")."""
    shutil.rmtree(root / f"{step}.orbax-checkpoint-tmp", ignore_errors=True)
    if step_made:
        shutil.rmtree(root / str(step), ignore_errors=True)
    if made:
        shutil.rmtree(root, ignore_errors=True)


STRUCTURE_CHANGED = "tree structures do not match"  # Orbax's words for a restore target of another structure
# and for an array of another shape (a restore target of the same structure, other sizes: hidden_size, experts)
SHAPE_CHANGED = re.compile(r"Requested shape: (\([\d, ]*\)) is not compatible with the stored shape: (\([\d, ]*\))")


RESUMED_ANOTHER = ("this run builds (a setting that shapes it changed since the save, e.g. optimizer.grad_clip_norm "
                   "between null and a number for the optimizer's state; the config's changes are listed above): "
                   "resume with the saved run's settings")


def restore_items(manager: ocp.CheckpointManager, step_dir: pathlib.Path,
                  items: Mapping[str, ocp.args.CheckpointArgs], structure: str = RESUMED_ANOTHER):
    """`manager.restore` of `items` from the step in `step_dir`; an item that is missing or cannot be read
    is a UserError naming the step directory and the item; one saved with another tree than asked for, that
    and `structure` (what the tree asked for is built from, and what to do)."""
    missing = [name for name in items if not (step_dir / name).is_dir()]
    if missing:
        present = sorted(p.name for p in step_dir.iterdir() if p.is_dir()) if step_dir.is_dir() else []
        raise UserError(f"checkpoint {step_dir} is incomplete: it lacks {_items(missing)} (it holds "
                        f"{_items(present) if present else 'no items'})")
    drop_closed_loop_reports()
    step = int(step_dir.name)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as err:  # noqa: BLE001 - anything else goes on up (restore_error)
        culprit, cause = list(items), restore_error(err)
        if cause is None:
            raise
        if len(items) > 1:  # name the item that fails alone (a failed restore does not say which one did)
            for name, args in items.items():
                try:
                    manager.restore(step, args=ocp.args.Composite(**{name: args}))
                except Exception as item_err:  # noqa: BLE001
                    if restore_error(item_err) is not None:
                        culprit, cause = [name], restore_error(item_err)
                        break
        shapes = SHAPE_CHANGED.search(str(cause))
        if STRUCTURE_CHANGED in str(cause) or shapes:  # intact: the run asks for another tree than the one saved
            other = (f"other shapes (an array stored {shapes.group(2)}, asked for as {shapes.group(1)})" if shapes
                     else "another structure")
            raise UserError(f"checkpoint {step_dir}: {_items(culprit)} was saved with {other} than "
                            f"{structure}") from err
        raise UserError(f"checkpoint {step_dir} is damaged: {_items(culprit)} cannot be read "
                        f"({_reason(cause)})") from err
    trees = {name: restored[name] for name, args in items.items() if isinstance(args, ocp.args.StandardRestore)}
    damaged = checksums.damaged_leaves(step_dir, trees)
    if damaged:  # bits flipped in storage: garbage weights were restored without a word
        name, leaves = next(iter(damaged.items()))
        if name == checksums.ITEM:
            what = f"holds no checksums of {_checksummed(leaves, trees)} (every save writes them)" if leaves else \
                "cannot be read (not the JSON a save writes)"
            raise UserError(f"checkpoint {step_dir} is damaged: {_items([name])} {what}")
        raise UserError(f"checkpoint {step_dir} is damaged: {_items([name])} does not hold what was saved (its "
                        f"checksum differs for {len(leaves)} array(s): {', '.join(leaves[:3])}"
                        f"{' ...' if len(leaves) > 3 else ''}); restore another step or copy it again")
    return restored


def _checksummed(names, trees) -> str:
    """Trees (`_items`) or arrays ("params['w']", ...: at most three named) a checksums item lacks."""
    if all(name in trees for name in names):
        return _items(names)
    return f"{len(names)} array(s): {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"


def _items(names) -> str:
    return ("the item " if len(names) == 1 else "the items ") + ", ".join(repr(n) for n in names)


def _reason(err: Exception) -> str:
    """The first line of an Orbax / tensorstore error, without the tensorstore spec it appends."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0].split(" [tensorstore_spec")[0]
    return f"{type(err).__name__}: {text if len(text) <= 600 else text[:600] + ' ...'}"


def load_config(path: str | pathlib.Path) -> Config:
    root, step = resolve(path)
    with _manager(root, read_only=True) as manager:
        restored = restore_items(manager, root / str(step), {"config": ocp.args.JsonRestore()})
    where = f"checkpoint {root / str(step)}"
    try:
        return stored_config(restored.config, source=f"{where} config")
    except UserError as err:  # a stored config edited by hand (or by another version): name the checkpoint
        if where in str(err):
            raise
        raise UserError(f"{where}: its stored config: {err}") from None


def load_policy(path: str | pathlib.Path, mesh: Mesh | None = None,
                rules: Rules | None = None) -> tuple[Config, Policy]:
    """The checkpoint's config and policy, restored directly into the mesh's shards when given one, else onto
    this process's first device (the layout it was saved in may span devices this process does not have)."""
    config = load_config(path)
    root, step = resolve(path)
    graphdef, abstract_state = nnx.split(abstract_policy(config.model))
    if mesh is None:
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), abstract_state)
    else:
        target = abstract_sharded(abstract_state, mesh, rules)
    layers = config.model.num_hidden_layers
    with _manager(root, read_only=True) as manager:
        restored = restore_items(manager, root / str(step),
                                 {"params": ocp.args.StandardRestore(nnx.to_pure_dict(target))},
                                 f"its own stored config builds (a {config.model.family} model of {layers} "
                                 f"layer{'s' * (layers != 1)}): its config item is not the one saved with these "
                                 "weights (copied from another checkpoint, or edited)")
    nnx.replace_by_pure_dict(abstract_state, restored.params)
    return config, nnx.merge(graphdef, abstract_state)


def find_tokenizer(path: str | pathlib.Path, vocab_size: int | None = None) -> TokenizerLike | None:
    """The tokenizer a checkpoint carries, or None: a `tokenizer/` directory (Hugging Face tokenizer.json or
    r1jax tokenizer.model) in the step or beside the steps (the trainer's and `r1jax import-hf`'s copy); for a
    trainer's checkpoint in a run directory, also the run directory's own (`RUN/tokenizer` beside
    `RUN/checkpoints`, as every version of the trainer writes it). A `tokenizer/` beside any other checkpoint
    root is not its: `r1jax init` writes none, and the directory above the root may hold anything (another
    run's tokenizer beside `r1jax init runs/init`). With the model's `vocab_size`: one with more pieces (a copy of
    another model's) is a UserError."""
    root, step = resolve(path)
    candidates = [root / str(step) / "tokenizer", root / "tokenizer"]
    if _in_run_directory(root, step):
        candidates.append(root.parent / "tokenizer")
    for candidate in candidates:
        if is_tokenizer_dir(candidate):
            tokenizer = load_tokenizer(candidate)
            if vocab_size is not None and tokenizer.vocab_size > vocab_size:  # ids past the embedding's rows
                raise UserError(f"checkpoint {root / str(step)}: its tokenizer {candidate} has {tokenizer.vocab_size} "
                                f"pieces, more than the model's vocab_size {vocab_size} (a tokenizer of another "
                                "model?; an export takes the right one as --tokenizer DIR)")
            return tokenizer
    return None


def _in_run_directory(root: pathlib.Path, step: int) -> bool:
    """Whether `root` is a run directory's `checkpoints/` that the trainer wrote."""
    return root.name == "checkpoints" and _written_by_trainer(root, step)


def _written_by_trainer(root: pathlib.Path, step: int) -> bool:
    return (root / str(step) / "meta").is_dir()  # r1jax init and import-hf write no `meta`


def data_source(path: str | pathlib.Path) -> dict | None:
    """The fingerprint of the data the trainer's checkpoint was reading when saved (its stage's file: path, rows,
    SHA-256; rl.data.pipeline.read_source), or None (no trainer's checkpoint, or a stage without one)."""
    root, step = resolve(path)
    if not _written_by_trainer(root, step):
        return None
    with _manager(root, ("meta",), read_only=True) as manager:
        meta = restore_items(manager, root / str(step), {"meta": ocp.args.JsonRestore()}).meta
    return ((meta or {}).get("data_state") or {}).get("source")


def trained(path: str | pathlib.Path) -> bool:
    """Whether the checkpoint is the trainer's (it trained on its config's data), not weights that `r1jax init`
    or `import-hf` wrote, which trained on nothing: their config's data section is the default's."""
    return _written_by_trainer(*resolve(path))


def inference_mesh(sharding: ShardingConfig, model, devices: list | None = None) -> Mesh:
    """The checkpoint's mesh when the devices present (default: all) make it and its weights split over it; else
    fsdp over the most of them the weights split over, its rules kept (said on stderr): a run trained with fixed
    axes (a slice's `expert: 16`, `data: 2`) or on another device count (hidden size 32 on 3 devices) is sampled,
    evaluated and exported on any host, where generate and eval take no sharding to change."""
    devices = list(jax.devices() if devices is None else devices)
    state = nnx.split(abstract_policy(model))[1]

    def fitting(candidate: ShardingConfig, on: list) -> Mesh:
        mesh = build_mesh(candidate, on)
        abstract_sharded(state, mesh, candidate.logical_rules())  # a weight that does not split: UserError
        return mesh

    try:
        return fitting(sharding, devices)
    except UserError as err:
        reason = str(err).removesuffix("; change the mesh or sharding.rules")  # advice for training, not here
    flat = dataclasses.replace(sharding, data=1, fsdp=-1, expert=1, tensor=1)
    # one process's mesh may leave out devices; a mesh over several processes must hold every device
    for count in range(len(devices), 0, -1) if jax.process_count() == 1 else [len(devices)]:
        try:
            mesh = fitting(flat, devices[:count])
        except UserError:
            continue
        where = "every device's fsdp axis" if count == len(devices) else \
            f"fsdp={count} ({count} of the {len(devices)} devices: the most the weights split over)"
        print(f"{reason}: loading on {where} instead", file=sys.stderr, flush=True)
        return mesh
    raise UserError(f"{reason}; nor do the weights split over fsdp={len(devices)}: run on a device count that "
                    "divides the model's sizes (r1jax --cpu-devices N on CPUs)")


def open_for_inference(path: str | pathlib.Path):
    """(config, policy on the config's mesh or, where the devices present cannot make it, an fsdp mesh of them;
    mesh, rules, tokenizer or None) for generate/eval, all of one step (`read_latest`)."""
    return read_latest(path, open_step_for_inference)


def open_step_for_inference(path: pathlib.Path):
    """`open_for_inference` of the step directory `path`, read once."""
    config = load_config(path)
    mesh = inference_mesh(config.sharding, config.model)
    rules = config.sharding.logical_rules()
    config, policy = load_policy(path, mesh, rules)
    return config, policy, mesh, rules, find_tokenizer(path, config.model.vocab_size)
