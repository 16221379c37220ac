"""The update-step reader and estimate (sharding.update_stats) on hand-made programs for the 8-device CPU mesh."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from r1jax.sharding.chips import ChipSpec
from r1jax.sharding.update_stats import StepStats, update_report

LAYERS, D, ROWS = 4, 64, 32


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))


def _train_like(mesh):
    """A layer scan over weights [L, D, D] split on their rows (FSDP-like: each layer all-gathers its weight)
    and rows split over the devices, differentiated: forward and backward scans."""
    rows = NamedSharding(mesh, P("x"))

    def loss(weights_LDD, x_BD):
        def layer(x_BD, w_DD):
            return jax.lax.with_sharding_constraint(jnp.tanh(x_BD @ w_DD), rows), None

        y_BD, _ = jax.lax.scan(layer, x_BD, weights_LDD)
        return jnp.sum(y_BD)

    weights = jax.ShapeDtypeStruct((LAYERS, D, D), jnp.float32, sharding=NamedSharding(mesh, P(None, "x")))
    x = jax.ShapeDtypeStruct((ROWS, D), jnp.float32, sharding=rows)
    return jax.jit(jax.grad(loss)).lower(weights, x).compile()


def test_a_layer_scan_is_counted_once_per_layer(mesh):
    compiled = _train_like(mesh)
    stats = StepStats.from_hlo(compiled.as_text())
    per_device_rows = ROWS // 8
    # forward x @ w; backward dx = dy @ w.T and dw = x.T @ dy: three [rows, D] x [D, D] products per layer
    assert stats.flops == LAYERS * 3 * 2 * per_device_rows * D * D
    # each layer's whole weight is gathered at least once (forward; the backward may gather it again); of the
    # 8 devices' gather a device receives 7/8 of the weight (it holds its own 1/8)
    received = D * D * 4 * 7 // 8
    assert stats.collective_bytes["all-gather"] >= LAYERS * received
    assert stats.collective_bytes["all-gather"] % received == 0
    # the weight gradient, split like the weight, is reduced over the rows' devices (an all-reduce's figure is
    # one phase's: 7/8 of its operand)
    assert stats.collective_bytes["reduce-scatter"] + stats.collective_bytes["all-reduce"] >= LAYERS * received
    assert stats.hbm_bytes >= LAYERS * D * D * 4  # every layer's weight read at least once


R, C = 8, 64  # each device's block of a collective's operand: [R, C] float32
BLOCK = R * C * 4


def _one_collective(kind, axis, n):
    """One collective over `axis` (of `n` devices) on each device's [R, C] block: (the program, the bytes a
    device receives by hand)."""
    collectives = {  # kind -> (the collective, the bytes one device receives from the n - 1 others)
        # the gathered [n R, C] result, less the device's own block: (n - 1) blocks
        "all-gather": (lambda x: jax.lax.all_gather(x, axis, tiled=True), (n - 1) * BLOCK),
        # the [R, C] operands summed and split n ways: a device receives the other n - 1 devices' R / n rows of
        # its part, (n - 1) / n of the operand (as a ring's n - 1 steps of R / n rows do)
        "reduce-scatter": (lambda x: jax.lax.psum_scatter(x, axis, tiled=True), (n - 1) * BLOCK // n),
        # one phase (the reduce-scatter's) of the two: (n - 1) / n of the operand
        "all-reduce": (lambda x: jax.lax.psum(x, axis), (n - 1) * BLOCK // n),
        # of the operand's n parts, one stays and n - 1 come from the others
        "all-to-all": (lambda x: jax.lax.all_to_all(x, axis, 0, 0, tiled=True), (n - 1) * BLOCK // n),
        # the whole block from the neighbour
        "collective-permute": (lambda x: jax.lax.ppermute(x, axis, [(i, (i + 1) % n) for i in range(n)]), BLOCK),
    }
    return collectives[kind]


@pytest.mark.parametrize("axis, n", [("pair", 2), ("quad", 4)])
@pytest.mark.parametrize("kind", ["all-gather", "reduce-scatter", "all-reduce", "all-to-all",
                                  "collective-permute"])
def test_a_collective_counts_the_bytes_a_device_receives_from_its_group(kind, axis, n):
    """On a 2 x 4 mesh of the 8 CPU devices, a collective over one axis runs in groups of 2 or 4
    (`replica_groups={{0,4},...}` or `{{0,1,2,3},{4,5,6,7}}`): a device receives (n - 1) / n of an all-gather's
    result or of a reduce-scatter's, all-reduce's (one phase) or all-to-all's operand, a collective-permute's
    whole operand (the others were counted whole: 2x too much in a group of 2, 4/3 in one of 4)."""
    mesh = jax.make_mesh((2, 4), ("pair", "quad"), axis_types=(AxisType.Explicit,) * 2)
    collective, received = _one_collective(kind, axis, n)
    every = P(("pair", "quad"))  # each device's [R, C] block of a [8 R, C] array
    program = jax.jit(jax.shard_map(collective, mesh=mesh, in_specs=every, out_specs=every, check_vma=False))
    text = program.lower(jax.ShapeDtypeStruct((8 * R, C), jnp.float32, sharding=NamedSharding(mesh, every))
                         ).compile().as_text()
    stats = StepStats.from_hlo(text)
    assert stats.collective_bytes == {k: received if k == kind else 0 for k in stats.collective_bytes}


def test_collectives_a_sharding_constraint_makes_count_the_bytes_received_over_their_mesh_axis():
    """The partitioner's own collectives (printed `replica_groups=mesh[...] {axis}` by this XLA): on a 2 x 4 mesh,
    gathering the rows split 4 ways and summing rows split 4 ways are collectives in groups of 4."""
    mesh = jax.make_mesh((2, 4), ("pair", "quad"), axis_types=(AxisType.Auto,) * 2)

    def program(x_BD, y_BD):
        gathered = jax.lax.with_sharding_constraint(x_BD * 2, NamedSharding(mesh, P("pair")))
        summed = jax.lax.with_sharding_constraint(jnp.sum(y_BD, axis=0), NamedSharding(mesh, P()))
        return gathered, summed

    x = jax.ShapeDtypeStruct((16, 64), jnp.float32, sharding=NamedSharding(mesh, P("pair", "quad")))
    y = jax.ShapeDtypeStruct((16, 64), jnp.float32, sharding=NamedSharding(mesh, P("quad")))
    stats = StepStats.from_hlo(jax.jit(program).lower(x, y).compile().as_text())
    # x's [8, 64] rows of a pair, gathered from 4 devices of [8, 16]: a device receives 3/4 of 8 x 64 floats;
    # y's rows summed on each device to a [64] partial sum, all-reduced over 4: one phase receives 3/4 of it
    assert stats.collective_bytes["all-gather"] == 8 * 64 * 4 * 3 // 4
    assert stats.collective_bytes["all-reduce"] == 64 * 4 * 3 // 4


def test_xla_cost_analysis_counts_the_scan_body_once(mesh):
    """Why the estimate reads the compiled text: XLA's own figure misses the other layers."""
    compiled = _train_like(mesh)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert cost["flops"] < StepStats.from_hlo(compiled.as_text()).flops / 2


