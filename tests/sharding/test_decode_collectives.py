"""The decode-step reader's collectives (sharding.decode_stats): what each kind moves, group sizes in every
replica-groups format, and their time on the interconnect (sharding.roofline)."""

import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from r1jax.sharding.chips import CHIPS
from r1jax.sharding.decode_stats import decode_stats, program_costs
from r1jax.sharding.roofline import collective_seconds, decode_report
from r1jax.sharding.hlo_text import module_devices, parse_instruction
from tests.sharding.test_decode_stats import D, ROWS, STEPS, mesh  # noqa: F401 (mesh: a fixture)


def test_a_collective_whose_operand_is_staged_on_chip_moves_its_bytes_all_the_same(mesh):
    """A TPU program may hold a collective's operand in on-chip memory (`S(1)` in its layout): it is not HBM
    traffic, but it crosses the interconnect as any other (the reader once counted it as 0)."""
    rows = NamedSharding(mesh, P("x"))

    def program(x_BD):
        def step(carry):
            i, x_BD = carry
            summed = jax.lax.with_sharding_constraint(jnp.sum(jnp.tanh(x_BD), axis=0, keepdims=True),
                                                      NamedSharding(mesh, P()))
            return i + 1, x_BD + summed

        with jax.named_scope("decode"):
            return jax.lax.while_loop(lambda c: c[0] < STEPS, step, (0, x_BD))

    text = jax.jit(program).lower(jax.ShapeDtypeStruct((ROWS, D), jnp.float32, sharding=rows)).compile().as_text()
    reduce = re.search(r"%\S+ = f32\[64\]\{0\} all-reduce\((%[\w.\-]+)\)", text)
    assert reduce, "the step's sum over the rows' shards: an all-reduce of each device's partial [D] sum"
    operand = reduce.group(1)
    staged = re.sub(rf"({re.escape(operand)} = f32\[64\])\{{0\}}", r"\1{0:S(1)}", text)
    before, after = decode_stats(text), decode_stats(staged)
    # one phase of the all-reduce over 8 devices: a device receives 7/8 of the [D] float32 operand
    assert staged != text and before.collective_bytes["all-reduce"] == D * 4 * 7 // 8
    assert after.collective_bytes == before.collective_bytes and after.hbm_bytes < before.hbm_bytes


# replica_groups as XLA prints them (the mesh lines as this XLA prints a sharding constraint's collectives on a
# 2 x 4 CPU mesh) -> devices per group
REPLICA_GROUPS = {
    "{{0,4},{1,5},{2,6},{3,7}}": 2,
    "{{0,1,2,3},{4,5,6,7}}": 4,
    "{{0,1,2,3,4,5,6,7}}": 8,
    "[2,4]<=[8]": 4,  # 2 groups of 4: {0,1,2,3},{4,5,6,7}
    "[4,2]<=[2,4]T(1,0)": 2,  # 4 groups of 2: {0,4},{1,5},{2,6},{3,7}
    "[1,8]<=[8]": 8,
    "mesh['axis_0'=8,'axis_1'=1] {'axis_0'}": 8,
    "mesh['axis_0'=2,'axis_1'=4] {'axis_1'}": 4,
    "mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_0'}": 4,
    "mesh['a'=2,'b'=4] {'a','b'}": 8,
    "mesh['x'=8] {'x':(1)2}": 2,  # a sub-axis: 2 of x's 8
    "maximal_mesh[device_id=5] {}": 1,  # one device
    "{}": None,  # every device of the module: its replica_count / num_partitions
}


@pytest.mark.parametrize("groups, size", REPLICA_GROUPS.items())
def test_a_collectives_group_size_is_read_from_each_replica_groups_format(groups, size):
    line = (f"  %ag = f32[8,64]{{1,0}} all-gather(%p), channel_id=1, replica_groups={groups}, dimensions={{0}}, "
            'use_global_device_ids=true, metadata={op_name="jit(f)/all_gather"}')
    inst = parse_instruction(line)
    assert inst.opcode == "all-gather" and inst.replica_group_size == size


