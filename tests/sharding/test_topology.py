"""TPU names and topologies, and libtpu's out-of-memory messages (sharding.topology)."""

import pytest

from r1jax.errors import UserError
from r1jax.sharding.chips import CHIPS
from r1jax.sharding.topology import HBM_GIB, parse_oom, parse_topology

GIB = 2**30


@pytest.mark.parametrize("name, topology, chips", [
    ("v5p-128", "v5p:4x4x4", 64), ("v5p-512", "v5p:4x8x8", 256), ("v5p-16", "v5p:2x2x2", 8),
    ("v5p-8", "v5p:2x2x1", 4), ("v5p-384", "v5p:4x4x12", 192), ("v6e-256", "v6e:16x16", 256),
    ("v5e-16", "v5e:4x4", 16), ("v5litepod-8", "v5e:2x4", 8), ("v4-32", "v4:2x2x4", 16),
    ("v5p:4x4x4", "v5p:4x4x4", 64), (" V6E:2x2 ", "v6e:2x2", 4), ("v5litepod:4x4", "v5e:4x4", 16),
    ("v5p:1x2x2", "v5p:1x2x2", 4), ("v5p:4x4x12", "v5p:4x4x12", 192), ("v6e:16x16", "v6e:16x16", 256),
    ("v5e:1x1", "v5e:1x1", 1)])
def test_cloud_names_and_topology_strings(name, topology, chips):
    parsed = parse_topology(name)
    assert (parsed.topology_string, parsed.chips) == (topology, chips)


@pytest.mark.parametrize("name, why", [
    ("v5p-7", "must be even"), ("v7x-8", "unknown TPU type"), ("v5p:4x4", "needs 3 positive dimensions"),
    ("v6e:2x2x2", "needs 2 positive dimensions"), ("tpu", "Cloud TPU name"), ("v5e-3", "slices have"),
    ("v5p-12", "6 chips"), ("v5p:0x2x2", "positive"),
    # shapes no slice has (libtpu compiled for them: figures for no machine)
    ("v5p:5x5x5", "no v5p slice has that shape"), ("v4:2x2x6", "no v4 slice has that shape"),
    ("v6e:3x4", "no v6e slice has that shape"), ("v5e:32x32", "v5e slices are 1x1, 2x2, 2x4"),
    ("v5p:2x2x8", "2x4x4, or multiples of 4"), ("v5p:1x4x4", "no v5p slice"), ("v6e:1x16", "no v6e slice")])
def test_bad_names_are_user_errors(name, why):
    with pytest.raises(UserError, match=why):
        parse_topology(name)


def test_out_of_memory_messages_parse_in_binary_units():
    temporaries = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                   "temporaries (18.12G) exceeds available HBM (15.75G).")
    used = "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. " \
           "Used 120.50G of 95.74G hbm. Exceeded hbm capacity by 24.76G."
    assert parse_oom(temporaries) == (int(18.12 * GIB), int(15.75 * GIB))
    assert parse_oom(used) == (int(120.5 * GIB), int(95.74 * GIB))
    assert parse_oom("INTERNAL: something else") == (None, None)


# generation: (bf16 TFLOP/s, HBM GB/s, ICI GB/s bidirectional or None, HBM GiB) as the Cloud TPU pages state them
PUBLISHED = {"v4": (275, 1200, None, 32), "v5e": (197, 819, 400, 16), "v5p": (459, 2765, 1200, 95),
             "v6e": (918, 1638, 800, 32)}


@pytest.mark.parametrize("kind", sorted(PUBLISHED))
def test_chip_figures_are_the_published_ones(kind):
    tflops, hbm_gbs, ici_gbs, hbm_gib = PUBLISHED[kind]
    chip = CHIPS[kind]
    assert chip.peak_flops == tflops * 1e12 and chip.hbm_bytes_per_s == hbm_gbs * 1e9
    assert chip.ici_bytes_per_s == (None if ici_gbs is None else ici_gbs * 1e9)
    assert HBM_GIB[kind] == hbm_gib


@pytest.mark.parametrize("name, chips, devices, hbm_gib", [
    ("v4-32", 16, 32, 32), ("v5e-16", 16, 16, 16), ("v5p-128", 64, 64, 95), ("v6e-8", 8, 8, 32)])
def test_topology_counts_chips_devices_and_hbm(name, chips, devices, hbm_gib):
    d = parse_topology(name).to_dict()
    assert (d["chips"], d["devices"], d["chip_hbm_bytes"]) == (chips, devices, hbm_gib * GIB)


class _FailsToCompile:
    """jax.jit's stand-in: lowers, then fails to compile with `message` (as libtpu does on a program past HBM)."""

    def __init__(self, message):
        self.message = message

    def lower(self, *args):
        return self

    def compile(self):
        import jax
        raise jax.errors.JaxRuntimeError(self.message)


@pytest.mark.parametrize("name, message, expected", [
    # no figure in the compiler's error: the spec table's per chip, split among the chip's devices (v4: 2)
    ("v4-32", "INTERNAL: something else", (16 * GIB, "table")),
    ("v5p-8", "INTERNAL: something else", (95 * GIB, "table")),
    ("v6e-8", "INTERNAL: something else", (32 * GIB, "table")),
    # the compiler's own figure, per device, as it states it
    ("v4-32", "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
              "(1024.00G) exceeds available HBM (15.75G).", (int(15.75 * GIB), "compiler")),
])
def test_a_devices_hbm_is_the_compilers_figure_else_the_tables_per_device(monkeypatch, name, message, expected):
    import jax

    from r1jax.sharding import topology

    monkeypatch.setattr(topology, "abstract_devices", lambda _: (jax.devices("cpu")[0],))
    monkeypatch.setattr(jax, "jit", lambda _: _FailsToCompile(message))
    # (device_hbm_bytes is cached per topology: the uncached function, so no figure leaks between cases)
    assert topology.device_hbm_bytes.__wrapped__(parse_topology(name)) == expected
