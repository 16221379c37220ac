"""The sampler on devices of its own (`sampling.devices` = N > 0), as disaggregated RL trainers (slime, verl)
run rollouts: N devices hold the sampler's copy of the weights and generate, the trainer's mesh (the
`sharding` config as with shared devices) is built on the others. Under P processes (hosts) each gives the
sampler its last N / P devices, and keeps a multiple of that share for the trainer (`split_devices`), so the
weights can go to the sampler device to device within each host (sharding.transfer); in one process, its last
N devices.

With `grpo.max_staleness` = k >= 1 (required: at 0 every batch waits for the update before it) the GRPO stage
dispatches the generation of the batch it samples ahead before the update, so the two device sets work at
once (rl.train.stage_grpo). The weight copy after each update (`time/reshard_s`) goes from the trainer's
devices to the sampler's, the rollout back to the trainer's (sharding.transfer.copy_to: `jax.device_put` in
one process; under several, copies between paired devices of each process and one reshard on one side).

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
    trainer's) out of `devices` (default: all of the run's): the sampler takes the last `sampling.devices` / P
    of each of the P processes' devices (module docstring)."""
    devices = list(jax.devices() if devices is None else devices)
    count = sampling.devices
    if count == 0:
        return devices, []
    by_process = {}
    for device in devices:
        by_process.setdefault(device.process_index, []).append(device)
    processes, local = len(by_process), min(len(d) for d in by_process.values())
    if processes == 1:
        if count >= len(devices):
            raise UserError(f"sampling.devices={count}: leaves no trainer device of the {len(devices)}; at most "
                            f"{len(devices) - 1}")
    else:
        if any(len(d) != local for d in by_process.values()):
            counts = sorted(len(d) for d in by_process.values())
            raise UserError(f"sampling.devices={count}: the processes hold unequal device counts ({counts}); a "
                            f"sampler of its own needs equal ones")
        share = count // processes
        if count % processes or not 0 < share < local or (local - share) % share:
            fits = [n * processes for n in range(1, local) if (local - n) % n == 0]
            hint = f"one of {fits}" if fits else "a sampler of its own needs at least 2 devices per process"
            raise UserError(f"sampling.devices={count}: under {processes} processes of {local} devices each, "
                            f"each process gives the sampler the same share, and its other devices must be a "
                            f"multiple of that share (the weights copy device to device within a process: "
                            f"sharding.transfer); {hint}")
    share = count // processes
    train = [d for each in by_process.values() for d in each[:-share]]
    own = [d for each in by_process.values() for d in each[-share:]]
    return train, own


def own_devices_layout(sampling, sharding: ShardingConfig, model: ModelConfig, train_mesh: Mesh,
                       train_rules: Rules, devices: list, free_bytes: Optional[int] = None
                       ) -> tuple[SamplerLayout, str]:
    """The sampler's layout on its own `devices` and the console's line about it (module docstring).
    `free_bytes`: the HBM free per sampler device for the inference layout's fit check (default: what the
    devices state now; `r1jax compile` passes a chip's whole HBM: no trainer state lives there)."""
    layout, note = choose_layout(sampling, model, train_mesh, train_rules, free_bytes, devices=devices)
    if layout is None:
        try:
            mesh = build_mesh(sharding, devices)
            abstract_sharded(split_policy(abstract_policy(model))[1:], mesh, train_rules)
        except UserError as err:
            raise UserError(f"sampling.devices={len(devices)}: the sampler's training layout (the sharding "
                            f"config) does not fit its {len(devices)} devices: {err}") from None
        # the training layout, stacked as trained (a per-layer copy is the inference layout's), in the compute
        # dtype where the layers only use the weights cast, as the inference copy (the weights move anyway)
        graphdef = split_policy(abstract_policy(model))[0]
        layout = SamplerLayout(sharding, mesh, train_rules, train_mesh, train_rules, graphdef, False, model)
        note = f"{note or 'sampler layout: train'} ({' '.join(f'{k}={v}' for k, v in mesh.shape.items())})"
    return layout, (f"{note}; on devices of its own: {id_ranges(devices)} (the trainer's: "
                    f"{id_ranges(train_mesh.devices.flat)})")


def id_ranges(devices) -> str:
    """Device ids as runs, e.g. "[0-3, 8, 10-11]" (a TPU slice's hundreds of ids on one line)."""
    ids, runs = sorted(d.id for d in devices), []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return "[" + ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs) + "]"
