"""Orbax checkpoints that carry their own resolved config, so any command can open them unaided.

Layout: a checkpoint directory is an Orbax CheckpointManager root; each step `N/` holds the items
`config` (the resolved run config as JSON) and `params` (the policy's NNX state: parameters and routing
bias). Later items (optimizer state, reference params, RNG, data iterator) join as the trainer needs them.

A path given by a user may be a run directory (its `checkpoints/`), a checkpoint root (its latest step),
or one step directory.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from r1jax.model.decoder import Policy
from r1jax.errors import UserError
from r1jax.model.factory import abstract_policy
from r1jax.rl.config import Config, config_from_dicts, to_dict
from r1jax.sharding.rules import Rules


def _manager(root: pathlib.Path, **options) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(root.absolute(), item_names=("config", "params"),
                                 options=ocp.CheckpointManagerOptions(**options))


def save_policy(root: str | pathlib.Path, config: Config, policy: Policy, step: int = 0) -> pathlib.Path:
    """Write `policy` and `config` as step `step` under `root`; returns the step directory."""
    root = pathlib.Path(root)
    with _manager(root) as manager:
        state = nnx.to_pure_dict(nnx.state(policy))
        manager.save(step, args=ocp.args.Composite(config=ocp.args.JsonSave(to_dict(config)),
                                                   params=ocp.args.StandardSave(state)))
        manager.wait_until_finished()
    return root / str(step)


def resolve(path: str | pathlib.Path) -> tuple[pathlib.Path, int]:
    """(checkpoint root, step) for a run directory, a checkpoint root or a step directory."""
    path = pathlib.Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if path.name.isdigit() and (path / "params").exists():
        return path.parent, int(path.name)
    steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / "params").exists())
    if not steps:
        raise UserError(f"checkpoint {str(path)!r} holds no complete checkpoint step (no N/params)")
    return path, steps[-1]


def load_config(path: str | pathlib.Path) -> Config:
    root, step = resolve(path)
    with _manager(root, read_only=True) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return config_from_dicts(restored.config, source=f"checkpoint {root / str(step)} config")


def load_policy(path: str | pathlib.Path, mesh: Mesh | None = None,
                rules: Rules | None = None) -> tuple[Config, Policy]:
    """The checkpoint's config and policy, restored directly into the mesh's shards when given one."""
    config = load_config(path)
    root, step = resolve(path)
    graphdef, abstract_state = nnx.split(abstract_policy(config.model))
    target = nnx.to_pure_dict(abstract_state)
    if mesh is not None:
        from r1jax.sharding.params import state_shardings

        shardings = nnx.to_pure_dict(state_shardings(abstract_state, mesh, rules))
        target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              target, shardings)
    with _manager(root, read_only=True) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
    nnx.replace_by_pure_dict(abstract_state, restored.params)
    return config, nnx.merge(graphdef, abstract_state)


def find_tokenizer(path: str | pathlib.Path):
    """The tokenizer a checkpoint carries (the trainer keeps it beside the steps), or None."""
    from r1jax.model.tokenizer import Tokenizer

    root, step = resolve(path)
    for candidate in (root / str(step) / "tokenizer", root / "tokenizer", root.parent / "tokenizer"):
        if (candidate / "tokenizer.model").exists():
            return Tokenizer.load(candidate)
    return None


def open_for_inference(path: str | pathlib.Path):
    """(config, policy on the config's mesh, mesh, rules, tokenizer or None) for generate/eval."""
    from r1jax.sharding.mesh import build_mesh

    config = load_config(path)
    mesh = build_mesh(config.sharding)
    rules = Rules.preset(config.sharding.preset, config.sharding.rules)
    config, policy = load_policy(path, mesh, rules)
    return config, policy, mesh, rules, find_tokenizer(path)
