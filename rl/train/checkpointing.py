"""Trainer checkpoints: everything a bit-exact resume needs, saved asynchronously with Orbax.

Each step directory holds `config` and `meta` (JSON: stage, steps, RNG key data, data-iterator state, pool
counters, eval metrics) plus one PyTree item per state tree (`params`, `opt_state`, `ref_params`, ...).
Orbax writes a step into a temporary directory and renames it on commit, so a process killed mid-save leaves
no step that restore would load half-written; restore only ever sees committed steps.

Retention: the latest `keep` steps plus the best `keep_best` by evaluation accuracy (`eval/pass@1`); a step that
a reader (export, eval, generate) holds is deleted by a later save instead (rl.step_leases).

Saving a step that exists (a stage's end saved again after a stop in its last step; a stage of no steps) moves
the committed copy aside as `N.previous` (rl.checkpoint_paths.PREVIOUS_SUFFIX) and drops it only once the new `N` is
committed: deleting it first left a kill in the new save's window with no copy of the step, and under
`keep: 1` no checkpoint at all. Opening the directory puts back a `N.previous` whose `N` never committed
(and drops one whose `N` did). Process 0 renames and deletes, as Orbax's own deletes do; every process waits
for it at a barrier, then reloads the manager's list of steps from the directory.

A resume opens the latest step: if it lacks an item or an item cannot be read, that is a UserError naming
the step directory and the item (rl.checkpoint.restore_items), never a silent fall-back to an older step.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import shutil
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from r1jax.errors import UserError
from r1jax.rl import checksums
from r1jax.rl.checkpoint import restore_items
from r1jax.rl.checkpoint_paths import PREVIOUS_SUFFIX, previous_copies
from r1jax.rl.failed_saves import close_failed, quiet_failed_saves, save_threads, wait_for_writers
from r1jax.rl.step_leases import LeaseRespectingDeleter
from r1jax.rl.config import Config, stored_config, to_dict
from r1jax.sharding import distributed

BEST_METRIC = "eval/pass@1"
_SYNCS = itertools.count()  # barrier names: every process opens and saves in the same order


class TrainCheckpointer:
    def __init__(self, root: str | pathlib.Path, keep: int = 3, keep_best: int = 1, async_save: bool = True):
        self.root = pathlib.Path(root).absolute()
        self._threads_before = save_threads()  # (the writers a failed save leaves are the others: close)
        policies = [checkpoint_managers.LatestN(n=keep)]
        if keep_best:
            policies.append(checkpoint_managers.BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=keep_best,
                                                      keep_checkpoints_without_metrics=False))
        # best_fn makes Orbax write each step's metrics beside it and read them back when a resumed run opens
        # the directory: without it the scores lived in memory only, and after a resume BestN saw none and
        # LatestN deleted the best step (retention is still the policies': best_fn sets no policy of its own)
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save, best_fn=(lambda m: m[BEST_METRIC]) if keep_best else None,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies))
        try:
            self.manager = ocp.CheckpointManager(self.root, options=options)
        except ValueError:  # (json's JSONDecodeError) Orbax reads back every step's metrics as it opens the root
            damaged = _unreadable_metrics(self.root)
            if damaged is None:
                raise
            raise UserError(f"checkpoint metrics {damaged} is not JSON (a damaged file?): a run reads every step's to "
                            f"keep the best ones (checkpoint.keep_best); restore it, or delete {damaged.parent} (that "
                            "step then counts as one without an evaluation) and run again") from None
        if _is_primary():  # (Orbax's deletes are process 0's) a step a reader holds is deleted by a later save
            self.manager._checkpoint_deleter = LeaseRespectingDeleter(self.manager._checkpoint_deleter, self.root)
        self._replacing = False  # a re-save's old copy is aside until the new one commits
        self._settle_previous_copies()
        quiet_failed_saves()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, config: Config, trees: Mapping[str, Any], meta: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None) -> None:
        """Start an asynchronous save of `trees` (pure PyTrees of arrays) with `config` and `meta`. A step that
        exists is replaced (module docstring: its old copy stays aside until the new one commits): a stop in a
        stage's last step saves that step unfinished, and the resumed run saves it again as the stage's end."""
        items = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()}
        items["config"] = ocp.args.JsonSave(to_dict(config))
        items["meta"] = ocp.args.JsonSave(dict(meta))
        items[checksums.ITEM] = ocp.args.JsonSave(checksums.checksums(trees))  # checked on restore
        metrics = dict(metrics) if metrics and BEST_METRIC in metrics else None
        if self._replacing or step in self.manager.all_steps():
            self.manager.wait_until_finished()  # listed while still in flight: moving it mid-write breaks it
            self._settle_previous_copies()
            if step in self.manager.all_steps():
                self._move_aside(step)
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def _move_aside(self, step: int) -> None:
        self._change_on_primary(lambda: (self.root / str(step)).rename(self.root / f"{step}{PREVIOUS_SUFFIX}"),
                                f"moving step {step}'s old copy aside")
        self._replacing = True

    def _settle_previous_copies(self) -> None:
        """With no save in flight: drop each step's aside copy whose new copy committed, put back the others."""
        def settle() -> None:
            self.manager.reload()
            committed = set(self.manager.all_steps())
            for step, copy in previous_copies(self.root).items():
                if step in committed:
                    shutil.rmtree(copy)
                else:  # the new save never committed (killed, or failed): the old copy is the step
                    copy.rename(self.root / str(step))

        self._change_on_primary(settle, "dropping or putting back re-saved steps' old copies")
        self._replacing = False

    def _change_on_primary(self, change, what: str) -> None:
        """Process 0 makes `change` to the directory while no process reads it; then every process lists the
        steps again, and none goes on before all have (a later change must not move a step another process is
        still reading: that failed its listing with FileNotFoundError)."""
        sync = f"checkpoint-aside-{next(_SYNCS)}"
        distributed.barrier(f"{sync}-idle", f"{what} (its start)")
        if _is_primary():
            change()
        distributed.barrier(f"{sync}-changed", f"{what} (process 0 does it)", timeout_s=3600)
        self.manager.reload()
        distributed.barrier(f"{sync}-listed", f"{what} (every process lists the steps again)")

    def restore_config_and_meta(self, step: int) -> tuple[Config, dict]:
        """The step's config and meta; a missing or unreadable item is a UserError naming the step."""
        restored = restore_items(self.manager, self.root / str(step),
                                 {"config": ocp.args.JsonRestore(), "meta": ocp.args.JsonRestore()})
        config = stored_config(restored.config, source=f"checkpoint {self.root / str(step)} config")
        return config, dict(restored.meta)

    def restore_trees(self, step: int, targets: Mapping[str, Any]) -> dict[str, Any]:
        """Restore the named trees into the shapes, dtypes and shardings of `targets` (abstract arrays); a
        missing or unreadable tree is a UserError naming the step directory and the tree."""
        args = {name: ocp.args.StandardRestore(target) for name, target in targets.items()}
        return dict(restore_items(self.manager, self.root / str(step), args))

    def has_item(self, step: int, name: str) -> bool:
        """Did step `step` save the item `name` (a tree such as `ref`)?"""
        return (self.root / str(step) / name).is_dir()

    def raise_failed_save(self) -> None:
        """Raise the error of an asynchronous save that has failed (a disk that filled under it), without waiting
        for one still running. Orbax holds that error until the next save or the end: the steps trained between
        a failed save and the next one were trained for nothing (the run stopped there with no record of them);
        a step boundary calls this, so the run stops at the step after the failure, its last whole checkpoint
        intact."""
        if not self.manager.is_saving_in_progress():
            self.manager.wait_until_finished()  # returns at once; raises a finished save's error

    def wait(self) -> None:
        self.manager.wait_until_finished()
        if self._replacing:
            self._settle_previous_copies()

    def close(self) -> None:
        """Wait for the save in flight and close the manager. A save that failed (a full disk) raises here, after
        the manager is closed whole and its writer threads have ended (rl.failed_saves): the manager was left
        open, its threads wrote on into the partial step, and the process could hang at exit."""
        try:
            self.wait()
        except BaseException:
            close_failed(self.manager)
            wait_for_writers(self._threads_before)
            raise
        self.manager.close()


