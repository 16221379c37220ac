"""Named mesh presets for `r1jax compile --mesh` (and any config): a mesh shape plus a rules preset.

A preset is the fields of a `sharding:` config section. Its fill axis (-1) takes the devices the other axes
leave, so one preset serves every slice its fixed axes divide; `config` means the run config's own section.
Presets derive from each other: `ep16` is `fsdp` with an expert axis of 16, `ep16_lora` adds rule overrides.
This module imports no JAX (the CLI lists the names before JAX starts).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from r1jax.errors import UserError
from r1jax.sharding.mesh import ShardingConfig


@dataclasses.dataclass(frozen=True)
class MeshPreset:
    description: str
    data: int = 1
    fsdp: int = -1
    expert: int = 1
    tensor: int = 1
    preset: str = "fsdp"  # sharding.rules.PRESETS
    rules: Optional[dict[str, list[str]]] = None

    def derive(self, description: str, **changes) -> "MeshPreset":
        return dataclasses.replace(self, description=description, **changes)

    def sharding(self):
        return ShardingConfig(self.data, self.fsdp, self.expert, self.tensor, self.preset, self.rules)


_FSDP = MeshPreset("ZeRO-3: every device one FSDP shard, each weight split on its embed axis")
# MLA's up-projections (q_b: q_lora x heads x head_dim, kv_b: kv_lora x heads x head_dim) have no embed axis,
# so FSDP alone leaves them replicated (3.3B parameters in DeepSeek-V3); split their latent axis over the
# expert axis (the down-projections' input axis, `embed_in`, is on fsdp, so the two never share a mesh axis).
_LORA_ON_EXPERT = {"q_lora": ["expert"], "kv_lora": ["expert"]}

MESH_PRESETS: dict[str, MeshPreset] = {
    "fsdp": _FSDP,
    "fsdp_tp4": _FSDP.derive("FSDP with 4-way tensor parallelism (heads, MLP, vocab)", tensor=4,
                             preset="fsdp_tensor"),
    "ep8": _FSDP.derive("8-way expert parallelism, FSDP over the rest", expert=8, preset="fsdp_expert"),
    "ep16": _FSDP.derive("16-way expert parallelism, FSDP over the rest", expert=16, preset="fsdp_expert"),
    "ep16_lora": _FSDP.derive("ep16, MLA latent axes split over the expert axis", expert=16,
                              preset="fsdp_expert", rules=_LORA_ON_EXPERT),
    "ep64": _FSDP.derive("64-way expert parallelism, FSDP over the rest", expert=64, preset="fsdp_expert"),
}


def resolve_mesh(name: str, config_sharding):
    """The ShardingConfig of preset `name`; "config" is the run config's own section."""
    if name == "config":
        return config_sharding
    if name not in MESH_PRESETS:
        raise UserError(f"unknown mesh preset {name!r}; choose config or one of {', '.join(MESH_PRESETS)}")
    return MESH_PRESETS[name].sharding()