def test_the_modules_device_counts_are_read_from_its_header():
    """XLA prints replica_count and num_partitions only where they are not 1."""
    assert module_devices("HloModule jit_f, is_scheduled=true, entry_computation_layout={(f32[2]{0})->f32[2]{0}}, "
                          "num_partitions=8\n\nENTRY %main () -> f32[] {\n}") == (1, 8)
    assert module_devices("HloModule m, replica_count=4\n") == (4, 1)
    assert module_devices("HloModule m\n") == (1, 1)
    assert module_devices("ENTRY %main () -> f32[] {\n}") is None


EMPTY_GROUPS = """HloModule m, replica_count=4, num_partitions=2

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

ENTRY %main (a: f32[64]) -> (f32[64], f32[64]) {
  %a = f32[64]{0} parameter(0)
  %replicas = f32[64]{0} all-reduce(%a), replica_groups={}, to_apply=%add
  %both = f32[64]{0} all-reduce(%a), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  ROOT %t = (f32[64]{0}, f32[64]{0}) tuple(%replicas, %both)
}
"""


def test_empty_or_replica_groups_take_their_size_from_the_modules_device_counts():
    """Without a channel_id the groups are replicas, `{}` all 4 of them: 3/4 of the 256-byte operand received.
    With one but without `use_global_device_ids=true`, an all-reduce's group of replicas {0,1} takes both
    partitions of each (XLA's cross-replica-and-partition mode): 4 devices, 3/4 again. Without the module's
    header the first group's size is unknown: the whole operand counts; the second's, 2 replicas x ? partitions,
    too."""
    assert program_costs(EMPTY_GROUPS)[0]["all-reduce"] == 2 * 256 * 3 // 4
    headerless = EMPTY_GROUPS.split("\n", 1)[1]
    assert program_costs(headerless)[0]["all-reduce"] == 2 * 256


def test_an_all_gather_of_4_mib_over_8_devices_takes_6_microseconds_on_v5p():
    """The review's example: a [1M] float32 array (4 MiB) gathered from 8 devices' [128K] blocks: a device
    receives 7/8 of 4,194,304 bytes = 3,670,016, which at v5p's 600 GB/s inbound (half its bidirectional
    1,200 GB/s) takes 6.12 us (it was counted 4,194,304 bytes at 1,200 GB/s: 3.50 us)."""
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    gather = jax.shard_map(lambda x: jax.lax.all_gather(x, "x", tiled=True), mesh=mesh, in_specs=P("x"),
                           out_specs=P(), check_vma=False)
    x = jax.ShapeDtypeStruct((1 << 20,), jnp.float32, sharding=NamedSharding(mesh, P("x")))
    moved = program_costs(jax.jit(gather).lower(x).compile().as_text())[0]
    assert moved == {"all-gather": 3_670_016, "all-reduce": 0, "reduce-scatter": 0, "all-to-all": 0,
                     "collective-permute": 0}
    seconds = collective_seconds(moved, CHIPS["v5p"])
    assert seconds == pytest.approx(3_670_016 / 600e9) and seconds == pytest.approx(6.12e-6, abs=0.005e-6)


def test_collective_time_is_the_bytes_received_over_the_inbound_bandwidth_all_reduces_twice():
    """v5p: 1,200 GB/s bidirectional, 600 GB/s in. An all-reduce's bytes (one phase's) count twice."""
    moved = {"all-gather": 3e9, "reduce-scatter": 1e9, "all-to-all": 0.5e9, "all-reduce": 0.75e9,
             "collective-permute": 0.25e9}
    # (3 + 1 + 0.5 + 2 x 0.75 + 0.25) GB = 6.25 GB at 600 GB/s
    assert collective_seconds(moved, CHIPS["v5p"]) == pytest.approx(6.25e9 / 600e9)
    # v4's per-chip ICI figure is not published: not timed (it read 0 s, and the step and MFU estimates then
    # left the collectives out without saying so); nothing to move is 0 s on any chip
    assert collective_seconds(moved, CHIPS["v4"]) is None
    assert collective_seconds(dict.fromkeys(moved, 0), CHIPS["v4"]) == 0.0


