"""Logical-axis rules: one table per preset mapping logical axis names to mesh axes.

Parameter axes: vocab, embed, embed_in, heads, kv_heads, head_dim, q_lora, kv_lora, mlp, experts, expert_mlp,
layers. `embed_in` is the hidden-size (input) axis of the projections with small outputs that read the
residual stream (MLA's down-projections q_a_proj and kv_a_proj_with_mqa, the MoE router). It follows `embed`
wherever a table does not name it (so a `sharding.rules` override of `embed` moves it too); only the
inference preset names it, over `tensor`, where `embed` stays whole: replicated, these weights would be read
whole by every device at every decoded token (about 2 GB per DeepSeek-V3 step); split, each device reads
its share and the small partial products are summed. The hidden size must then divide by `tensor`, or
`auto` samples in the training layout.
Activation axes: batch, length, act_embed, act_heads, act_kv_heads, act_mlp, act_vocab.
A logical name missing from a table is replicated. One array never uses a mesh axis twice.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

from jax.sharding import PartitionSpec

from r1jax.errors import UserError
from r1jax.sharding import MESH_AXES

MeshAxes = tuple[str, ...]

# Every preset shards the batch over all data-parallel axes: `expert` doubles as a data axis outside the
# MoE layers (the MoE dispatch gathers tokens over it), as in MaxText's expert-parallel presets.
_BATCH = {"batch": ("data", "fsdp", "expert")}
_FSDP = {"embed": ("fsdp",)}
_TENSOR = {
    "heads": ("tensor",), "kv_heads": ("tensor",), "mlp": ("tensor",), "expert_mlp": ("tensor",),
    "vocab": ("tensor",), "act_heads": ("tensor",), "act_kv_heads": ("tensor",), "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
}
_EXPERT = {"experts": ("expert",)}

# hidden-size axes split as `embed` unless a table names them (module docstring)
_FOLLOWS_EMBED = ("embed_in",)

# every logical axis name the model and the sampler use (module docstring): a rules table may name only these
LOGICAL_AXES = ("vocab", "embed", "embed_in", "heads", "kv_heads", "head_dim", "q_lora", "kv_lora", "mlp",
                "experts", "expert_mlp", "layers", "batch", "length", "act_embed", "act_heads", "act_kv_heads",
                "act_mlp", "act_vocab")


def check_rules(rules: Mapping[str, Sequence[str]] | None, where: str) -> None:
    """A config's rule overrides (`sharding.rules`, `sampling.rules`): each key a logical axis name, each value
    a list of distinct mesh axes; else a UserError naming `where` and the entry. (An unknown logical name was
    silently never read; an unknown mesh axis only failed once the sampler's layout was built.)"""
    for logical, axes in (rules or {}).items():
        if logical not in LOGICAL_AXES:
            raise UserError(f"{where}.{logical}: unknown logical axis {logical!r}; use one of "
                            f"{', '.join(LOGICAL_AXES)}")
        if isinstance(axes, str) or not isinstance(axes, Sequence):
            raise UserError(f"{where}.{logical}={axes!r}: expected a list of mesh axes ({', '.join(MESH_AXES)})")
        bad = [a for a in axes if a not in MESH_AXES]
        if bad:
            raise UserError(f"{where}.{logical}: unknown mesh axes {bad}; use {MESH_AXES}")
        if len(set(axes)) != len(axes):
            raise UserError(f"{where}.{logical}={list(axes)}: a mesh axis may appear once")


PRESETS: dict[str, dict[str, MeshAxes]] = {
    # The sampler's inference layout (rl.sampler_layout): no weight is split on `fsdp` (decoding would gather
    # it at every token); experts over `expert`, heads/MLP/vocabulary over `tensor`, rows over the rest.
    "inference": {**_BATCH, **_EXPERT, **_TENSOR, "embed_in": ("tensor",)},
    "fsdp": {**_BATCH, **_FSDP},
    "fsdp_tensor": {**_BATCH, **_FSDP, **_TENSOR},
    "fsdp_expert": {**_BATCH, **_FSDP, **_EXPERT},
    "fsdp_expert_tensor": {**_BATCH, **_FSDP, **_EXPERT, **_TENSOR},
}


@dataclasses.dataclass(frozen=True)
class Rules:
    """A logical-to-mesh table. `table[name]` is a tuple of mesh axes (major to minor). Hashable (equal tables,
    equal hashes): sharding.context.use_mesh puts the rules in force into JAX's jit cache key."""

    table: Mapping[str, MeshAxes]

    def __post_init__(self):
        # a copy of the caller's table, its axes tuples
        object.__setattr__(self, "table", {name: tuple(axes) for name, axes in self.table.items()})

    def __hash__(self) -> int:  # (the dataclass's __eq__ compares the tables)
        return hash(frozenset(self.table.items()))

    @classmethod
    def preset(cls, name: str, overrides: Mapping[str, Sequence[str]] | None = None) -> "Rules":
        if name not in PRESETS:
            raise UserError(f"sharding.preset={name!r}: unknown preset; choose one of {', '.join(PRESETS)}")
        table = dict(PRESETS[name])
        for logical, axes in (overrides or {}).items():
            table[logical] = tuple(axes)
        return cls(table)

    def mesh_axes(self, logical: str | None) -> MeshAxes:
        if logical in _FOLLOWS_EMBED and logical not in self.table:
            logical = "embed"
        return tuple(self.table.get(logical, ())) if logical else ()

    def spec(self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None,
             mesh_shape: Mapping[str, int] | None = None, *, what: str = "array",
             strict: bool = True) -> PartitionSpec:
        """The PartitionSpec for an array with these logical axes.

        With `shape` and `mesh_shape`, checks that each dimension divides by the product of its mesh axes:
        strict raises a UserError naming the array, the logical axis and the mesh axes; lenient drops the
        sharding of that dimension (used for activation hints such as a batch of 1 when decoding).
        """
        used: dict[str, str] = {}
        entries = []
        for dim, logical in enumerate(logical_axes):
            axes = tuple(a for a in self.mesh_axes(logical) if mesh_shape is None or a in mesh_shape)
            for axis in axes:
                if axis in used:
                    raise UserError(f"{what}: logical axes {used[axis]!r} and {logical!r} both map to mesh "
                                    f"axis {axis!r}; one array cannot use a mesh axis twice")
                used[axis] = logical
            if axes and shape is not None and mesh_shape is not None:
                ways = math.prod(mesh_shape[a] for a in axes)
                if shape[dim] % ways:
                    if strict:
                        raise UserError(
                            f"{what}: dimension {dim} ({logical!r}, size {shape[dim]}) does not divide by mesh "
                            f"axes {'x'.join(axes)} of size {ways}; change the mesh or sharding.rules")
                    axes = ()
            entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
        return PartitionSpec(*entries)
