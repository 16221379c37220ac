"""Which all-gathers in a decode step are weight all-gathers (sharding.decode_stats._Module.is_invariant): data the
decode loop passes on unchanged, followed through tuples, inner loops and their parameters, on hand-written
decode loops over a state (counter, w, x) whose body all-gathers one [2, 8] float32 shard over 8 devices."""

import pytest

from r1jax.sharding.decode_stats import decode_stats

GATHER = 16 * 8 * 4 * 7 // 8  # a device receives 7/8 of the gathered [16, 8] float32: 448 bytes
STATE = "(s32[], f32[2,8]{1,0}, f32[2,8]{1,0})"
INNER = "(s32[], f32[2,8]{1,0})"

PROGRAM = """HloModule m, num_partitions=8
%inner_body (r: (s32[], f32[2,8])) -> (s32[], f32[2,8]) {
  %r = (s32[], f32[2,8]{1,0}) parameter(0)
  %k = s32[] get-tuple-element(%r), index=0
  %v = f32[2,8]{1,0} get-tuple-element(%r), index=1
  %kone = s32[] constant(1)
  %knext = s32[] add(%k, %kone)
  %neg = f32[2,8]{1,0} negate(%v)
  INNER_GATHER
  ROOT %rout = (s32[], f32[2,8]{1,0}) tuple(%knext, INNER_OUT)
}
%inner_cond (q: (s32[], f32[2,8])) -> pred[] {
  %q = (s32[], f32[2,8]{1,0}) parameter(0)
  %qk = s32[] get-tuple-element(%q), index=0
  %three = s32[] constant(3)
  ROOT %qlt = pred[] compare(%qk, %three), direction=LT
}
%body (t: (s32[], f32[2,8], f32[2,8])) -> (s32[], f32[2,8], f32[2,8]) {
  %t = (s32[], f32[2,8]{1,0}, f32[2,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %w = f32[2,8]{1,0} get-tuple-element(%t), index=1
  %x = f32[2,8]{1,0} get-tuple-element(%t), index=2
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  %zero = s32[] constant(0)
  %inner_init = (s32[], f32[2,8]{1,0}) tuple(%zero, %w)
  %inner = (s32[], f32[2,8]{1,0}) while(%inner_init), condition=%inner_cond, body=%inner_body
  %after = f32[2,8]{1,0} get-tuple-element(%inner), index=1
  %pair = (f32[2,8]{1,0}, f32[2,8]{1,0}) tuple(%w, %x)
  %pair0 = f32[2,8]{1,0} get-tuple-element(%pair), index=0
  %pair1 = f32[2,8]{1,0} get-tuple-element(%pair), index=1
  %xn = f32[2,8]{1,0} negate(%x)
  BODY_GATHER
  ROOT %out = (s32[], f32[2,8]{1,0}, f32[2,8]{1,0}) tuple(%next, W_OUT, %xn)
}
%cond (u: (s32[], f32[2,8], f32[2,8])) -> pred[] {
  %u = (s32[], f32[2,8]{1,0}, f32[2,8]{1,0}) parameter(0)
  %j = s32[] get-tuple-element(%u), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}
ENTRY %main (a: f32[2,8], b: f32[2,8]) -> (s32[], f32[2,8], f32[2,8]) {
  %a = f32[2,8]{1,0} parameter(0)
  %b = f32[2,8]{1,0} parameter(1)
  %z = s32[] constant(0)
  %init = (s32[], f32[2,8]{1,0}, f32[2,8]{1,0}) tuple(%z, %a, %b)
  ROOT %loop = (s32[], f32[2,8]{1,0}, f32[2,8]{1,0}) while(%init), condition=%cond, body=%body, metadata={op_name="f/decode/while"}
}
"""


def _gather(name: str, of: str) -> str:
    return (f"%{name} = f32[16,8]{{1,0}} all-gather(%{of}), channel_id=1, replica_groups=[1,8]<=[8], "
            "dimensions={0}, use_global_device_ids=true")


