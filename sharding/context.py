"""The active mesh and rules while model code is traced, and the activation-sharding hint.

`with use_mesh(mesh, rules):` sets JAX's mesh and r1jax's rules; `constrain(x, logical_axes)` is a no-op
outside it, so the same model code runs unsharded (one device, tests, export) and sharded.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import jax
from jax.sharding import Mesh

from r1jax.sharding.rules import Rules

_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("r1jax_rules", default=None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules) -> Iterator[None]:
    token = _RULES.set(rules)
    try:
        with jax.set_mesh(mesh):
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
