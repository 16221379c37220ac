"""sharding.transfer.copy_to: copies between disjoint device sets. Its by-process copy (the one several
processes need) gives the same arrays and shards as `jax.device_put` on 8 CPU devices, to fewer devices and to
more, whatever order the meshes hold their devices in; the pairing keeps each copy within a process; and two
real processes (4 CPU devices each) copy both ways with three devices per process on one side and one on the
other. A training run with a sampler on devices of its own under two processes: tests/rl/test_multihost.py."""

import dataclasses
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from r1jax.sharding import transfer
from r1jax.sharding.transfer import _pairing, copy_to

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def meshes(reverse: bool = False):
    devices = jax.devices()
    big = np.asarray(devices[:6][::-1] if reverse else devices[:6]).reshape(3, 2)
    small = np.asarray(devices[6:][::-1] if reverse else devices[6:]).reshape(1, 2)
    return Mesh(big, ("a", "b")), Mesh(small, ("x", "y"))


def layout(array):
    return sorted((s.device.id, str(s.index), np.asarray(s.data).tobytes()) for s in array.addressable_shards)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("spec", [P("y"), P(None, "y"), P(), P("x", "y"), P("y", None)])
def test_a_copy_to_fewer_devices_equals_device_put(spec, reverse):
    source, target = meshes(reverse)
    x = jax.device_put(jnp.arange(48.0).reshape(6, 8), NamedSharding(source, P("a", "b")))
    sharding = NamedSharding(target, spec)
    copied = copy_to({"w": x}, {"w": sharding}, by_process=True)["w"]
    assert copied.sharding == sharding
    assert layout(copied) == layout(jax.device_put(x, sharding))
    np.testing.assert_array_equal(np.asarray(copied), np.arange(48.0).reshape(6, 8))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("spec", [P("a", "b"), P(None, "a"), P()])
def test_a_copy_to_more_devices_equals_device_put(spec, reverse):
    source, target = meshes(reverse)
    x = jax.device_put(jnp.arange(72.0).reshape(6, 12), NamedSharding(target, P(None, "y")))
    sharding = NamedSharding(source, spec)
    copied = copy_to(x, sharding, by_process=True)
    assert copied.sharding == sharding
    assert layout(copied) == layout(jax.device_put(x, sharding))


def test_a_copy_takes_a_prefix_tree_of_shardings_host_values_and_keys():
    source, target = meshes()
    sharding = NamedSharding(target, P("y"))
    key = jax.random.key(5)  # one device's typed key, as a process derives it (no NumPy form of its own)
    tree = {"params": [jax.device_put(jnp.ones((6, 2)), NamedSharding(source, P("a"))), np.arange(4)],
            "key": key}
    copied = copy_to(tree, {"params": sharding, "key": NamedSharding(target, P())}, by_process=True)
    assert [x.sharding for x in copied["params"]] == [sharding, sharding]
    np.testing.assert_array_equal(np.asarray(copied["params"][1]), np.arange(4))
    assert copied["key"].sharding == NamedSharding(target, P())
    np.testing.assert_array_equal(jax.random.key_data(copied["key"]), jax.random.key_data(key))


@dataclasses.dataclass(frozen=True)
class Fake:
    id: int
    process_index: int


