"""Copies between meshes of disjoint devices (a sampler on devices of its own), in one process or several.

In one process `jax.device_put` does it. Across processes it moves an array only where both sides have the
same HLO sharding and JAX's DCN transfer service is configured (`jax_cross_host_transfer_socket_address`), so
under several processes `copy_to` arranges the copy so that every device takes its data from a device of its
own process, with no transfer service. It needs each process to hold k times as many devices on one side as
on the other (rl.sampler_devices.split_devices makes it so), and pairs the devices of each process
(`_pairing`): a mesh (k, *the smaller side's mesh) over the bigger side's devices, every device of slice i at
the place of a smaller-side device of its own process.
- To fewer devices (the weights going to the sampler, `_gathered_to`): one reshard on the source devices into
  the target's layout over that mesh (replicated over its first axis), then each process copies slice 0's
  shards to their paired target devices. While the copy runs, each source device holds its target device's
  share of the copied arrays as well.
- To more devices (a rollout going back to the trainer, `_spread_to`): each process copies each source shard
  to the k target devices paired with its device, which makes the array in the source's layout over that mesh,
  then one reshard on the target devices into the target's layout.
The reshards are collective: every process must take part. How fast the device-to-device copies within a
process are depends on the platform (measured here only on CPU).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

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
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        # a typed key goes as its data: neither NumPy nor JAX's reshards across processes take key dtypes
        data = _copy(jax.random.key_data(x), target)
        with jax.set_mesh(target.mesh):
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if not isinstance(x, jax.Array) or (len(x.sharding.device_set) == 1 and x.is_fully_addressable):
        # a host value, or one device's array (under several processes a local one, e.g. a key every process
        # derived alike): every process places its own target shards from its own copy
        return jax.device_put(np.asarray(x), target)
    if not isinstance(x.sharding, NamedSharding) or not isinstance(target, NamedSharding):
        raise ValueError(f"copy_to: needs NamedShardings on both sides, got {x.sharding} -> {target}")
    sources = len(x.sharding.device_set)
    if sources >= target.mesh.size:
        return _gathered_to(x, target, _pairing(list(x.sharding.mesh.devices.flat), target.mesh))
    return _spread_to(x, target, _pairing(list(target.mesh.devices.flat), x.sharding.mesh))


def _pairing(devices: list, mesh: Mesh) -> np.ndarray:
    """`devices` as an array (k, *mesh's shape) whose every slice places, at each of `mesh`'s devices, one of
    `devices` of the same process (module docstring); a ValueError when the counts do not allow it."""
    free = defaultdict(list)
    for device in devices:
        free[device.process_index].append(device)
    if len(devices) % mesh.size == 0:
        k = len(devices) // mesh.size
        picked = []
        for _ in range(k):
            for device in mesh.devices.flat:
                if not free[device.process_index]:
                    break
                picked.append(free[device.process_index].pop(0))
        if len(picked) == len(devices):
            return np.asarray(picked, dtype=object).reshape((k,) + mesh.devices.shape)
    counts = defaultdict(lambda: [0, 0])
    for device in devices:
        counts[device.process_index][0] += 1
    for device in mesh.devices.flat:
        counts[device.process_index][1] += 1
    raise ValueError(f"copy_to: each process must hold k times as many devices on one side as on the other; "
                     f"(bigger, smaller) per process: {dict(counts)}")


def _mirror(pairs: np.ndarray, mesh: Mesh) -> Mesh:
    return Mesh(pairs, (MIRROR_AXIS,) + tuple(mesh.axis_names), axis_types=(AxisType.Auto,) * pairs.ndim)


def _gathered_to(x, target: NamedSharding, pairs: np.ndarray):
    staged = _reshard(x, NamedSharding(_mirror(pairs, target.mesh), target.spec))
    source_of = dict(zip(target.mesh.devices.flat, pairs[0].flat))
    local = {shard.device: shard.data for shard in staged.addressable_shards}
    shards = [jax.device_put(local[source_of[device]], device) for device in _addressable(target.mesh)]
    return jax.make_array_from_single_device_arrays(x.shape, target, shards)


def _spread_to(x, target: NamedSharding, pairs: np.ndarray):
    mirror = _mirror(pairs, x.sharding.mesh)
    source_of = {}
    for copies in pairs:
        source_of.update(zip(copies.flat, x.sharding.mesh.devices.flat))
    local = {shard.device: shard.data for shard in x.addressable_shards}
    shards = [jax.device_put(local[source_of[device]], device) for device in _addressable(mirror)]
    spread = jax.make_array_from_single_device_arrays(x.shape, NamedSharding(mirror, x.sharding.spec), shards)
    return _reshard(spread, target)


def _reshard(x, sharding: NamedSharding):
    """`x` laid out by `sharding`, over the same devices in any order: `jax.device_put`, which reshards by a jit
    under the context mesh, so under `sharding`'s (a jit under the caller's mesh, or the source's in another
    order, refuses the devices)."""
    with jax.set_mesh(sharding.mesh):
        return jax.device_put(x, sharding)


def _addressable(mesh: Mesh) -> list:
    """The mesh's devices of this process, in the mesh's order."""
    return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
