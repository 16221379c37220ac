"""The decode-step reader (sharding.decode_stats) and the compile report's decode line on what libtpu's programs
hold and the CPU's do not: weights handed on through the layer scan, `all-reduce-scatter` fusions; a small
model's step in microseconds."""

import re

import jax
import pytest
from jax.sharding import AxisType

from r1jax.sharding.chips import CHIPS
from r1jax.sharding.decode_stats import decode_stats, program_costs
from r1jax.sharding.roofline import decode_report
from tests.sharding.test_decode_stats import LAYERS, _decode_program


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))


def test_weights_the_decode_body_returns_through_the_layer_scan_are_still_loop_invariant(mesh):
    """libtpu's decode body hands its stacked weights on as the layer scan's output element
    (`get-tuple-element(while), index=j`), not as its own parameter's element: the reader took every gather
    of them for activation traffic (a training-layout sampler on v5e-8: 1 weight all-gather of 23 MB found)."""
    text = _decode_program(mesh, gather_rows=False)
    scan = re.search(r"(%while[.\w]*) = \((s32\[\], f32\[2,64\]\{1,0\}, f32\[3,8,64\]\{2,1,0\})\) while\(.*"
                     r"op_name=\"jit\(program\)/decode/while/body/while\"", text)
    root = re.search(r"ROOT (%tuple[.\w]*) = \(s32\[\], f32\[2,64\]\{1,0\}, f32\[3,8,64\]\{2,1,0\}\) "
                     r"tuple\((%[\w.\-]+), (%[\w.\-]+), (%[\w.\-]+)\)\n", text[scan.end():])
    assert scan and root, "the decode body: a layer scan, then the body's root tuple passing the weights"
    handed = (f"  %handed = f32[3,8,64]{{2,1,0}} get-tuple-element({scan.group(1)}), index=2\n"
              f"  ROOT {root.group(1)} = (s32[], f32[2,64]{{1,0}}, f32[3,8,64]{{2,1,0}}) "
              f"tuple({root.group(2)}, {root.group(3)}, %handed)\n")
    at = scan.end() + root.start()
    tpu_like = text[:at] + handed + text[scan.end() + root.end():]
    assert decode_stats(tpu_like) == decode_stats(text)
    assert decode_stats(tpu_like).weight_allgathers == LAYERS


ALL_REDUCE_SCATTER_IN_LOOP = """HloModule all_reduce_scatter_in_loop, num_partitions=4

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}
%all-reduce-scatter.1.clone.1 (input: f32[256,512]) -> f32[64,512] {
  %input = f32[256,512]{1,0} parameter(0)
  %all-reduce.136 = f32[256,512]{1,0} all-reduce(%input), channel_id=78, replica_groups={{0,1,2,3}}, use_global_device_ids=true, to_apply=%add
  %partition-id.32 = u32[] partition-id()
  %c64 = u32[] constant(64)
  %start = u32[] multiply(%partition-id.32, %c64)
  %c0 = u32[] constant(0)
  ROOT %dynamic-slice.149 = f32[64,512]{1,0} dynamic-slice(%all-reduce.136, %start, %c0), dynamic_slice_sizes={64,512}
}
%body (t: (s32[], f32[256,512], f32[64,512])) -> (s32[], f32[256,512], f32[64,512]) {
  %t = (s32[], f32[256,512]{1,0}, f32[64,512]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = f32[256,512]{1,0} get-tuple-element(%t), index=1
  %mine = f32[64,512]{1,0} fusion(%x), kind=kCustom, calls=%all-reduce-scatter.1.clone.1
  %plain = f32[256,512]{1,0} all-reduce(%x), channel_id=79, replica_groups={{0,1,2,3}}, use_global_device_ids=true, to_apply=%add
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[256,512]{1,0}, f32[64,512]{1,0}) tuple(%next, %plain, %mine)
}
%cond (u: (s32[], f32[256,512], f32[64,512])) -> pred[] {
  %u = (s32[], f32[256,512]{1,0}, f32[64,512]{1,0}) parameter(0)
  %j = s32[] get-tuple-element(%u), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}
ENTRY %main (a: f32[256,512], b: f32[64,512]) -> (s32[], f32[256,512], f32[64,512]) {
  %a = f32[256,512]{1,0} parameter(0)
  %b = f32[64,512]{1,0} parameter(1)
  %z = s32[] constant(0)
  %init = (s32[], f32[256,512]{1,0}, f32[64,512]{1,0}) tuple(%z, %a, %b)
  ROOT %loop = (s32[], f32[256,512]{1,0}, f32[64,512]{1,0}) while(%init), condition=%cond, body=%body, metadata={op_name="f/decode/while"}
}
"""


def test_libtpus_all_reduce_scatter_fusion_counts_as_a_reduce_scatter():
    """libtpu fuses an all-reduce with the slice each device keeps (`%all-reduce-scatter...`) and runs it as a
    reduce-scatter: counted as an all-reduce, its bytes were timed twice (the roofline's two phases)."""
    stats = decode_stats(ALL_REDUCE_SCATTER_IN_LOOP)
    received = 256 * 512 * 4 * 3 // 4  # of 4 devices: (n - 1) / n of the operand, once
    assert stats.collective_bytes["reduce-scatter"] == received
    assert stats.collective_bytes["all-reduce"] == received  # the plain one: one phase of its two
    assert program_costs(ALL_REDUCE_SCATTER_IN_LOOP)[0]["reduce-scatter"] == 5 * received


def test_a_small_models_decode_step_reads_in_microseconds_and_a_step_under_the_limit_is_explained():
    """It read "0.02 ms per step"; an estimate below the HBM-read limit (a model held in on-chip memory,
    `S(1)`: bench_qwen3 on v5e-8 read 0.49x) went without a word."""
    from r1jax.rl.cli.compile import describe_decode

    moved = dict.fromkeys(["all-gather", "reduce-scatter", "all-to-all", "all-reduce", "collective-permute"], 0)
    stats = type("Stats", (), {"flops": 0.0, "hbm_bytes": 2765e9 * 19.3e-6, "collective_bytes": moved,
                               "weight_allgather_bytes": 0, "weight_allgathers": 0, "assumed_trips": ()})()
    below = decode_report(stats, CHIPS["v5p"], devices_per_chip=1, rows=8, chips=1,
                          min_read_bytes_per_chip=2765e9 * 40e-6)
    text = describe_decode(below, rows=8)
    assert "roofline: 19.3 us per step (compute 0 us, HBM 19.3 us, collectives 0 us)" in text
    assert "HBM-read limit 40 us (0.48x); below the limit: the compiled loop keeps weights or cache in on-chip" in text
    above = decode_report(stats, CHIPS["v5p"], devices_per_chip=1, rows=8, chips=1,
                          min_read_bytes_per_chip=2765e9 * 10e-6)
    assert "(1.93x)" in describe_decode(above, rows=8) and "below the limit" not in describe_decode(above, rows=8)
    slow = type("Stats", (), {"flops": 0.0, "hbm_bytes": 2765e9 * 1.5, "collective_bytes": moved,
                              "weight_allgather_bytes": 0, "weight_allgathers": 0, "assumed_trips": ()})()
    seconds = decode_report(slow, CHIPS["v5p"], devices_per_chip=1, rows=8, chips=1, min_read_bytes_per_chip=2765e9)
    assert "roofline: 1.5 s per step" in describe_decode(seconds, rows=8)  # it read "1.5e+03 ms"