def test_v4_estimates_say_their_collectives_are_not_timed():
    from r1jax.rl.cli.compile import describe_decode, describe_update
    from r1jax.sharding.update_stats import update_report

    moved = {"all-gather": 3e9, "reduce-scatter": 0, "all-to-all": 0, "all-reduce": 1e9, "collective-permute": 0}
    stats = type("Stats", (), {"flops": 275e12 * 0.002, "hbm_bytes": 1200e9 * 0.001, "collective_bytes": moved,
                               "weight_allgather_bytes": 0, "weight_allgathers": 0, "assumed_trips": ()})()
    decode = decode_report(stats, CHIPS["v4"], devices_per_chip=1, rows=8, chips=1, min_read_bytes_per_chip=1e9)
    assert decode["est_collective_s"] is None and decode["est_step_s"] == pytest.approx(0.002)  # compute only
    assert "collectives not timed: no published ICI bandwidth" in describe_decode(decode, rows=8)
    update = update_report(stats, CHIPS["v4"], devices_per_chip=1, model_flops_per_chip=275e12 * 0.001)
    assert update["est_collective_s"] is None and update["est_mfu"] == pytest.approx(0.5)
    assert "collectives not timed" in describe_update(update)


ASYNC_AND_RAGGED = """HloModule m, num_partitions=8
%body (t: (s32[], f32[8,16], f32[4,16], s32[8])) -> (s32[], f32[8,16], f32[4,16], s32[8]) {
  %t = (s32[], f32[8,16]{1,0}, f32[4,16]{1,0}, s32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %w = f32[8,16]{1,0} get-tuple-element(%t), index=1
  %x = f32[4,16]{1,0} get-tuple-element(%t), index=2
  %sizes = s32[8]{0} get-tuple-element(%t), index=3
  %wag = (f32[8,16]{1,0}, f32[64,16]{1,0}) all-gather-start(%w), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}, use_global_device_ids=true
  %wdone = f32[64,16]{1,0} all-gather-done(%wag)
  %both = ((f32[8,16]{1,0}, f32[4,16]{1,0}), (f32[64,16]{1,0}, f32[32,16]{1,0})) all-gather-start(%w, %x), channel_id=2, replica_groups=[1,8]<=[8], dimensions={0}, use_global_device_ids=true
  %bdone = (f32[64,16]{1,0}, f32[32,16]{1,0}) all-gather-done(%both)
  %sent = f32[4,16]{1,0} ragged-all-to-all(%x, %x, %sizes, %sizes, %sizes, %sizes), channel_id=3, replica_groups=[1,8]<=[8]
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[8,16]{1,0}, f32[4,16]{1,0}, s32[8]{0}) tuple(%next, %w, %sent, %sizes)
}
%cond (u: (s32[], f32[8,16], f32[4,16], s32[8])) -> pred[] {
  %u = (s32[], f32[8,16]{1,0}, f32[4,16]{1,0}, s32[8]{0}) parameter(0)
  %j = s32[] get-tuple-element(%u), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}
ENTRY %main (a: f32[8,16], b: f32[4,16], c: s32[8]) -> (s32[], f32[8,16], f32[4,16], s32[8]) {
  %a = f32[8,16]{1,0} parameter(0)
  %b = f32[4,16]{1,0} parameter(1)
  %c = s32[8]{0} parameter(2)
  %z = s32[] constant(0)
  %init = (s32[], f32[8,16]{1,0}, f32[4,16]{1,0}, s32[8]{0}) tuple(%z, %a, %b, %c)
  ROOT %loop = (s32[], f32[8,16]{1,0}, f32[4,16]{1,0}, s32[8]{0}) while(%init), condition=%cond, body=%body, metadata={op_name="f/decode/while"}
}
"""


