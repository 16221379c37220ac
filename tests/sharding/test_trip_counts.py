"""Loop trip counts the compiler does not state (libtpu states none), read from the loop's condition and its
counter's step (sharding.decode_stats._Module.trip_count), on hand-written loops: every compare direction XLA
prints, counters that count down, step by more than one, or start past their bound."""

import pytest

from r1jax.sharding.decode_stats import program_costs

DOT = 2 * 8 * 8 * 8  # FLOPs of the body's one [8, 8] x [8, 8] product

LOOP = """HloModule m
%body (t: (s32[], f32[8,8])) -> (s32[], f32[8,8]) {
  %t = (s32[], f32[8,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = f32[8,8]{1,0} get-tuple-element(%t), index=1
  %y = f32[8,8]{1,0} dot(%x, %x), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %step = s32[] constant(STEP)
  %next = s32[] OP(%i, %step)
  ROOT %out = (s32[], f32[8,8]{1,0}) tuple(%next, %y)
}
%cond (u: (s32[], f32[8,8])) -> pred[] {
  %u = (s32[], f32[8,8]{1,0}) parameter(0)
  %j = s32[] get-tuple-element(%u), index=0
  %n = s32[] constant(BOUND)
  ROOT %c = pred[] compare(COMPARED), direction=DIR
}
ENTRY %main (a: f32[8,8]) -> (s32[], f32[8,8]) {
  %a = f32[8,8]{1,0} parameter(0)
  %z = s32[] constant(START)
  %init = (s32[], f32[8,8]{1,0}) tuple(%z, %a)
  ROOT %loop = (s32[], f32[8,8]{1,0}) while(%init), condition=%cond, body=%body, metadata={op_name="NAME/while"}
}
"""


def _trips(direction, start, bound, step=1, op="add", swapped=False, name="f", commuted=False):
    """The trip count the reader gives a loop `for (i = start; i <direction> bound; i = i <op> step)`."""
    text = (LOOP.replace("DIR", direction).replace("START", str(start)).replace("BOUND", str(bound))
            .replace("STEP", str(step)).replace("OP", op).replace("NAME", name)
            .replace("(%i, %step)", "(%step, %i)" if commuted else "(%i, %step)")
            .replace("COMPARED", "%n, %j" if swapped else "%j, %n"))
    _, _, flops = program_costs(text)
    assert flops % DOT == 0
    return flops // DOT


@pytest.mark.parametrize("direction, start, bound, step, op, trips", [
    ("LT", 0, 5, 1, "add", 5),  # JAX's fori_loop and scan: i = 0; i < 5; i += 1
    ("LT", 2, 6, 1, "add", 4),  # counted from its start
    ("LT", 7, 5, 1, "add", 0),  # starts past its bound: never runs (not 5 - 7 < 0, not 5)
    ("LT", 0, 5, 2, "add", 3),  # 0, 2, 4
    ("LE", 0, 5, 1, "add", 6),  # i <= 5: one more trip than i < 5
    ("LE", 6, 5, 1, "add", 0),
    ("GT", 10, 0, 1, "subtract", 10),  # counting down: i = 10; i > 0; i -= 1
    ("GT", 10, 0, -2, "add", 5),  # 10, 8, 6, 4, 2
    ("GE", 10, 0, 1, "subtract", 11),  # i >= 0: 10 ... 0
    ("GT", 0, 5, 1, "subtract", 0),  # starts past its bound
    ("NE", 0, 5, 1, "add", 5),  # i != 5
    ("NE", 0, 6, 2, "add", 3),  # 0, 2, 4
    ("NE", 5, 5, 1, "add", 0),
    ("EQ", 3, 3, 1, "add", 1),  # runs once, then i = 4
    ("EQ", 0, 3, 1, "add", 0),
])
def test_a_loops_trip_count_is_read_from_its_condition_in_every_direction(direction, start, bound, step, op, trips):
    assert _trips(direction, start, bound, step, op) == trips


@pytest.mark.parametrize("direction, trips", [("GT", 5), ("GE", 6), ("LT", 0), ("LE", 0)])
def test_a_condition_with_the_bound_first_reads_as_its_mirror(direction, trips):
    """`5 > i` is `i < 5`; `5 < i` is `i > 5`, false from i = 0."""
    assert _trips(direction, 0, 5, swapped=True) == trips


def test_a_step_added_first_is_read_as_well():
    """`i = 2 + i`: 0, 2, 4 below 5."""
    assert _trips("LT", 0, 5, 2, op="add", commuted=True) == 3


@pytest.mark.parametrize("direction, start, bound, step, op", [
    ("LT", 0, 5, 1, "subtract"),  # i < 5 counting down from 0: never ends (until i wraps around)
    ("GT", 5, 0, 1, "add"),  # i > 0 counting up from 5
    ("NE", 0, 5, 2, "add"),  # 0, 2, 4, 6, ... steps over 5
    ("LT", 0, 5, 0, "add"),  # a counter that does not move
    ("EQ", 3, 3, 0, "add"),
])
def test_a_loop_that_never_ends_by_its_condition_has_an_unknown_count(direction, start, bound, step, op):
    """Unknown: 1, or the count its name scope states (`expected_trips_M`: the blocked MoE kernel's loops)."""
    assert _trips(direction, start, bound, step, op) == 1
    assert _trips(direction, start, bound, step, op, name="f/expected_trips_7") == 7


def test_a_stated_trip_count_is_taken_as_stated():
    text = LOOP.replace("metadata=", 'backend_config={"known_trip_count":{"n":"9"}}, metadata=')
    text = (text.replace("DIR", "LT").replace("START", "0").replace("BOUND", "5").replace("STEP", "1")
            .replace("OP", "add").replace("NAME", "f").replace("COMPARED", "%j, %n"))
    assert program_costs(text)[2] == 9 * DOT