def _unreadable_metrics(root: pathlib.Path) -> pathlib.Path | None:
    """The first step's `metrics/metrics` file under `root` that is not JSON (None: every one is)."""
    for path in sorted(root.glob("*/metrics/metrics")):
        try:
            json.loads(path.read_bytes())
        except (ValueError, OSError):
            return path
    return None


def _is_primary() -> bool:
    """Whether this process does the directory's renames and deletes (Orbax's primary host: process 0)."""
    return jax.process_index() == 0


def check_compatible(saved: Config, current: Config, where: str, same_tokenizer: bool = False) -> None:
    """Fail before compilation when a checkpoint's architecture differs from the run's, naming the fields;
    `same_tokenizer` (a resume): also when the tokenizer settings differ (TOKENIZER_FIELDS), as the run keeps
    the tokenizer it was built with (they were logged as changed, and ignored)."""
    diffs = [f"model.{f.name}: checkpoint {getattr(saved.model, f.name)!r} vs config "
             f"{getattr(current.model, f.name)!r}"
             for f in dataclasses.fields(saved.model)
             if f.name not in _RUNTIME_FIELDS and getattr(saved.model, f.name) != getattr(current.model, f.name)]
    if same_tokenizer:
        diffs += [f"tokenizer.{f}: checkpoint {getattr(saved.tokenizer, f)!r} vs config "
                  f"{getattr(current.tokenizer, f)!r} (the run keeps the tokenizer it was built with)"
                  for f in TOKENIZER_FIELDS if getattr(saved.tokenizer, f) != getattr(current.tokenizer, f)]
    if diffs:
        raise UserError(f"checkpoint {where} does not match the config: " + "; ".join(diffs))


