"""The HLO text reader (sharding.hlo_text): bytes of every element type, a collective's group size in each of XLA's
group modes, a while loop's stated trip count and a constant's value, each against a reference written by hand
(element widths: ml_dtypes' and NumPy's own)."""

import ml_dtypes
import numpy as np
import pytest

from r1jax.sharding.hlo_text import DTYPE_BYTES, collective_group_size, leaf_bytes, module_devices, \
    parse_instruction, shape_bytes

# XLA's element type names -> the NumPy / ml_dtypes type of the same width
REFERENCE = {
    "pred": np.bool_, "s2": ml_dtypes.int2, "u2": ml_dtypes.uint2, "s4": ml_dtypes.int4, "u4": ml_dtypes.uint4,
    "s8": np.int8, "u8": np.uint8, "s16": np.int16, "u16": np.uint16, "s32": np.int32, "u32": np.uint32,
    "s64": np.int64, "u64": np.uint64, "f16": np.float16, "bf16": ml_dtypes.bfloat16, "f32": np.float32,
    "f64": np.float64, "c64": np.complex64, "c128": np.complex128, "f8e4m3fn": ml_dtypes.float8_e4m3fn,
    "f8e5m2": ml_dtypes.float8_e5m2, "f8e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "f8e5m2fnuz": ml_dtypes.float8_e5m2fnuz, "f8e4m3b11fnuz": ml_dtypes.float8_e4m3b11fnuz,
    "f8e4m3": ml_dtypes.float8_e4m3, "f8e3m4": ml_dtypes.float8_e3m4, "f8e8m0fnu": ml_dtypes.float8_e8m0fnu,
    "f4e2m1fn": ml_dtypes.float4_e2m1fn,
}


def _bits(dtype) -> int:
    """Bits per element: a one-byte NumPy type may hold a sub-byte one (int4, float4: ml_dtypes' bits)."""
    dtype = np.dtype(dtype)
    if dtype.itemsize == 1 and dtype != np.bool_:
        info = ml_dtypes.iinfo if np.issubdtype(dtype, np.integer) or "int" in dtype.name else ml_dtypes.finfo
        return info(dtype).bits
    return dtype.itemsize * 8


def test_every_element_type_has_a_reference_width():
    assert set(DTYPE_BYTES) - {"token"} == set(REFERENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_an_array_counts_its_elements_bits(name):
    assert shape_bytes(f"{name}[1000,8]{{1,0}}") == 1000 * 8 * _bits(REFERENCE[name]) // 8
    assert shape_bytes("token[]") == 0


def test_an_unknown_element_type_counts_nothing_and_the_rest_of_the_tuple_still_counts():
    assert leaf_bytes("(f32[2]{0}, q7[4]{0}, s32[])") == [8, 4]


# replica_count=2, num_partitions=4: 8 devices
MODES = [
    # no channel_id: groups of replicas; {} is all of them
    ("all-reduce(%a), replica_groups={}", 2),
    # a channel_id and global device ids: {} is every device
    ("all-gather(%a), channel_id=1, replica_groups={}, dimensions={0}, use_global_device_ids=true", 8),
    # a channel_id on an all-to-all (or permute): groups of partitions, {} all 4
    ("all-to-all(%a), channel_id=2, replica_groups={}, dimensions={0}", 4),
    # an all-reduce with a channel_id but no global ids: groups of replicas, each with every partition of theirs
    ("all-reduce(%a), channel_id=3, replica_groups={}", 2 * 4),
    ("all-reduce(%a), channel_id=4, replica_groups={{0},{1}}", 1 * 4),
    # explicit groups in any other mode are their own size
    ("all-to-all(%a), channel_id=5, replica_groups={{0,1}}, dimensions={0}", 2),
]


@pytest.mark.parametrize("op, size", MODES)
def test_a_collectives_group_size_in_each_of_xlas_group_modes(op, size):
    devices = module_devices("HloModule m, replica_count=2, num_partitions=4\n")
    inst = parse_instruction(f"  %c = f32[64]{{0}} {op}")
    kind = inst.opcode
    assert devices == (2, 4) and collective_group_size(inst, kind, devices) == size


def test_a_loops_stated_trip_count_and_a_negative_constant_read_whole():
    """A 61-layer scan's stated count (DeepSeek-V3), not its first digit; a counter starting at -2."""
    loop = parse_instruction('  %w = (s32[], f32[8]{0}) while(%t), condition=%c, body=%b, '
                             'backend_config={"known_trip_count":{"n":"61"}}')
    assert loop.trip_count == 61
    assert parse_instruction("  %k = s32[] constant(-2)").integer == -2
