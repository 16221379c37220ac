"""HloTraffic's per-instruction HBM bytes for top-level (unfused) slices, async copies and on-chip operands,
counted by hand (the module docstring's rules: a slice reads what it takes, an in-place update writes the update,
arrays in on-chip memory, `S(1)`, are no HBM traffic)."""

import pytest

from r1jax.sharding.hlo_traffic import HloTraffic

MODULE = """HloModule m, entry_computation_layout={(f32[16,8]{1,0}, s32[])->f32[1,8]{1,0}}

ENTRY %main (p0: f32[16,8], i: s32[]) -> f32[1,8] {
  %p0 = f32[16,8]{1,0} parameter(0)
  %i = s32[] parameter(1)
  %z = s32[] constant(0)
  %ds = f32[1,8]{1,0} dynamic-slice(%p0, %i, %z), dynamic_slice_sizes={1,8}
  %st = f32[2,8]{1,0} slice(%p0), slice={[4:6], [0:8]}
  %dus = f32[16,8]{1,0} dynamic-update-slice(%p0, %ds, %i, %z)
  %on = f32[1,8]{1,0:S(1)} copy(%ds)
  %sum = f32[1,8]{1,0} add(%on, %ds)
  %cs = (f32[16,8]{1,0}, f32[16,8]{1,0}, u32[]) copy-start(%p0)
  %cd = f32[16,8]{1,0} copy-done(%cs)
  %ags = (f32[1,8]{1,0}, f32[8,8]{1,0}) all-gather-start(%ds), replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
  %agd = f32[8,8]{1,0} all-gather-done(%ags)
  ROOT %out = f32[1,8]{1,0} negate(%sum)
}
"""


@pytest.mark.parametrize("name,expected", [
    ("ds", 2 * 8 * 4),  # reads the one 8-float row it takes of the 16 x 8 weight, writes it
    ("st", 2 * 2 * 8 * 4),  # a static slice alike: 2 rows
    ("dus", 2 * 8 * 4 + 4 + 4),  # an in-place update reads and writes its one row, reads its two indices
    ("on", 8 * 4),  # reads the row from HBM; its result is on chip
    ("sum", 8 * 4 + 8 * 4),  # the on-chip operand is no HBM read: reads %ds, writes the sum
    ("cs", 16 * 8 * 4),  # an async copy's start reads its operand once; its done moves nothing more
    ("cd", 0),
    ("agd", 0),  # an async collective's done: its bytes are the start's (sharding.decode_stats counts them)
])
def test_unfused_instructions_count_what_they_move_in_hbm(name, expected):
    traffic = HloTraffic(MODULE)
    (entry,) = [c for c in traffic.comps.values() if c.entry]
    assert traffic.hbm_bytes(entry, entry.instructions[name]) == expected


KV_READ = """HloModule kv
ENTRY %main (l: s32[], n: s32[2], q: f32[2,1,8], k: f32[4,2,1,8,16], v: f32[4,2,1,16,8], m: pred[2,16]) -> f32[2,1,8] {
  %l = s32[] parameter(0)
  %n = s32[2]{0} parameter(1)
  %q = f32[2,1,8]{2,1,0} parameter(2)
  %k = f32[4,2,1,8,16]{4,3,2,1,0} parameter(3)
  %v = f32[4,2,1,16,8]{4,3,2,1,0} parameter(4)
  %m = pred[2,16]{1,0} parameter(5)
  ROOT %o = f32[2,1,8]{2,1,0} custom-call(%l, %n, %q, %k, %v, %m), custom_call_target="tpu_custom_call", metadata={op_name="jit(f)/decode/kv_read_block_4/pallas_call"}
}
"""


@pytest.mark.parametrize("trips, slots", [(1, 4), (3, 12), (10, 16)])
def test_the_decode_attention_kernel_reads_one_layer_up_to_the_live_blocks_at_most_the_whole_layer(trips, slots):
    """K [4 layers, 2 rows, 1 head, 8, 16 slots] and V [4, 2, 1, 16 slots, 8] in float32: one layer's `trips`
    blocks of 4 slots, at most its 16; the layer index, lengths, query and mask whole; the output written."""
    traffic = HloTraffic(KV_READ, dynamic_trips=trips)
    (entry,) = [c for c in traffic.comps.values() if c.entry]
    layer_slots = 2 * 1 * 8 * slots * 4  # one layer's rows up to `slots`, K or V alike
    assert traffic.hbm_bytes(entry, entry.instructions["o"]) == 4 + 2 * 4 + 16 * 4 + 2 * layer_slots + 32 + 16 * 4


UPDATE_THEN_READ = """HloModule m
%f_dus (p0: f32[16,8], p1: f32[1,8], p2: s32[]) -> f32[16,8] {
  %p0 = f32[16,8]{1,0} parameter(0)
  %p1 = f32[1,8]{1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %z = s32[] constant(0)
  %dus = f32[16,8]{1,0} dynamic-update-slice(%p0, %p1, %p2, %z)
  ROOT %sum = f32[16,8]{1,0} add(%dus, %p0)
}

ENTRY %main (b: f32[16,8], u: f32[1,8], j: s32[]) -> f32[16,8] {
  %b = f32[16,8]{1,0} parameter(0)
  %u = f32[1,8]{1,0} parameter(1)
  %j = s32[] parameter(2)
  ROOT %f = f32[16,8]{1,0} fusion(%b, %u, %j), kind=kLoop, calls=%f_dus
}
"""


