"""The active mesh and rules while model code is traced, and the activation-sharding hint.

`with use_mesh(mesh, rules):` sets JAX's mesh and r1jax's rules; `constrain(x, logical_axes)` and
`constrain_whole_rows(x)` are no-ops outside it, so the same model code runs unsharded (one device, tests,
export) and sharded.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterator, Sequence

import jax
from jax.sharding import Mesh

from r1jax.sharding.rules import Rules

_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("r1jax_rules", default=None)
# The rules in force, in JAX's jit cache key: JAX's key holds the mesh, not r1jax's rules, so a function jitted
# once (the module-level samplers: rl.sampler, rl.continuous) and called under another table on a mesh of the
# same shape ran the first table's trace, its sharding hints that table's (a process meeting two tables on one
# mesh shape: a sampling.rules override beside the training rules, a test comparing layouts)
_RULES_IN_JIT_KEY = jax.make_user_context(None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules) -> Iterator[None]:
    token = _RULES.set(rules)
    try:
        with jax.set_mesh(mesh), _RULES_IN_JIT_KEY(rules):
            yield
    finally:
        _RULES.reset(token)


def active_rules() -> Rules | None:
    """The rules in force, or None when no mesh is active (or it has a single device)."""
    rules = _RULES.get()
    mesh = jax.sharding.get_abstract_mesh()
    if rules is None or mesh.empty or mesh.size == 1:
        return None
    return rules


def mesh_shape() -> dict[str, int]:
    return dict(jax.sharding.get_abstract_mesh().shape)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Hint that `x` is laid out by its logical axes; dimensions that do not divide stay replicated."""
    rules = active_rules()
    if rules is None:
        return x
    spec = rules.spec(logical_axes, x.shape, mesh_shape(), strict=False)
    return jax.lax.with_sharding_constraint(x, spec)


def constrain_whole_rows(x_BV: jax.Array) -> jax.Array:
    """Hint that each row of `x_BV` lies whole on one device, the rows split over the batch's mesh axes and
    then the vocabulary's: for work over whole rows (the token filters' sort, continuous batching's draw row by
    row; rl.decoding.sample_token draws from split rows when no filter runs). Logits leave the LM head with the
    vocabulary split over `tensor`; left so, that work would gather every row to each `tensor` shard and repeat
    it there (an all-to-all moves 1/tensor of those bytes). Axes that would not divide the rows are skipped;
    with none left, `x_BV` is left as it is."""
    rules = active_rules()
    if rules is None:
        return x_BV
    shape = mesh_shape()
    axes = []
    for axis in rules.mesh_axes("batch") + rules.mesh_axes("act_vocab"):
        ways = math.prod(shape[a] for a in axes) * shape.get(axis, 0)
        if shape.get(axis, 1) > 1 and axis not in axes and x_BV.shape[0] % ways == 0:
            axes.append(axis)
    if not axes:
        return x_BV
    spec = jax.sharding.PartitionSpec(tuple(axes), *([None] * (x_BV.ndim - 1)))
    return jax.lax.with_sharding_constraint(x_BV, spec)