V5P_LIKE = ChipSpec(peak_flops=400e12, hbm_bytes_per_s=2e12, ici_bytes_per_s=1e12, source="test")  # 5e11 in


def test_the_estimate_adds_collectives_to_the_slower_of_compute_and_hbm():
    stats = StepStats({"all-gather": 3e11, "reduce-scatter": 2e11}, hbm_bytes=int(4e12), flops=1.2e15)
    u = update_report(stats, V5P_LIKE, devices_per_chip=1, model_flops_per_chip=8e14)
    assert u["est_compute_s"] == pytest.approx(3.0) and u["est_hbm_s"] == pytest.approx(2.0)
    assert u["est_collective_s"] == pytest.approx(1.0)  # (3e11 + 2e11) bytes received / 5e11 B/s inbound
    assert u["est_step_s"] == pytest.approx(4.0) and u["est_step_overlapped_s"] == pytest.approx(3.0)
    assert u["est_mfu"] == pytest.approx(8e14 / (4.0 * 400e12))
    assert u["est_mfu_overlapped"] == pytest.approx(8e14 / (3.0 * 400e12))
    assert u["est_hfu"] == pytest.approx(1.2e15 / (4.0 * 400e12))
    moved = u["collective_bytes_per_chip"]
    assert moved["reduce-scatter"] == 2e11 and moved["all-to-all"] == 0