def test_async_multi_operand_and_ragged_collectives_in_the_decode_loop():
    """As libtpu writes them: an async all-gather moves its result, not the start's (operand, result) tuple
    (7/8 of 4 KiB from 8 devices); one gathering a weight and a carried activation together is no weight
    all-gather; a ragged all-to-all sends its input (7/8 of 256 bytes), counted as an all-to-all."""
    stats = decode_stats(ASYNC_AND_RAGGED)
    weight = 64 * 16 * 4 * 7 // 8
    assert (stats.weight_allgathers, stats.weight_allgather_bytes) == (1, weight)
    assert stats.collective_bytes["all-gather"] == weight + (64 * 16 + 32 * 16) * 4 * 7 // 8
    assert stats.collective_bytes["all-to-all"] == 4 * 16 * 4 * 7 // 8


MOVED_WEIGHT = """HloModule m, num_partitions=8
%body (t: (s32[], f32[8,16], f32[8,16])) -> (s32[], f32[8,16], f32[8,16]) {
  %t = (s32[], f32[8,16]{1,0}, f32[8,16]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %w = f32[8,16]{1,0} get-tuple-element(%t), index=1
  %x = f32[8,16]{1,0} get-tuple-element(%t), index=2
  MOVED
  %ag = f32[64,16]{1,0} all-gather(%moved), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}, use_global_device_ids=true
  %x2 = f32[8,16]{1,0} negate(%x)
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[8,16]{1,0}, f32[8,16]{1,0}) tuple(%next, %w, %x2)
}
%cond (u: (s32[], f32[8,16], f32[8,16])) -> pred[] {
  %u = (s32[], f32[8,16]{1,0}, f32[8,16]{1,0}) parameter(0)
  %j = s32[] get-tuple-element(%u), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}
ENTRY %main (a: f32[8,16], b: f32[8,16]) -> (s32[], f32[8,16], f32[8,16]) {
  %a = f32[8,16]{1,0} parameter(0)
  %b = f32[8,16]{1,0} parameter(1)
  %z = s32[] constant(0)
  %init = (s32[], f32[8,16]{1,0}, f32[8,16]{1,0}) tuple(%z, %a, %b)
  ROOT %loop = (s32[], f32[8,16]{1,0}, f32[8,16]{1,0}) while(%init), condition=%cond, body=%body, metadata={op_name="f/decode/while"}
}
"""


@pytest.mark.parametrize("moved", [
    "%moved = f32[16,8]{1,0} transpose(%w), dimensions={1,0}",
    "%moved = f32[2,8,16]{2,1,0} broadcast(%w), dimensions={1,2}",
    "%moved = f32[16,16]{1,0} concatenate(%w, %w), dimensions={0}",
    "%c = f32[8,16]{1,0} copy(%w)\n  %moved = f32[128]{0} reshape(%c)",
])
def test_a_weight_moved_about_before_its_gather_is_still_a_weight_allgather(moved):
    """The loop-invariant weight (element 1: the body passes it on) transposed, broadcast, concatenated or
    copied and reshaped before its all-gather: a weight all-gather; the same of the carried activation
    (element 2: the body changes it) is none."""
    weight = decode_stats(MOVED_WEIGHT.replace("MOVED", moved))
    carried = decode_stats(MOVED_WEIGHT.replace("MOVED", moved.replace("(%w", "(%x").replace(", %w)", ", %x)")))
    assert (weight.weight_allgathers, weight.weight_allgather_bytes) == (1, 64 * 16 * 4 * 7 // 8)
    assert (carried.weight_allgathers, carried.weight_allgather_bytes) == (0, 0)
    assert carried.collective_bytes["all-gather"] == weight.collective_bytes["all-gather"] == 64 * 16 * 4 * 7 // 8
