"""The decode-step reader (sharding.decode_stats) on hand-made programs compiled for the 8-device CPU mesh."""

import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from r1jax.sharding.chips import CHIPS
from r1jax.sharding.decode_stats import decode_stats, phase_step_shares
from r1jax.sharding.roofline import decode_report, estimate
from r1jax.sharding.hlo_text import leaf_bytes, parse_instruction

LAYERS, D, ROWS, STEPS = 3, 64, 16, 5


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))


def _decode_program(mesh, gather_rows: bool):
    """A `decode` while loop over a layer scan whose stacked weights [L, D, D] are split on their rows: each
    layer iteration all-gathers its weight (the loop-invariant code motion cannot hoist a gather of a slice
    that depends on the layer counter). With `gather_rows`, each step also gathers the carried rows."""
    rows = NamedSharding(mesh, P("x"))

    def program(weights_LDD, x_BD):
        def step(carry):
            i, x_BD = carry

            def layer(x_BD, w_DD):
                return jax.lax.with_sharding_constraint(jnp.tanh(x_BD @ w_DD), rows), None

            x_BD, _ = jax.lax.scan(layer, x_BD, weights_LDD)
            if gather_rows:
                x_BD = jax.lax.with_sharding_constraint(x_BD, NamedSharding(mesh, P()))
                x_BD = jax.lax.with_sharding_constraint(x_BD + jnp.sum(x_BD, axis=0), rows)
            return i + 1, x_BD

        with jax.named_scope("decode"):
            return jax.lax.while_loop(lambda c: c[0] < STEPS, step, (0, x_BD))

    weights = jax.ShapeDtypeStruct((LAYERS, D, D), jnp.float32, sharding=NamedSharding(mesh, P(None, "x")))
    x = jax.ShapeDtypeStruct((ROWS, D), jnp.float32, sharding=rows)
    return jax.jit(program).lower(weights, x).compile().as_text()


