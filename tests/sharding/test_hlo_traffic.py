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
