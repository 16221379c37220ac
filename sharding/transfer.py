"""Copies between meshes of disjoint devices (a sampler on devices of its own), in one process or several.

In one process `jax.device_put` does it. Across processes it moves an array only where both sides have the
same HLO sharding and JAX's DCN transfer service is configured (`jax_cross_host_transfer_socket_address`), so
under several processes `copy_to` arranges the copy so that every target device takes its data from a device
of its own process, over the devices' own links, with no transfer service:
- by mirror (`_mirrored`), when the source has a multiple k of the target's devices and every process at least
  as many source devices as target devices: one jitted reshard on the source devices into the target's layout
  over a mesh (k, *the target's mesh) whose first slice pairs each target device with a source device of the
  same process, then each process copies its pairs device to device. While copying, each source device holds
  one target device's share as well. This is how the weights go to the sampler.
- by replication (`_replicated_then_cut`) otherwise: the array is gathered whole to every source device, then
  each process cuts the slices its target devices hold from its own copy. For small arrays (a rollout going
  back to a bigger trainer mesh): every source device holds the whole array while copying.
Every process must take part (the reshards are collective), and every process must hold a source device.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MIRROR_AXIS = "_mirror"


def copy_to(tree: Any, shardings: Any, *, by_process: Optional[bool] = None) -> Any:
    """`tree` laid out by `shardings` (a tree prefix of NamedShardings) on devices that may belong to other
    processes. `by_process` (default: under several processes) picks the copy of the module docstring over
    `jax.device_put`; both give the same arrays."""
    if by_process is None:
        by_process = jax.process_count() > 1
    if not by_process:
        return jax.device_put(tree, shardings)
    return jax.tree.map(lambda sharding, subtree: jax.tree.map(lambda x: _copy(x, sharding), subtree),
                        shardings, tree, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))


def _copy(x, target: NamedSharding):
    if not isinstance(x, jax.Array) or (x.is_fully_addressable and len(x.sharding.device_set) == 1
                                        and jax.process_count() > 1):
        # a host value (or one process's local array, e.g. a key every process derived alike): every process
        # places its own target shards from its own copy
        return jax.device_put(np.asarray(x), target)
    pairs = _pairing(_devices(x), target.mesh)
    if pairs is not None:
        return _mirrored(x, target, pairs)
    return _replicated_then_cut(x, target)


def _pairing(source: tuple, target_mesh: Mesh) -> Optional[np.ndarray]:
    """The mirror mesh's devices, shape (k, *target mesh): slice 0 holds, for each target device, a source
    device of its process; None when the source's devices are not k x the target's or a process has too few."""
    targets = list(target_mesh.devices.flat)
    if len(source) % len(targets):
        return None
    free = defaultdict(list)
    for device in source:
        free[device.process_index].append(device)
    first = []
    for device in targets:
        if not free[device.process_index]:
            return None
        first.append(free[device.process_index].pop(0))
    rest = [d for devices in free.values() for d in devices]
    return np.asarray(first + rest, dtype=object).reshape((len(source) // len(targets),) + target_mesh.devices.shape)


def _mirrored(x, target: NamedSharding, pairs: np.ndarray):
    mesh = Mesh(pairs, (MIRROR_AXIS,) + tuple(target.mesh.axis_names),
                axis_types=(AxisType.Auto,) * pairs.ndim)
    staged = _reshard(x, NamedSharding(mesh, target.spec))
    source_of = dict(zip(target.mesh.devices.flat, pairs[0].flat))
    local = {shard.device: shard.data for shard in staged.addressable_shards}
    shards = [jax.device_put(local[source_of[device]], device) for device in _addressable(target)]
    return jax.make_array_from_single_device_arrays(x.shape, target, shards)


def _replicated_then_cut(x, target: NamedSharding):
    mesh = Mesh(np.asarray(_devices(x), dtype=object), ("_all",), axis_types=(AxisType.Auto,))
    whole = _reshard(x, NamedSharding(mesh, PartitionSpec()))
    if not whole.addressable_shards:
        raise ValueError(f"copy_to: process {jax.process_index()} holds none of the source devices")
    copy = whole.addressable_shards[0].data
    indices = target.addressable_devices_indices_map(x.shape)
    shards = [jax.device_put(copy[indices[device]], device) for device in _addressable(target)]
    return jax.make_array_from_single_device_arrays(x.shape, target, shards)


def _devices(x) -> tuple:
    return tuple(sorted(x.sharding.device_set, key=lambda d: d.id))


def _addressable(sharding: NamedSharding) -> list:
    """The sharding's devices of this process, in the mesh's order."""
    return [d for d in sharding.mesh.devices.flat if d.process_index == jax.process_index()]


def _reshard(x, sharding: NamedSharding):
    """`x` resharded on its own devices (`sharding`'s mesh holds them), whatever mesh the caller set."""
    with jax.set_mesh(sharding.mesh):
        return _identity_to(sharding)(x)


@functools.lru_cache(maxsize=None)
def _identity_to(sharding):
    return jax.jit(lambda x: x, out_shardings=sharding)