def test_weight_allgathers_in_the_layer_scan_are_counted_per_layer(mesh):
    stats = decode_stats(_decode_program(mesh, gather_rows=False))
    layer_weight = D * D * 4  # each layer's whole float32 weight, gathered on every device
    received = layer_weight * 7 // 8  # of 8 devices: a device holds its 1/8 and receives the other 7/8
    assert stats.loops == 1
    assert stats.weight_allgathers == LAYERS
    assert stats.weight_allgather_bytes == LAYERS * received
    assert stats.collective_bytes["all-gather"] == LAYERS * received
    assert stats.flops == LAYERS * 2 * (ROWS // 8) * D * D  # each device's rows through each layer


def test_a_trip_count_the_compiler_does_not_state_is_read_from_the_loop_condition(mesh):
    """libtpu states no `known_trip_count`: the layer scan's `i < L` condition gives it."""
    text = _decode_program(mesh, gather_rows=False)
    stated = decode_stats(text)
    unstated = decode_stats(re.sub(r'"known_trip_count":\{"n":"\d+"\},?', "", text))
    assert "known_trip_count" in text and unstated == stated


def test_gathering_carried_rows_is_not_a_weight_allgather(mesh):
    stats = decode_stats(_decode_program(mesh, gather_rows=True))
    # received per device, 7/8 of each gathered array (8 devices): the layers' weights + the whole rows
    assert stats.weight_allgather_bytes == LAYERS * D * D * 4 * 7 // 8
    assert stats.collective_bytes["all-gather"] == (LAYERS * D * D * 4 + ROWS * D * 4) * 7 // 8


def test_a_program_without_a_decode_loop_has_no_decode_stats(mesh):
    text = jax.jit(lambda x: x * 2).lower(jnp.ones((8,))).compile().as_text()
    assert decode_stats(text) is None


def test_shapes_count_bytes_per_array_and_vmem_is_not_hbm():
    assert leaf_bytes("(s32[], bf16[4,8]{1,0}, f32[2,3]{1,0:T(8,128)S(1)})") == [4, 64, 24]
    assert leaf_bytes("f32[2,3]{1,0:T(8,128)S(1)}", hbm_only=True) == [0]
    inst = parse_instruction('  ROOT %t = (f32[2]{0}, s4[4]{0}) tuple(%a, %b), metadata={op_name="x"}')
    assert inst.root and inst.opcode == "tuple" and inst.operands == ["a", "b"] and inst.bytes == 10


def test_the_roofline_adds_collectives_to_the_slower_of_compute_and_hbm(mesh):
    stats = decode_stats(_decode_program(mesh, gather_rows=False))
    v5p = CHIPS["v5p"]
    roof = estimate(stats, v5p)
    assert roof.hbm_s == stats.hbm_bytes / v5p.hbm_bytes_per_s
    # the only collectives are the weight all-gathers: 3 layers x 7/8 of 16 KiB = 43,008 bytes received, at
    # v5p's inbound 600 GB/s (half its bidirectional 1,200 GB/s)
    assert stats.weight_allgather_bytes == stats.collective_bytes["all-gather"] == 3 * 16384 * 7 // 8 == 43008
    assert roof.collective_s == pytest.approx(43008 / 600e9)
    assert roof.step_s == max(roof.compute_s, roof.hbm_s) + roof.collective_s
    report = decode_report(stats, v5p, devices_per_chip=1, rows=ROWS, chips=8, min_read_bytes_per_chip=1000)
    assert report["est_tokens_per_s_per_chip"] == pytest.approx(ROWS / roof.step_s / 8)
    assert report["est_vs_hbm_read_limit"] == pytest.approx(roof.step_s / (1000 / v5p.hbm_bytes_per_s))


HAND_WRITTEN = """HloModule m
%inner (p0: f32[4,8]) -> f32[1,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %c = s32[] constant(0)
  ROOT %ds = f32[1,8]{1,0} dynamic-slice(%p0, %c, %c), dynamic_slice_sizes={1,8}
}
%outer (q0: f32[4,8]) -> f32[1,8] {
  %q0 = f32[4,8]{1,0} parameter(0)
  ROOT %f = f32[1,8]{1,0} fusion(%q0), kind=kLoop, calls=%inner
}
%body (t: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %t = (s32[], f32[4,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %w = f32[4,8]{1,0} get-tuple-element(%t), index=1
  %row = f32[1,8]{1,0} fusion(%w), kind=kLoop, calls=%outer
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[4,8]{1,0}) tuple(%next, %w)
}
%cond (u: (s32[], f32[4,8])) -> pred[] {
  %u = (s32[], f32[4,8]{1,0}) parameter(0)
  %j = s32[] get-tuple-element(%u), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}
ENTRY %main (a: f32[4,8]) -> (s32[], f32[4,8]) {
  %a = f32[4,8]{1,0} parameter(0)
  %z = s32[] constant(0)
  %init = (s32[], f32[4,8]{1,0}) tuple(%z, %a)
  ROOT %loop = (s32[], f32[4,8]{1,0}) while(%init), condition=%cond, body=%body, metadata={op_name="f/decode/while"}
}
"""


STATIC_SLICE = "  ROOT %ds = f32[1,8]{1,0} slice(%p0), slice={[2:3], [0:8]}"


@pytest.mark.parametrize("static", [False, True])
def test_a_slice_taken_inside_nested_fusions_reads_only_the_slice(static):
    """A traced slice (a layer scan's weight) or a static one (an unrolled stack's layer of the KV cache)."""
    text = re.sub(r"  ROOT %ds = .*", STATIC_SLICE, HAND_WRITTEN) if static else HAND_WRITTEN
    assert ("slice(%p0)" in text) == static
    stats = decode_stats(text)
    # the row fusion reads one 8-float row (not the 4 x 8 weight) and writes it; the counter's add 4 + 4 + 4
    assert stats.hbm_bytes == 2 * 8 * 4 + 3 * 4
    assert stats.loops == 1 and sum(stats.collective_bytes.values()) == 0


def test_a_loop_with_a_traced_bound_counts_the_given_trip_count(mesh):
    """The block-wise cache read runs ceil(live / block) blocks: a traced bound, taken as `dynamic_trips`."""
    def program(w_DD, x_BD, live):
        def step(carry):
            i, x_BD = carry
            x_BD = jax.lax.fori_loop(0, live + i, lambda _, x: jnp.tanh(x @ w_DD), x_BD)
            return i + 1, x_BD

        with jax.named_scope("decode"):
            return jax.lax.while_loop(lambda c: c[0] < STEPS, step, (0, x_BD))

    text = jax.jit(program).lower(jnp.ones((D, D)), jnp.ones((ROWS, D)), 2).compile().as_text()
    one, three = decode_stats(text), decode_stats(text, dynamic_trips=3)
    assert one.flops == 2 * ROWS * D * D and three.flops == 3 * one.flops


def test_decode_phases_count_by_their_share_of_the_steps(mesh):
    """`sampling.cache_phases`: the first phase's loop (`decode`) and a later one's (`decode_phase_48`, here
    twice the products a step) count by the steps they run of a 48-token budget, 16 and 32; the tail's loop
    (continuous batching's `decode_tail_2`) is not read; without phases the decode loops are summed."""
    def program(w_DD, x_BD):
        def loop(products):
            def step(carry):
                i, x_BD = carry
                for _ in range(products):
                    x_BD = jnp.tanh(x_BD @ w_DD)
                return i + 1, x_BD
            return step

        carry = (0, x_BD)
        for name, products in (("decode", 1), ("decode_phase_48", 2), ("decode_tail_2", 5)):
            with jax.named_scope(name):
                carry = jax.lax.while_loop(lambda c: c[0] < STEPS, loop(products), carry)
        return carry

    text = jax.jit(program).lower(jnp.ones((D, D)), jnp.ones((ROWS, D))).compile().as_text()
    product = 2 * ROWS * D * D
    assert phase_step_shares((16, 48)) == [16 / 48, 32 / 48] and phase_step_shares((48,)) == [1.0]
    phased = decode_stats(text, phase_ends=(16, 48))
    assert phased.loops == 2 and phased.flops == pytest.approx(product * (16 / 48 + 2 * 32 / 48))
    assert decode_stats(text).flops == 3 * product  # one phase: each loop once
    with pytest.raises(ValueError, match="decode_phase_48.* belongs to no phase of \\(16, 24\\)"):
        decode_stats(text, phase_ends=(16, 24))  # a loop over 48 slots where the phases end at 24


SCATTER_IN_LOOP = """HloModule scatter_in_loop

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}
%scatter_fused (p0: f32[64,8], p1: s32[2,1], p2: f32[2,8]) -> f32[64,8] {
  %p0 = f32[64,8]{1,0} parameter(0)
  %p1 = s32[2,1]{1,0} parameter(1)
  %p2 = f32[2,8]{1,0} parameter(2)
  ROOT %sc = f32[64,8]{1,0} scatter(%p0, %p1, %p2), update_window_dims={1}, inserted_window_dims={0}, scatter_dims_to_operand_dims={0}, index_vector_dim=1, to_apply=%add
}
%body (t: (s32[], f32[64,8], s32[2,1], f32[2,8])) -> (s32[], f32[64,8], s32[2,1], f32[2,8]) {
  %t = (s32[], f32[64,8]{1,0}, s32[2,1]{1,0}, f32[2,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %buf = f32[64,8]{1,0} get-tuple-element(%t), index=1
  %idx = s32[2,1]{1,0} get-tuple-element(%t), index=2
  %upd = f32[2,8]{1,0} get-tuple-element(%t), index=3
  %new = f32[64,8]{1,0} fusion(%buf, %idx, %upd), kind=kCustom, calls=%scatter_fused
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], f32[64,8]{1,0}, s32[2,1]{1,0}, f32[2,8]{1,0}) tuple(%next, %new, %idx, %upd)
}
%cond (u: (s32[], f32[64,8], s32[2,1], f32[2,8])) -> pred[] {
  %u = (s32[], f32[64,8]{1,0}, s32[2,1]{1,0}, f32[2,8]{1,0}) parameter(0)
  %j = s32[] get-tuple-element(%u), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}
ENTRY %main (a: f32[64,8], b: s32[2,1], c: f32[2,8]) -> (s32[], f32[64,8], s32[2,1], f32[2,8]) {
  %a = f32[64,8]{1,0} parameter(0)
  %b = s32[2,1]{1,0} parameter(1)
  %c = f32[2,8]{1,0} parameter(2)
  %z = s32[] constant(0)
  %init = (s32[], f32[64,8]{1,0}, s32[2,1]{1,0}, f32[2,8]{1,0}) tuple(%z, %a, %b, %c)
  ROOT %loop = (s32[], f32[64,8]{1,0}, s32[2,1]{1,0}, f32[2,8]{1,0}) while(%init), condition=%cond, body=%body, metadata={op_name="f/decode/while"}
}
"""


def test_a_scatter_fusion_updates_its_buffer_in_place_reading_and_writing_the_updated_rows():
    """`out.at[rows].add(v)` on a carried [64, 8] buffer (the chunked expert dispatch's combine): XLA shares a
    scatter fusion's output with its buffer, so a step moves the 2 updated rows, not the 64."""
    rows = 2 * 8 * 4
    # the buffer's 2 rows read and written, the indices and updates read; the counter's add 4 + 4 + 4
    assert decode_stats(SCATTER_IN_LOOP).hbm_bytes == rows + 2 * 4 + rows + rows + 3 * 4
    # scattering into a value computed from the buffer (not the buffer itself): read and written whole
    whole = SCATTER_IN_LOOP.replace("ROOT %sc = f32[64,8]{1,0} scatter(%p0,",
                                    "%neg = f32[64,8]{1,0} negate(%p0)\n  ROOT %sc = f32[64,8]{1,0} scatter(%neg,")
    assert "negate(%p0)" in whole
    assert decode_stats(whole).hbm_bytes == 64 * 8 * 4 + 2 * 4 + rows + 64 * 8 * 4 + 3 * 4


def test_a_conditional_counts_its_costlier_branch(mesh):
    """Continuous batching's admission and the block-wise read's last piece are conds inside the decode loop: a
    step is costed as its costlier branch (here 3 products against none)."""
    def program(w_DD, x_BD):
        def step(carry):
            i, x_BD = carry

            def costly(x_BD):
                for _ in range(3):
                    x_BD = jnp.tanh(x_BD @ w_DD)
                return x_BD

            return i + 1, jax.lax.cond(i % 2 == 0, costly, lambda x_BD: x_BD + 1, x_BD)

        with jax.named_scope("decode"):
            return jax.lax.while_loop(lambda c: c[0] < STEPS, step, (0, x_BD))

    text = jax.jit(program).lower(jnp.ones((D, D)), jnp.ones((ROWS, D))).compile().as_text()
    assert "conditional(" in text
    assert decode_stats(text).flops == 3 * 2 * ROWS * D * D


def test_an_inner_loop_whose_counter_starts_past_zero_runs_bound_minus_start_trips(mesh):
    """A loop `i = 2; while i < 6` inside the decode loop, its trip count left unstated (as libtpu leaves it):
    4 trips, not 6."""
    def program(w_DD, x_BD):
        def step(carry):
            i, x_BD = carry
            _, x_BD = jax.lax.while_loop(lambda c: c[0] < 6, lambda c: (c[0] + 1, jnp.tanh(c[1] @ w_DD)),
                                         (2, x_BD))
            return i + 1, x_BD

        with jax.named_scope("decode"):
            return jax.lax.while_loop(lambda c: c[0] < STEPS, step, (0, x_BD))

    text = jax.jit(program).lower(jnp.ones((D, D)), jnp.ones((ROWS, D))).compile().as_text()
    unstated = re.sub(r'"known_trip_count":\{"n":"\d+"\},?', "", text)
    assert decode_stats(unstated).flops == decode_stats(text).flops == 4 * 2 * ROWS * D * D


def test_a_chip_of_two_devices_reports_both_devices_work(mesh):
    """A chip of two compile-only devices (v4: `devices_per_chip` 2) adds both devices' work: every per-chip figure
    doubles."""
    stats = decode_stats(_decode_program(mesh, gather_rows=False))
    one, two = (decode_report(stats, CHIPS["v5p"], devices_per_chip=n, rows=ROWS, chips=8,
                              min_read_bytes_per_chip=1000) for n in (1, 2))
    for key in ("flops_per_token", "hbm_bytes_per_token", "weight_allgather_bytes_per_token", "est_compute_s",
                "est_hbm_s", "est_collective_s"):
        assert two[key] == pytest.approx(2 * one[key]) and one[key] > 0, key
    assert two["collective_bytes_per_token"]["all-gather"] == 2 * one["collective_bytes_per_token"]["all-gather"] > 0
    # a count of collectives per step, which the chip's devices run together: not doubled
    assert one["weight_allgathers_per_token"] == two["weight_allgathers_per_token"] == LAYERS