def test_an_all_reduce_moves_its_bytes_twice():
    """A reduce-scatter of the operand, then an all-gather of the result: twice what either moves alone."""
    reduce_scatter, all_reduce = (update_report(StepStats({kind: 1e11}, hbm_bytes=0, flops=4e14), V5P_LIKE,
                                                devices_per_chip=1, model_flops_per_chip=4e14)
                                  for kind in ("reduce-scatter", "all-reduce"))
    assert reduce_scatter["est_collective_s"] == pytest.approx(0.2)  # 1e11 bytes / 5e11 B/s inbound
    assert all_reduce["est_collective_s"] == pytest.approx(0.4)  # 2 x 1e11 / 5e11
    assert all_reduce["est_step_s"] == pytest.approx(1.0 + 0.4)  # compute 4e14 / 4e14 FLOP/s
    assert all_reduce["collective_bytes_per_chip"]["all-reduce"] == 1e11  # the bytes as counted


def test_a_chip_of_two_devices_does_both_devices_work():
    stats = StepStats({"all-reduce": 1e11}, hbm_bytes=int(1e12), flops=1e15)
    one, two = (update_report(stats, V5P_LIKE, devices_per_chip=n, model_flops_per_chip=1e15) for n in (1, 2))
    assert two["flops_per_chip"] == 2 * one["flops_per_chip"] and two["hbm_bytes_per_chip"] == 2e12
    assert two["est_step_s"] == pytest.approx(2 * one["est_step_s"])
    assert two["est_mfu"] == pytest.approx(one["est_mfu"] / 2)


def test_a_memory_bound_step_is_timed_by_hbm():
    stats = StepStats({}, hbm_bytes=int(6e12), flops=4e14)
    u = update_report(stats, V5P_LIKE, devices_per_chip=1, model_flops_per_chip=4e14)
    assert u["est_step_s"] == pytest.approx(3.0) and u["est_mfu"] == pytest.approx(1 / 3)


TPU_TEXT = """HloModule m
%region (a: s32[], b: s32[]) -> s32[] {
  %a = s32[]{:T(128)S(7)} parameter(0)
  %b = s32[]{:T(128)S(7)} parameter(1)
  ROOT %add = s32[]{:T(128)S(7)} add(%a, %b)
}, execution_thread="sparsecore"

ENTRY %main (g: s32[5], x: bf16[64,32], w: bf16[4,32,16]) -> bf16[64,16] {
  %g = s32[5]{0} parameter(0)
  %x = bf16[64,32]{1,0} parameter(1)
  %w = bf16[4,32,16]{2,1,0} parameter(2)
  ROOT %ragged-dot-none.3 = bf16[64,16]{1,0} custom-call(%g, %x, %w), custom_call_target="tpu_custom_call", metadata={op_name="jit(f)/expert_ffn/ragged_dot_general/ragged-dot-none"}
}
"""


def test_a_tpu_ragged_dot_kernel_counts_its_grouped_product_after_a_sparsecore_computation():
    """XLA TPU runs ragged_dot as a Mosaic kernel (a custom call): lhs [A, K] x rhs [G, K, N] -> [A, N] is
    2 A K N FLOPs; the module's computations may end in `}, execution_thread=...`."""
    stats = StepStats.from_hlo(TPU_TEXT)
    assert stats.flops == 2 * 64 * 32 * 16
    assert stats.hbm_bytes == 5 * 4 + 64 * 32 * 2 + 4 * 32 * 16 * 2 + 64 * 16 * 2  # operands read, result written


SLICE_ADD_TEXT = """HloModule m
%slice_add (buf: f32[16,8,4], i: s32[], v: f32[1,8,4]) -> f32[16,8,4] {
  %buf = f32[16,8,4]{2,1,0} parameter(0)
  %i = s32[] parameter(1)
  %v = f32[1,8,4]{2,1,0} parameter(2)
  %z = s32[] constant(0)
  %old = f32[1,8,4]{2,1,0} dynamic-slice(%buf, %i, %z, %z), dynamic_slice_sizes={1,8,4}
  %sum = f32[1,8,4]{2,1,0} add(%old, %v)
  ROOT %dus = f32[16,8,4]{2,1,0} dynamic-update-slice(%buf, %sum, %i, %z, %z)
}

ENTRY %main (b: f32[16,8,4], j: s32[], u: f32[1,8,4]) -> f32[16,8,4] {
  %b = f32[16,8,4]{2,1,0} parameter(0)
  %j = s32[] parameter(1)
  %u = f32[1,8,4]{2,1,0} parameter(2)
  ROOT %f = f32[16,8,4]{2,1,0} fusion(%b, %j, %u), kind=kLoop, calls=%slice_add
}
"""


