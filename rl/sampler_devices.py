"""The sampler on devices of its own (`sampling.devices` = N > 0), as disaggregated RL trainers (slime, verl)
run rollouts: the last N of the process's devices hold the sampler's copy of the weights and generate, the
trainer's mesh (the `sharding` config as with shared devices) is built on the others.

With `grpo.max_staleness` = k >= 1 (required: at 0 every batch waits for the update before it) the GRPO stage
dispatches the generation of the batch it samples ahead before the update, so the two device sets work at
once (rl.train.stage_grpo). The weight copy after each update (`time/reshard_s`) goes from the trainer's
devices to the sampler's (`jax.device_put`), the rollout back to the trainer's. Single-process for now: under
several processes the copy would have to cross hosts' device sets, which `jax.device_put` does not do.

Layout on the sampler's devices: `sampling.layout` and `sampling.mesh` as rl.sampler_layout chooses them over
those devices; where that is the training layout (`layout: train`; `auto` on one sampler device or falling
back), the `sharding` config over the sampler's devices with the trainer's rules, so the weights always move.
"""

from __future__ import annotations

from typing import Optional

import jax
from jax.sharding import Mesh

from r1jax.errors import UserError
from r1jax.model.config import ModelConfig
from r1jax.model.factory import abstract_policy
from r1jax.rl.sampler_layout import SamplerLayout, choose_layout
from r1jax.rl.update import split_policy
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import abstract_sharded
from r1jax.sharding.rules import Rules


def split_devices(sampling, devices: Optional[list] = None) -> tuple[list, list]:
    """(the trainer's devices, the sampler's own: empty when `sampling.devices` is 0 and it shares the
    trainer's) out of `devices` (default: all of the run's)."""
    devices = list(jax.devices() if devices is None else devices)
    count = sampling.devices
    if count == 0:
        return devices, []
    if jax.process_count() > 1:
        raise UserError(f"sampling.devices={count}: a sampler on devices of its own is single-process for now; "
                        f"this run has {jax.process_count()} processes (set sampling.devices=0)")
    if count >= len(devices):
        raise UserError(f"sampling.devices={count}: leaves no trainer device of the {len(devices)}; at most "
                        f"{len(devices) - 1}")
    return devices[:-count], devices[-count:]


def own_devices_layout(sampling, sharding: ShardingConfig, model: ModelConfig, train_mesh: Mesh,
                       train_rules: Rules, devices: list) -> tuple[SamplerLayout, str]:
    """The sampler's layout on its own `devices` and the console's line about it (module docstring)."""
    layout, note = choose_layout(sampling, model, train_mesh, train_rules, devices=devices)
    if layout is None:
        try:
            mesh = build_mesh(sharding, devices)
            abstract_sharded(split_policy(abstract_policy(model))[1:], mesh, train_rules)
        except UserError as err:
            raise UserError(f"sampling.devices={len(devices)}: the sampler's training layout (the sharding "
                            f"config) does not fit its {len(devices)} devices: {err}") from None
        # the training layout, stacked as trained (a per-layer copy is the inference layout's)
        graphdef = split_policy(abstract_policy(model))[0]
        layout = SamplerLayout(sharding, mesh, train_rules, train_mesh, train_rules, graphdef, False)
        note = f"{note or 'sampler layout: train'} ({' '.join(f'{k}={v}' for k, v in mesh.shape.items())})"
    ids = [d.id for d in devices]
    return layout, f"{note}; on devices of its own: {ids} (the trainer's: {[d.id for d in train_mesh.devices.flat]})"