def test_the_pairing_keeps_every_copy_within_a_process():
    devices = [Fake(i, i // 4) for i in (0, 1, 2, 4, 5, 6)]  # 3 per process
    mesh = Mesh(np.asarray([Fake(7, 1), Fake(3, 0)], dtype=object), ("x",))
    pairs = _pairing(devices, mesh)
    assert pairs.shape == (3, 2)
    assert [[d.process_index for d in copies] for copies in pairs] == [[1, 0]] * 3
    assert sorted(d.id for d in pairs.flat) == [0, 1, 2, 4, 5, 6]  # every device, once
    with pytest.raises(ValueError, match="k times as many devices"):
        _pairing(devices[:5], mesh)  # not a multiple
    with pytest.raises(ValueError, match=r"\(bigger, smaller\) per process: \{0: \[4, 1\], 1: \[0, 1\]\}"):
        _pairing([Fake(i, 0) for i in range(4)], mesh)  # process 1's target device has no partner


WORKER = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from r1jax.sharding.transfer import copy_to
local = [jax.local_devices(process_index=p) for p in (0, 1)]
# the trainer: 3 devices of each process, in no tidy order; the sampler: the last of each
big = Mesh(np.asarray([local[1][0], local[0][2], local[0][0], local[1][2], local[0][1], local[1][1]]).reshape(3, 2),
           ("a", "b"))
small = Mesh(np.asarray([local[1][3], local[0][3]]), ("x",))
value = np.arange(72.0, dtype=np.float32).reshape(6, 12)
x = jax.make_array_from_callback(value.shape, NamedSharding(big, P("a", "b")), lambda i: value[i])
with jax.set_mesh(big):  # as the trainer calls it: under its own mesh
    key = jax.jit(lambda: jax.random.key(4), out_shardings=NamedSharding(big, P()))()
    there = copy_to({"w": x, "key": key, "local_key": jax.random.key(4)},
                    {"w": NamedSharding(small, P(None, "x")), "key": NamedSharding(small, P()),
                     "local_key": NamedSharding(small, P())})
    back = copy_to(there["w"], NamedSharding(big, P("b", None)))
same = Mesh(np.asarray([local[0][3], local[1][3]]), ("x",))  # the sampler's devices in another order
with jax.set_mesh(small):
    again = copy_to(there["w"], NamedSharding(same, P(None, "x")))
for array, sharding in ((there["w"], NamedSharding(small, P(None, "x"))), (back, NamedSharding(big, P("b", None))),
                        (again, NamedSharding(same, P(None, "x")))):
    assert array.sharding == sharding
    for shard in array.addressable_shards:
        assert shard.index == sharding.addressable_devices_indices_map(value.shape)[shard.device]
        np.testing.assert_array_equal(np.asarray(shard.data), value[shard.index])
for name in ("key", "local_key"):
    assert there[name].sharding == NamedSharding(small, P())
    assert (np.asarray(jax.random.key_data(there[name]).addressable_shards[0].data)
            == np.asarray(jax.random.key_data(jax.random.key(4)))).all()
print("copied", jax.process_index())
"""


def test_two_processes_copy_both_ways_within_each_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, f"127.0.0.1:{port}", str(i)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert [f"copied {i}" in out for i, out in enumerate(outputs)] == [True, True]


def test_sharded_arrays_take_the_by_process_copies_and_host_values_the_shortcut(monkeypatch):
    """In one process too: the equal-to-device_put tests above check those copies, not the single-device
    shortcut through the host."""
    calls = []
    for name in ("_gathered_to", "_spread_to"):
        real = getattr(transfer, name)
        monkeypatch.setattr(transfer, name, lambda x, t, p, real=real, name=name: (calls.append(name),
                                                                                   real(x, t, p))[1])
    source, target = meshes()
    x = jax.device_put(jnp.arange(48.0).reshape(6, 8), NamedSharding(source, P("a", "b")))
    there = copy_to(x, NamedSharding(target, P(None, "y")), by_process=True)
    back = copy_to(there, NamedSharding(source, P("b", None)), by_process=True)
    assert calls == ["_gathered_to", "_spread_to"]
    np.testing.assert_array_equal(np.asarray(back), np.arange(48.0).reshape(6, 8))
    copy_to(np.arange(4.0), NamedSharding(target, P()), by_process=True)  # a host value: no collective copy
    copy_to(jax.device_put(jnp.ones(4), jax.devices()[0]), NamedSharding(target, P()), by_process=True)
    assert calls == ["_gathered_to", "_spread_to"]


def test_a_typed_key_of_another_implementation_keeps_it():
    _, target = meshes()
    key = jax.random.key(5, impl="rbg")
    copied = copy_to({"key": key}, {"key": NamedSharding(target, P())}, by_process=True)["key"]
    assert str(jax.random.key_impl(copied)) == str(jax.random.key_impl(key))
    np.testing.assert_array_equal(jax.random.key_data(copied), jax.random.key_data(key))
    assert copied.sharding == NamedSharding(target, P())


def test_a_copy_to_or_from_a_sharding_without_a_mesh_is_refused_naming_both():
    source, target = meshes()
    x = jax.device_put(jnp.ones((6, 8)), NamedSharding(source, P("a", "b")))
    with pytest.raises(ValueError, match="copy_to: needs NamedShardings on both sides, got NamedSharding.* -> "
                                         "SingleDeviceSharding"):
        copy_to(x, jax.sharding.SingleDeviceSharding(jax.devices()[7]), by_process=True)