def test_a_fusion_adding_into_one_slice_of_a_buffer_moves_only_that_slice():
    """`dw.at[g].add(v)` (the blocked MoE kernel's weight gradient, one expert per block) compiles to a
    fusion that slices the buffer, adds and updates it in place: it reads the slice, the index and the update
    and writes the slice, not the 16 x larger buffer."""
    slice_bytes = 8 * 4 * 4
    assert StepStats.from_hlo(SLICE_ADD_TEXT).hbm_bytes == slice_bytes + 4 + slice_bytes + slice_bytes


def test_a_loop_of_traced_length_counts_the_trips_its_name_scope_states():
    """A trip count known only at run time (the blocked MoE kernel's used blocks) is counted as the loop's
    `expected_trips_N` name scope states; a loop of traced length without one counts once."""
    def program(w_DD, x_BD, used):
        body = lambda _, x: jnp.tanh(x @ w_DD)
        with jax.named_scope("expected_trips_5"):
            x_BD = jax.lax.fori_loop(0, used, body, x_BD)
        return jax.lax.fori_loop(0, used, body, x_BD)  # unstated: once

    text = jax.jit(program).lower(jnp.ones((D, D)), jnp.ones((ROWS, D)), 3).compile().as_text()
    assert StepStats.from_hlo(text).flops == (5 + 1) * 2 * ROWS * D * D


def test_only_the_loop_directly_under_the_name_scope_takes_its_stated_count():
    """A loop nested in the body of the `expected_trips_5` loop (op_name `.../expected_trips_5/while/body/while`)
    is not the stated one: its traced length counts once per outer trip (5 x 1), not 5 (5 x 5)."""
    def program(w_DD, x_BD, used, inner):
        body = lambda _, x: jax.lax.fori_loop(0, inner, lambda _, y: jnp.tanh(y @ w_DD), x)
        with jax.named_scope("expected_trips_5"):
            return jax.lax.fori_loop(0, used, body, x_BD)

    text = jax.jit(program).lower(jnp.ones((D, D)), jnp.ones((ROWS, D)), 3, 2).compile().as_text()
    assert 'expected_trips_5/while/body/while"' in text
    assert StepStats.from_hlo(text).flops == 5 * 2 * ROWS * D * D


CHIP = ChipSpec(peak_flops=400e12, hbm_bytes_per_s=2e12, ici_bytes_per_s=1e12, source="test")  # 5e11 B/s in


def test_a_collective_bound_step_is_bounded_by_its_collectives_even_when_all_overlap():
    # compute 1 s, HBM 0.5 s, all-gathers 3 s at 5e11 B/s inbound: overlapped, the step still takes 3 s
    stats = StepStats({"all-gather": 1.5e12}, hbm_bytes=int(1e12), flops=4e14)
    u = update_report(stats, CHIP, devices_per_chip=1, model_flops_per_chip=2e14)
    assert u["est_collective_s"] == pytest.approx(3.0)
    assert u["est_step_overlapped_s"] == pytest.approx(3.0) and u["est_step_s"] == pytest.approx(4.0)
    assert u["est_mfu_overlapped"] == pytest.approx(2e14 / (3.0 * 400e12))


def test_two_devices_per_chip_double_the_hardware_flops():
    stats = StepStats({}, hbm_bytes=0, flops=1e14)  # per device; a v4 chip runs two
    u = update_report(stats, CHIP, devices_per_chip=2, model_flops_per_chip=1e14)
    assert u["flops_per_chip"] == 2e14 and u["est_step_s"] == pytest.approx(0.5)
    assert u["est_hfu"] == pytest.approx(1.0)  # the chip's FLOPs over the step: 2e14 / (0.5 s x 400e12)
