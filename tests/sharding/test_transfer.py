"""sharding.transfer.copy_to: copies between disjoint device sets. Its by-process copy (the one several
processes need) gives the same arrays and shards as `jax.device_put` on 8 CPU devices, by mirror and by
replication; the mirror pairs each target device with a source device of its own process. The copy under two
real processes runs in tests/rl/test_multihost.py (a sampler on devices of its own)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from r1jax.sharding.transfer import _pairing, copy_to


def meshes():
    devices = jax.devices()
    return (Mesh(np.asarray(devices[:6]).reshape(3, 2), ("a", "b")),
            Mesh(np.asarray(devices[6:]).reshape(1, 2), ("x", "y")))


def layout(array):
    return sorted((s.device.id, str(s.index), np.asarray(s.data).tobytes()) for s in array.addressable_shards)


@pytest.mark.parametrize("spec", [P("y"), P(None, "y"), P(), P("x", "y"), P("y", None)])
def test_a_copy_to_fewer_devices_by_mirror_equals_device_put(spec):
    source, target = meshes()
    x = jax.device_put(jnp.arange(48.0).reshape(6, 8), NamedSharding(source, P("a", "b")))
    sharding = NamedSharding(target, spec)
    copied = copy_to({"w": x}, {"w": sharding}, by_process=True)["w"]
    assert copied.sharding == sharding
    assert layout(copied) == layout(jax.device_put(x, sharding))
    np.testing.assert_array_equal(np.asarray(copied), np.arange(48.0).reshape(6, 8))


@pytest.mark.parametrize("spec", [P("a", "b"), P(None, "a"), P()])
def test_a_copy_to_more_devices_by_replication_equals_device_put(spec):
    source, target = meshes()
    x = jax.device_put(jnp.arange(72.0).reshape(6, 12), NamedSharding(target, P(None, "y")))
    sharding = NamedSharding(source, spec)
    copied = copy_to(x, sharding, by_process=True)
    assert copied.sharding == sharding
    assert layout(copied) == layout(jax.device_put(x, sharding))


def test_a_copy_takes_a_prefix_tree_of_shardings_and_host_values():
    source, target = meshes()
    sharding = NamedSharding(target, P("y"))
    tree = {"params": [jax.device_put(jnp.ones((6, 2)), NamedSharding(source, P("a"))), np.arange(4)]}
    copied = copy_to(tree, {"params": sharding}, by_process=True)
    assert [x.sharding for x in copied["params"]] == [sharding, sharding]
    np.testing.assert_array_equal(np.asarray(copied["params"][1]), np.arange(4))


@dataclasses.dataclass(frozen=True)
class Fake:
    id: int
    process_index: int


def test_the_mirror_pairs_each_target_device_with_a_source_device_of_its_process():
    source = tuple(Fake(i, i // 4) for i in (0, 1, 2, 4, 5, 6))  # 3 per process
    target = Mesh(np.asarray([Fake(7, 1), Fake(3, 0)], dtype=object), ("x",))
    pairs = _pairing(source, target)
    assert pairs.shape == (3, 2)
    assert [d.process_index for d in pairs[0]] == [1, 0]  # slice 0: the pairs
    assert sorted(d.id for d in pairs.flat) == [0, 1, 2, 4, 5, 6]  # every source device, once
    # no mirror where the source is not a multiple of the target, or a process holds too few source devices
    assert _pairing(source[:5], target) is None
    lopsided = tuple(Fake(i, 0) for i in range(4))
    assert _pairing(lopsided, target) is None