# The tokenizer settings that say which tokenizer a run has (not how prompts are templated)
TOKENIZER_FIELDS = ("path", "vocab_size", "model_type")


def tokenizer_settings(config: Config) -> tuple:
    """What a run's tokenizer is built from (rl.train.policy_io.run_tokenizer): TOKENIZER_FIELDS, the first
    stage's init_from (whose tokenizer it carries) and the data it is trained on."""
    first = config.stages[0].init_from if config.stages else None
    return (*(getattr(config.tokenizer, f) for f in TOKENIZER_FIELDS), first, config.data)


def config_changes(saved: Config, current: Config) -> list[str]:
    """Each setting where `current` differs from a checkpoint's `saved` config, as 'key: saved -> current'
    (lists by index, e.g. 'stages.1.steps: 100 -> 200'): what a resume runs under that the saved run did not."""
    def flat(node: Any, prefix: str) -> dict[str, Any]:
        if isinstance(node, dict):
            items = node.items()
        elif isinstance(node, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in node):
            items = enumerate(node)
        else:
            return {prefix: node}
        return {key: value for k, v in items for key, value in flat(v, f"{prefix}.{k}" if prefix else str(k)).items()}
    before, after = flat(to_dict(saved), ""), flat(to_dict(current), "")
    missing = object()
    return [f"{key}: {before.get(key, missing)!r} -> {after.get(key, missing)!r}".replace(repr(missing), "absent")
            for key in sorted(before.keys() | after.keys(), key=lambda k: (k.split(".")[0], k))
            if before.get(key, missing) != after.get(key, missing)]


# Fields that change how the model runs, not what its parameters are: a checkpoint may resume under others.
_RUNTIME_FIELDS = {"compute_dtype", "moe_impl", "moe_block_size", "moe_decode_used_blocks", "moe_decode_impl", "remat",
                   "scan_layers", "decode_attention",
                   "routing_bias_update_rate"}
