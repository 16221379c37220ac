"""Shardings for NNX states from the logical axes each Variable carries in its `axes` metadata."""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from r1jax.sharding.rules import Rules


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def path_keys(path) -> tuple:
    """The plain keys of a JAX key path, as stored: dict keys (str or int), sequence indices, attribute names
    (`DictKey.key`, `SequenceKey.idx`, `GetAttrKey.name`); any other entry as itself."""
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)


def path_name(path) -> str:
    """A JAX key path as a dotted name ("segments.0.block.mlp.gate_proj"), for messages and matching."""
    return ".".join(str(k) for k in path_keys(path))


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> nnx.State:
    """A NamedSharding per Variable (same tree as `state`, leaves are shardings, not Variables).

    Raises UserError naming the parameter, its logical axis and the mesh axes when a dimension does not
    divide by the mesh axes it would be split over.
    """
    mesh_shape = dict(mesh.shape)

    def one(path, var):
        axes = var.get_metadata().get("axes") or (None,) * len(var.shape)
        spec = rules.spec(axes, var.shape, mesh_shape, what=f"parameter {path_name(path)}")
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=_is_variable)


def tree_shardings(tree, mesh: Mesh, rules: Rules):
    """Shardings for any tree holding NNX Variables (params, optimizer moments) and plain arrays: Variables
    by their logical axes, plain arrays (step counters, scalars) replicated."""
    mesh_shape = dict(mesh.shape)
    replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())

    def one(path, leaf):
        if _is_variable(leaf):
            axes = leaf.get_metadata().get("axes") or (None,) * len(leaf.shape)
            return NamedSharding(mesh, rules.spec(axes, leaf.shape, mesh_shape, what=path_name(path)))
        return replicated

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_variable)


def abstract_sharded(tree, mesh: Mesh, rules: Rules):
    """ShapeDtypeStructs of `tree`'s leaves (arrays or ShapeDtypeStructs, inside NNX Variables or plain), each
    carrying the sharding `tree_shardings` gives it: a restore target or a compile argument, same structure."""
    shardings = jax.tree.leaves(tree_shardings(tree, mesh, rules),
                                is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                                        for x, s in zip(leaves, shardings, strict=True)])
