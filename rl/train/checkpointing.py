"""Trainer checkpoints: everything a bit-exact resume needs, saved asynchronously with Orbax.

Each step directory holds `config` and `meta` (JSON: stage, steps, RNG key data, data-iterator state, pool
counters, eval metrics) plus one PyTree item per state tree (`params`, `opt_state`, `ref_params`, ...).
Orbax writes a step into a temporary directory and renames it on commit, so a process killed mid-save leaves
no step that restore would load half-written; restore only ever sees committed steps.

Retention: the latest `keep` steps plus the best `keep_best` by evaluation accuracy (`eval/pass@1`).

A resume opens the latest step: if it lacks an item or an item cannot be read, that is a UserError naming
the step directory and the item (rl.checkpoint.restore_items), never a silent fall-back to an older step.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from r1jax.errors import UserError
from r1jax.rl.checkpoint import restore_items
from r1jax.rl.config import Config, config_from_dicts, to_dict

BEST_METRIC = "eval/pass@1"


class TrainCheckpointer:
    def __init__(self, root: str | pathlib.Path, keep: int = 3, keep_best: int = 1, async_save: bool = True):
        self.root = pathlib.Path(root).absolute()
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
        self.manager = ocp.CheckpointManager(self.root, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, config: Config, trees: Mapping[str, Any], meta: Mapping[str, Any],
             metrics: Mapping[str, float] | None = None) -> None:
        """Start an asynchronous save of `trees` (pure PyTrees of arrays) with `config` and `meta`. A step that
        exists is replaced: a stop in a stage's last step saves that step unfinished, and the resumed run saves
        it again as the stage's end (with its evaluation)."""
        items = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()}
        items["config"] = ocp.args.JsonSave(to_dict(config))
        items["meta"] = ocp.args.JsonSave(dict(meta))
        metrics = dict(metrics) if metrics and BEST_METRIC in metrics else None
        if step in self.manager.all_steps():  # listed while its save is still in flight: let that finish first
            self.manager.wait_until_finished()  # (deleting it mid-write crashed one process and hung two)
            self.manager.delete(step)
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def restore_config_and_meta(self, step: int) -> tuple[Config, dict]:
        """The step's config and meta; a missing or unreadable item is a UserError naming the step."""
        restored = restore_items(self.manager, self.root / str(step),
                                 {"config": ocp.args.JsonRestore(), "meta": ocp.args.JsonRestore()})
        config = config_from_dicts(restored.config, source=f"checkpoint {self.root / str(step)} config")
        return config, dict(restored.meta)

    def restore_trees(self, step: int, targets: Mapping[str, Any]) -> dict[str, Any]:
        """Restore the named trees into the shapes, dtypes and shardings of `targets` (abstract arrays); a
        missing or unreadable tree is a UserError naming the step directory and the tree."""
        args = {name: ocp.args.StandardRestore(target) for name, target in targets.items()}
        return dict(restore_items(self.manager, self.root / str(step), args))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def check_compatible(saved: Config, current: Config, where: str) -> None:
    """Fail before compilation when a checkpoint's architecture differs from the run's, naming the fields."""
    diffs = [f"model.{f.name}: checkpoint {getattr(saved.model, f.name)!r} vs config "
             f"{getattr(current.model, f.name)!r}"
             for f in dataclasses.fields(saved.model)
             if f.name not in _RUNTIME_FIELDS and getattr(saved.model, f.name) != getattr(current.model, f.name)]
    if diffs:
        raise UserError(f"checkpoint {where} does not match the config: " + "; ".join(diffs))


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


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStructs of `tree` (optionally with shardings) to restore into."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                            tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