def _stats(body_gather="", w_out="%w", inner_gather="", inner_out="%v"):
    """The decode step of PROGRAM: the decode body gathers `body_gather` and returns `w_out` as its element 1;
    its inner loop (3 trips, over (k, w)) gathers `inner_gather` and returns `inner_out` as its element 1."""
    text = (PROGRAM.replace("BODY_GATHER", body_gather).replace("W_OUT", w_out)
            .replace("INNER_GATHER", inner_gather).replace("INNER_OUT", inner_out))
    stats = decode_stats(text)
    return stats.collective_bytes["all-gather"], stats.weight_allgather_bytes


@pytest.mark.parametrize("w_out, inner_out, weight", [
    ("%w", "%v", GATHER),  # the decode body passes w on unchanged: a weight
    ("%x", "%v", 0),  # element 1 becomes x (its parameter's element 2, not 1): w changes, as carried state does
    # element 1 becomes the inner loop's copy of w: w where the inner loop passes it on (libtpu's decode body
    # returns the layer scan's copy of the weights), not where it negates it each inner trip
    ("%after", "%v", GATHER),
    ("%after", "%neg", 0),
])
def test_a_gather_of_the_bodys_element_is_a_weight_gather_only_if_the_body_passes_that_element_on(
        w_out, inner_out, weight):
    assert _stats(_gather("g", "w"), w_out=w_out, inner_out=inner_out) == (GATHER, weight)


@pytest.mark.parametrize("inner_out, weight", [("%v", GATHER), ("%neg", 0)])
def test_an_inner_loops_output_is_a_weight_only_if_the_inner_loop_passes_it_on(inner_out, weight):
    """A gather of the inner loop's element 1 after it (the decode body passes w on unchanged either way)."""
    assert _stats(_gather("g", "after"), inner_out=inner_out) == (GATHER, weight)


@pytest.mark.parametrize("inner_out, weight", [("%v", 3 * GATHER), ("%neg", 0)])
def test_a_gather_inside_an_inner_loop_is_a_weight_gather_only_if_both_loops_pass_it_on(inner_out, weight):
    """The layer scan's gather of its element 1 (each of its 3 trips): w, or w negated once per trip."""
    assert _stats(inner_gather=_gather("g", "v"), inner_out=inner_out) == (3 * GATHER, weight)


@pytest.mark.parametrize("element, weight", [("pair0", GATHER), ("pair1", 0)])
def test_a_weight_reached_through_a_tuple_is_followed_to_the_tuples_element(element, weight):
    """get-tuple-element(tuple(w, x)), index=0 is w (a weight); index=1 is x (carried state: negated each
    step)."""
    assert _stats(_gather("g", element)) == (GATHER, weight)


def test_an_inner_loop_whose_whole_state_is_one_array_carries_it():
    """A while loop over one array (no tuple) hands its body that array as its parameter: the loop's state,
    which the body changes (here by the gathered rows), not a weight, although it starts from w."""
    text = PROGRAM.replace("BODY_GATHER", "%lone = f32[2,8]{1,0} while(%w), condition=%lone_cond, body=%lone_body")
    text = text.replace("W_OUT", "%w").replace("INNER_GATHER", "").replace("INNER_OUT", "%v")
    lone = ("%lone_body (p: f32[2,8]) -> f32[2,8] {\n  %p = f32[2,8]{1,0} parameter(0)\n  " + _gather("g", "p")
            + "\n  %s = f32[2,8]{1,0} slice(%g), slice={[0:2], [0:8]}\n  ROOT %sum = f32[2,8]{1,0} add(%p, %s)\n}\n"
            "%lone_cond (o: f32[2,8]) -> pred[] {\n  %o = f32[2,8]{1,0} parameter(0)\n"
            "  ROOT %f = pred[] constant(false)\n}\n")
    stats = decode_stats(text.replace("%body (t:", lone + "%body (t:"))
    assert stats.collective_bytes["all-gather"] == GATHER and stats.weight_allgather_bytes == 0
