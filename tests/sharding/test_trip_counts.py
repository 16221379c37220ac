"""Loop trip counts the compiler does not state (libtpu states none), read from the loop's condition and its
counter's step (sharding.loop_trips.LoopTrips.trip_count), on hand-written loops: every compare direction XLA
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


def decode_with_inner_loop(cond, step, start):
    """A 5-step decode loop whose body runs an inner JAX loop `for (i = start; cond(i); i += step) x = tanh(x @ w)`."""
    import jax
    import jax.numpy as jnp

    def program(w, x):
        def body(carry):
            i, x = carry
            _, x = jax.lax.while_loop(cond, lambda c: (c[0] + step, jnp.tanh(c[1] @ w)), (start, x))
            return i + 1, x

        with jax.named_scope("decode"):
            return jax.lax.while_loop(lambda c: c[0] < 5, body, (0, x))

    return program


@pytest.mark.parametrize("cond, step, start, trips", [
    (lambda c: c[0] > 0, -1, 10, 10), (lambda c: c[0] <= 6, 1, 2, 5), (lambda c: c[0] != 9, 3, 0, 3),
    (lambda c: c[0] >= 1, -2, 9, 5)])
def test_a_compiled_inner_loop_in_any_direction_counts_as_the_compiler_states(cond, step, start, trips):
    """JAX loops inside the decode loop, their stated trip counts removed (libtpu states none): each counts as
    XLA counted it."""
    import re

    import jax
    import jax.numpy as jnp

    from r1jax.sharding.decode_stats import decode_stats

    program = decode_with_inner_loop(cond, step, start)
    text = jax.jit(program).lower(jnp.ones((8, 8)), jnp.ones((4, 8))).compile().as_text()
    assert f'"known_trip_count":{{"n":"{trips}"}}' in text
    unstated = re.sub(r'"known_trip_count":\{"n":"\d+"\},?', "", text)
    assert decode_stats(unstated).flops == decode_stats(text).flops == trips * 2 * 4 * 8 * 8


@pytest.mark.parametrize("fused_constants", [False, True])
def test_a_bound_and_a_step_fused_with_their_compare_and_add_are_read(fused_constants):
    """`i < 5` stepping by 2 (3 trips), its compare and its add each in a fusion, as XLA:CPU compiles them by
    default (`wrapped_add`, `wrapped_compare`: the constants its operands), or with the constants fused too."""
    if fused_constants:
        stepped, below = "fusion(%i)", "fusion(%j)"
        two, five = "  %two = s32[] constant(2)\n", "  %five = s32[] constant(5)\n"
        params = ("(s0: s32[])", "(b0: s32[])")
    else:
        stepped, below = "fusion(%i, %step)", "fusion(%j, %n)"
        two, five = "  %two = s32[] parameter(1)\n", "  %five = s32[] parameter(1)\n"
        params = ("(s0: s32[], two: s32[])", "(b0: s32[], five: s32[])")
    text = (LOOP.replace("DIR", "LT").replace("START", "0").replace("BOUND", "5").replace("STEP", "2")
            .replace("NAME", "f").replace("COMPARED", "%j, %n")
            .replace("  %next = s32[] OP(%i, %step)", f"  %next = s32[] {stepped}, kind=kLoop, calls=%stepped")
            .replace("  ROOT %c = pred[] compare(%j, %n), direction=LT",
                     f"  ROOT %c = pred[] {below}, kind=kLoop, calls=%below")
            .replace("%body (t:", f"%stepped {params[0]} -> s32[] {{\n  %s0 = s32[] parameter(0)\n{two}"
                     f"  ROOT %sum = s32[] add(%s0, %two)\n}}\n"
                     f"%below {params[1]} -> pred[] {{\n  %b0 = s32[] parameter(0)\n{five}"
                     "  ROOT %lt = pred[] compare(%b0, %five), direction=LT\n}\n%body (t:"))
    assert "calls=%stepped" in text and "calls=%below" in text
    assert program_costs(text)[2] == 3 * DOT


@pytest.mark.parametrize("cond, step, start, trips", [
    (lambda c: c[0] < 7, 1, 0, 7), (lambda c: c[0] > 0, -1, 10, 10), (lambda c: c[0] <= 6, 1, 2, 5),
    (lambda c: c[0] != 9, 3, 0, 3), (lambda c: c[0] >= 1, -2, 9, 5)])
def test_libtpus_inner_loops_count_their_trips_in_any_direction(cond, step, start, trips):
    """Compiled for a compile-only v5p device, which states no trip count: `i > 0` counting down, `i <= 6`,
    `i != 9` by 3 and `i >= 1` by -2 each counted 1 trip before (only `i < N` was read)."""
    import re

    import jax
    import jax.numpy as jnp

    from r1jax.sharding.decode_stats import decode_stats
    from r1jax.sharding.topology import abstract_devices

    program = decode_with_inner_loop(cond, step, start)
    tpu = jax.sharding.SingleDeviceSharding(abstract_devices("v5p:2x2x1")[0])
    args = (jax.ShapeDtypeStruct((256, 256), jnp.float32, sharding=tpu),
            jax.ShapeDtypeStruct((128, 256), jnp.float32, sharding=tpu))
    text = jax.jit(program).lower(*args).compile().as_text()
    assert not re.search("known_trip_count", text)
    assert decode_stats(text).flops == trips * 2 * 128 * 256 * 256


@pytest.mark.parametrize("direction, bound, op, trips", [("LT", 5, "add", 5), ("GT", 0, "subtract", 1),
                                                         ("GE", 0, "subtract", 1), ("NE", 5, "add", 1)])
def test_a_traced_start_is_read_only_for_a_counter_up_to_its_bound(direction, bound, op, trips):
    """A counter whose start is a parameter (not a constant): `i < N` is read from 0, as JAX's loops count; a
    count down from it (`i > 0`) is unknown (1, or its stated count), not 0 trips from a start taken as 0."""
    text = (LOOP.replace("DIR", direction).replace("BOUND", str(bound)).replace("STEP", "1").replace("OP", op)
            .replace("NAME", "f").replace("COMPARED", "%j, %n")
            .replace("ENTRY %main (a: f32[8,8])", "ENTRY %main (a: f32[8,8], s: s32[])")
            .replace("%z = s32[] constant(START)", "%z = s32[] parameter(1)"))
    assert program_costs(text)[2] == trips * DOT


@pytest.mark.parametrize("start, op, read", [
    ("parameter", "add", 5),  # a traced start: counted from 0 below 5, assumed (it was)
    ("constant", "multiply", 5),  # an unreadable step: +1 taken, assumed (it was)
    ("parameter", "multiply", 5),  # both
    ("constant", "add", 5),  # read whole: 0..4 (the stated count still wins: the model's own statement)
])
def test_a_stated_count_wins_over_a_traced_start_or_an_unreadable_step(start, op, read):
    """A loop under `expected_trips_7` with a constant bound of 5 takes 7 trips, none assumed, whatever its start
    and step (the reader took +1 or a start of 0 and recorded '5 trip(s) assumed'); unstated, the same loop reads
    5 trips (assumed unless read whole)."""
    from r1jax.sharding.decode_stats import program_stats

    text = (LOOP.replace("DIR", "LT").replace("BOUND", "5").replace("STEP", "1").replace("OP", op)
            .replace("COMPARED", "%j, %n"))
    if start == "parameter":
        text = (text.replace("ENTRY %main (a: f32[8,8])", "ENTRY %main (a: f32[8,8], s: s32[])")
                .replace("%z = s32[] constant(START)", "%z = s32[] parameter(1)"))
    text = text.replace("START", "0")
    _, _, flops, assumed = program_stats(text.replace("NAME", "f/expected_trips_7"))
    assert flops == 7 * DOT and assumed == ()
    _, _, flops, assumed = program_stats(text.replace("NAME", "f"))
    assert flops == read * DOT and len(assumed) == ((start, op) != ("constant", "add"))
    assert all(a.startswith(f"f/while: {read} trip(s) assumed") for a in assumed)


def _assumed(direction, start, bound, step=1, op="add", name="f", cond=None):
    """The assumptions the reader records for the hand-written loop (`_trips`'s), its condition optionally
    replaced by `cond`."""
    from r1jax.sharding.decode_stats import program_stats

    text = (LOOP.replace("DIR", direction).replace("START", str(start)).replace("BOUND", str(bound))
            .replace("STEP", str(step)).replace("OP", op).replace("NAME", name).replace("COMPARED", "%j, %n"))
    if cond is not None:
        text = text.replace("  ROOT %c = pred[] compare(%j, %n), direction=" + direction, cond)
    return program_stats(text)[3]


@pytest.mark.parametrize("direction, start, bound, step, op, cond, why", [
    ("LT", 0, 5, 1, "subtract", None, "never ends"),  # counts down from 0 below 5
    ("NE", 0, 5, 2, "add", None, "never ends"),  # steps over its bound
    ("LT", 0, 5, 1, "add", "  ROOT %c = pred[] constant(true)", "not a counter compared"),  # not a compare
    ("LT", 0, 5, 1, "multiply", None, "step is not readable"),  # i *= 1: +1 taken, 5 trips
])
def test_a_trip_count_not_read_is_recorded_as_assumed(direction, start, bound, step, op, cond, why):
    """A count the reader could not read (it took 1, or +1 for an unreadable step) is recorded with what it
    took and why, so the report can say its estimate rests on a guess; a read or stated count is not."""
    assumed = _assumed(direction, start, bound, step, op, cond=cond)
    assert len(assumed) == 1 and why in assumed[0] and assumed[0].startswith("f/while: ")
    assert ("5 trip(s)" if op == "multiply" else "1 trip(s)") in assumed[0]
    stated = _assumed(direction, start, bound, step, op, name="f/expected_trips_7", cond=cond)
    assert stated == ()  # a stated count is not a guess (it was when read with +1 for an unreadable step)
    assert _assumed("LT", 0, 5) == ()


@pytest.mark.parametrize("dynamic_trips, said", [
    # the compile's mean live blocks of a block-wise KV-cache read (rl.aot.dynamic_trips): an estimate, said so
    (4, "f/while: 4 trip(s) estimated, its bound is traced: the caller's mean count (a block-wise KV-cache read's "
        "live blocks over a rollout)"),
    (1, "f/while: 1 trip(s) assumed, its bound is traced"),  # no count given (an update program's): a guess
])
def test_a_traced_bound_is_recorded_with_the_trips_taken(dynamic_trips, said):
    """A traced bound (`%n` a loop value, not a constant): the caller's `dynamic_trips` taken, and said (it read
    "4 trip(s) assumed, its bound is traced (the caller's dynamic_trips)", and the report "an estimate on a
    guess", for the block-wise cache read's documented mean)."""
    from r1jax.sharding.decode_stats import _Module, _walk

    text = LOOP.replace("DIR", "LT").replace("START", "0").replace("STEP", "1").replace("OP", "add")
    text = text.replace("NAME", "f").replace("COMPARED", "%j, %n").replace(
        "%n = s32[] constant(BOUND)", "%n = s32[] get-tuple-element(%u), index=0")
    module = _Module(text, dynamic_trips=dynamic_trips)
    entry = next(c for c in module.comps.values() if c.entry)
    assert _walk(module, entry, None, (entry.name,))["flops"] == dynamic_trips * DOT
    assert list(module.assumed.values()) == [said]
    stated = _Module(text.replace("NAME", "f").replace('op_name="f/while"', 'op_name="f/expected_trips_3/while"'),
                     dynamic_trips=dynamic_trips)
    entry = next(c for c in stated.comps.values() if c.entry)
    assert _walk(stated, entry, None, (entry.name,))["flops"] == 3 * DOT and stated.assumed == {}


def test_the_reports_count_the_assumed_loops_and_the_text_says_so_when_there_are_any():
    from r1jax.rl.cli.compile import describe_decode, describe_update
    from r1jax.sharding.chips import CHIPS
    from r1jax.sharding.decode_stats import DecodeStats
    from r1jax.sharding.roofline import decode_report
    from r1jax.sharding.update_stats import StepStats, update_report

    guess = "f/while: 1 trip(s) assumed, it never ends by its condition"
    for assumed in ((), (guess,)):
        step = StepStats({"all-gather": 1e9}, hbm_bytes=10**9, flops=1e12, assumed_trips=assumed)
        update = update_report(step, CHIPS["v5p"], devices_per_chip=1, model_flops_per_chip=1e12)
        decode = decode_report(DecodeStats({}, 0, 0, 10**6, 1e9, 1, assumed), CHIPS["v5p"], devices_per_chip=1,
                               rows=8, chips=1, min_read_bytes_per_chip=10**6)
        for report in (update, decode):
            assert report["assumed_trip_counts"] == len(assumed) and report["assumed_trips"] == list(assumed)
        for text in (describe_update(update), describe_decode(decode, rows=8)):
            lines = [line for line in text.splitlines() if "assumed" in line]
            assert lines == ([f"  loop trip counts not read from the program: 1 assumed or estimated (e.g. {guess})"]
                             if assumed else [])


@pytest.mark.parametrize("commuted", [False, True])
def test_a_step_added_to_a_copy_of_the_counter_is_read(commuted):
    """XLA:CPU adds the step to a copy of the counter (`add(copy(i), 2)`): 0, 2, 4 below 5 are 3 trips, read and
    not assumed (the step was taken as +1: 5 trips)."""
    from r1jax.sharding.decode_stats import program_stats

    text = (LOOP.replace("DIR", "LT").replace("START", "0").replace("BOUND", "5").replace("STEP", "2")
            .replace("NAME", "f").replace("COMPARED", "%j, %n")
            .replace("  %next = s32[] OP(%i, %step)", "  %copied = s32[] copy(%i)\n  %next = s32[] add("
                     + ("%step, %copied)" if commuted else "%copied, %step)")))
    assert "copy(%i)" in text
    _, _, flops, assumed = program_stats(text)
    assert flops == 3 * DOT and assumed == ()