def test_a_fusion_that_also_reads_the_updated_buffer_whole_writes_its_result_whole():
    """`x.at[i].set(v) + x`: the buffer is read whole (the add), so the result is a new buffer, written whole,
    not the one row of an in-place update."""
    traffic = HloTraffic(UPDATE_THEN_READ)
    (entry,) = [c for c in traffic.comps.values() if c.entry]
    assert traffic.hbm_bytes(entry, entry.instructions["f"]) == 16 * 8 * 4 + 8 * 4 + 4 + 16 * 8 * 4


NESTED_PARAMETERS = """HloModule m
%inner (p0: f32[64], p1: f32[4,8]) -> (f32[64], f32[1,8]) {
  %p0 = f32[64]{0} parameter(0)
  %p1 = f32[4,8]{1,0} parameter(1)
  %neg = f32[64]{0} negate(%p0)
  %c = s32[] constant(0)
  %ds = f32[1,8]{1,0} dynamic-slice(%p1, %c, %c), dynamic_slice_sizes={1,8}
  ROOT %t = (f32[64]{0}, f32[1,8]{1,0}) tuple(%neg, %ds)
}
%outer (q0: f32[4,8], q1: f32[64]) -> (f32[64], f32[1,8]) {
  %q0 = f32[4,8]{1,0} parameter(0)
  %q1 = f32[64]{0} parameter(1)
  ROOT %f = (f32[64]{0}, f32[1,8]{1,0}) fusion(%q1, %q0), kind=kLoop, calls=%inner
}

ENTRY %main (a: f32[4,8], b: f32[64]) -> (f32[64], f32[1,8]) {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[64]{0} parameter(1)
  ROOT %g = (f32[64]{0}, f32[1,8]{1,0}) fusion(%a, %b), kind=kLoop, calls=%outer
}
"""


def test_a_nested_fusion_reads_of_each_operand_what_its_own_parameter_takes():
    """The weight goes to the nested fusion as its operand 1, which slices one row of it; operand 0 is read
    whole: the row (32 bytes) and the 256-byte vector are read, the vector and the row written."""
    traffic = HloTraffic(NESTED_PARAMETERS)
    (entry,) = [c for c in traffic.comps.values() if c.entry]
    assert traffic.hbm_bytes(entry, entry.instructions["g"]) == 8 * 4 + 64 * 4 + 64 * 4 + 8 * 4


@pytest.mark.parametrize("then", ["multiply", "none"])
def test_an_update_the_fusion_computes_on_reads_and_writes_the_whole_buffer(then):
    """`x.at[i].set(v) * 2` compiles (CPU) to one loop fusion whose update is not its output: it reads the
    [1024, 64] buffer whole and writes a new one (it was counted as an in-place update: 516 bytes of 524,548);
    `x.at[i].set(v)` alone updates in place: the row read and written, the index read."""
    import jax
    import jax.numpy as jnp

    from r1jax.sharding.decode_stats import program_costs

    def update(x, v, i):
        y = jax.lax.dynamic_update_slice(x, v, (i, 0))
        return y * 2 if then == "multiply" else y

    text = jax.jit(update, donate_argnums=0).lower(jnp.ones((1024, 64)), jnp.ones((1, 64)), 3).compile().as_text()
    buffer, row = 1024 * 64 * 4, 64 * 4
    expected = buffer + row + 4 + buffer if then == "multiply" else row + 4 + row
    assert program_costs(text)[1] == expected


NESTED_UPDATE = """HloModule m
%inner (p0: f32[1024,64], p1: f32[1,64], p2: s32[]) -> f32[1024,64] {
  %p0 = f32[1024,64]{1,0} parameter(0)
  %p1 = f32[1,64]{1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %z = s32[] constant(0)
  ROOT %d = f32[1024,64]{1,0} dynamic-update-slice(%p0, %p1, %p2, %z)
}
%outer (q0: f32[1024,64], q1: f32[1,64], q2: s32[]) -> f32[1024,64] {
  %q0 = f32[1024,64]{1,0} parameter(0)
  %q1 = f32[1,64]{1,0} parameter(1)
  %q2 = s32[] parameter(2)
  ROOT_IF_ALONE%n = f32[1024,64]{1,0} fusion(%q0, %q1, %q2), kind=kLoop, calls=%inner
  THEN
}
ENTRY %main (x: f32[1024,64], v: f32[1,64], i: s32[]) -> f32[1024,64] {
  %x = f32[1024,64]{1,0} parameter(0)
  %v = f32[1,64]{1,0} parameter(1)
  %i = s32[] parameter(2)
  ROOT %f = f32[1024,64]{1,0} fusion(%x, %v, %i), kind=kLoop, calls=%outer
}
"""


@pytest.mark.parametrize("then", ["multiply", "none"])
def test_an_update_in_a_nested_fusion_is_in_place_only_where_the_outer_fusion_outputs_it(then):
    """The nested fusion's update is its root, but the outer fusion multiplies its result: the [1024, 64] buffer
    is read whole (the update was counted in place, reading only the row and the index); as the outer fusion's
    own root it is still read as the row and the index alone (its output, 262,144 bytes, written either way)."""
    text = NESTED_UPDATE.replace("ROOT_IF_ALONE", "" if then == "multiply" else "ROOT ").replace(
        "THEN", "ROOT %r = f32[1024,64]{1,0} multiply(%n, %n)" if then == "multiply" else "")
    traffic = HloTraffic(text)
    (entry,) = [c for c in traffic.comps.values() if c.entry]
    buffer, row = 1024 * 64 * 4, 64 * 4
    expected = buffer + row + 4 + buffer if then == "multiply" else row + 4 + buffer
    assert traffic.hbm_bytes(entry, entry.instructions["f"]) == expected
