"""Loop trip counts read from a compiled program's HLO text (`LoopTrips.trip_count`; the costs read with them:
sharding.decode_stats, sharding.hlo_traffic).

A loop's trip count is the one XLA states (`known_trip_count`), else the one its name scope states
(`expected_trips_M`: `model.blocked.block_loop`, whatever its condition, start and step); libtpu states none, so
it is read from the loop's condition (a counter compared with a constant bound, in any direction XLA prints:
`_trips`), the counter's start (its initial tuple element) and its step (what the body adds to it, through
copies and fusions); a traced bound takes the caller's `dynamic_trips` (estimated). A count neither read nor
stated is recorded in `LoopTrips.assumed`, which the reports carry (`assumed_trips`).
"""

from __future__ import annotations

import re
from typing import Optional

from r1jax.sharding.hlo_text import Computation, Instruction
from r1jax.sharding.hlo_traffic import HloTraffic

_EXPECTED_TRIPS = re.compile(r"(?:^|/)expected_trips_(\d+)/while$")  # a traced loop's stated trip count


class LoopTrips(HloTraffic):
    """A compiled program's HLO (HloTraffic) and its loops' trip counts, read or assumed (`assumed`)."""

    def __init__(self, text: str, dynamic_trips: int = 1):
        super().__init__(text, dynamic_trips)
        self.assumed: dict[str, str] = {}  # a loop's name -> the trip count taken for it and why (not read)

    def trip_count(self, parent: Computation, loop: Instruction) -> int:
        """The compiler's stated trip count, else the count a loop made under the name scope `expected_trips_M`
        states (the blocked MoE kernel's used blocks: `model.blocked.block_loop`; the model's own statement of
        the count, taken whatever its condition, start and step), else read from the loop: a condition comparing
        a counter (a tuple element whose initial value is a constant, stepped by a constant in the body: +1
        where the step is not readable, as in every loop JAX emits) with a constant bound, in any direction XLA
        prints (`_trips`); when the bound is not a constant, `dynamic_trips`; when the condition is not of that
        form, or it never ends, unknown: 1. A count neither read nor stated is recorded in `assumed` (the report
        says so)."""
        if loop.trip_count is not None:
            return loop.trip_count
        stated = _EXPECTED_TRIPS.search(loop.op_name)
        if stated:
            return int(stated.group(1))
        trips, why = self._read_trips(parent, loop)
        if why is not None:
            self.assumed[loop.name] = f"{loop.op_name or loop.name}: {trips} trip(s) {why}"
        return trips

    def _read_trips(self, parent: Computation, loop: Instruction) -> tuple[int, Optional[str]]:
        """`trip_count`'s reading: (trips, None) when read; else (the count taken, "assumed, <why not read>", or
        "estimated, ..." for the caller's mean count of a traced bound)."""
        def unread(why: str, taken: int = 1) -> tuple[int, Optional[str]]:
            return taken, f"assumed, {why}"
        cond = self.comps.get(loop.attr("condition"))
        root, operands = self._unfused(cond, cond.root) if cond is not None else (None, [])
        direction = re.search(r"\bdirection=([A-Z]{2})\b", root.attrs) if root is not None else None
        if root is None or root.opcode != "compare" or direction is None or len(operands) != 2:
            return unread("its condition is not a counter compared with a bound")
        direction = direction.group(1)
        counter, bound = operands
        if bound is not None and bound.opcode == "get-tuple-element" and counter is not None \
                and counter.opcode != "get-tuple-element":  # `N > i`: read as `i < N`
            counter, bound, direction = bound, counter, _MIRRORED.get(direction, direction)
        if counter is None or bound is None or counter.opcode != "get-tuple-element":
            return unread("its condition is not a counter compared with a bound")
        if bound.integer is None:  # a traced bound (e.g. the block-wise cache read's live blocks)
            if self.dynamic_trips > 1:  # the caller's estimate (rl.aot.dynamic_trips), no guess
                return self.dynamic_trips, ("estimated, its bound is traced: the caller's mean count (a block-wise "
                                            "KV-cache read's live blocks over a rollout)")
            return unread("its bound is traced", self.dynamic_trips)
        init = parent.instructions.get(loop.operands[0]) if loop.operands else None
        start, guesses = None, []
        if init is not None and init.opcode == "tuple" and counter.tuple_index < len(init.operands):
            first = _uncopied(parent, parent.instructions.get(init.operands[counter.tuple_index]))
            start = first.integer if first is not None else None
        if start is None:  # a traced start: read only as a counter up from 0 (JAX's loops), else unknown
            if direction != "LT":  # (a count down from it to N read as from 0 gave 0 trips)
                return unread("its counter's start is traced")
            start = 0
            guesses.append("its counter's start is traced: counted from 0")
        body = self.comps.get(loop.attr("body"))
        step = self._step(body, counter.tuple_index) if body else None
        trips = _trips(direction, start, bound.integer, 1 if step is None else step)
        if trips is None:
            return unread("it never ends by its condition")
        if step is None:
            guesses.append("its counter's step is not readable: +1 taken")
        return trips, ("assumed, " + "; ".join(guesses)) if guesses else None

    def _unfused(self, comp: Computation, inst: Instruction) -> tuple[Optional[Instruction], list]:
        """An instruction and its operands' instructions, or, for a fusion of one (CPU wraps a loop's compare and
        its counter's add each in a fusion of its own), the fused instruction and its operands: the fusion's
        operands for its parameters, constants as fused. (None, []) where a fused operand is neither."""
        if inst.opcode != "fusion":
            return inst, [comp.instructions.get(o) for o in inst.operands]
        fused = self.comps.get(inst.attr("calls"))
        if fused is None:
            return None, []
        operands = []
        for name in fused.root.operands:
            operand = fused.instructions.get(name)
            if operand is not None and operand.opcode == "parameter" and int(operand.attrs) < len(inst.operands):
                operand = comp.instructions.get(inst.operands[int(operand.attrs)])
            elif operand is None or operand.opcode != "constant":
                return None, []
            operands.append(operand)
        return fused.root, operands

    def _step(self, body: Computation, index: int) -> Optional[int]:
        """What a loop body adds to its tuple element `index` each iteration: `add(element, c)`, `add(c, element)`
        or `subtract(element, c)` for a constant c (through copies and a fusion of it); None where it is not of
        that form."""
        root = body.root
        inst = _uncopied(body, body.instructions.get(root.operands[index]) if root.opcode == "tuple" and index < len(
            root.operands) else None)
        inst, operands = self._unfused(body, inst) if inst is not None else (None, [])
        if inst is None or inst.opcode not in ("add", "subtract") or len(operands) != 2:
            return None
        a, b = (_uncopied(body, x) for x in operands)  # (XLA:CPU adds to a copy of the counter)
        if inst.opcode == "add" and a is not None and a.integer is not None:
            a, b = b, a
        if a is None or b is None or b.integer is None or a.opcode != "get-tuple-element" or a.tuple_index != index:
            return None
        return b.integer if inst.opcode == "add" else -b.integer


def _uncopied(comp: Computation, inst: Optional[Instruction]) -> Optional[Instruction]:
    """The value a chain of copies copies."""
    while inst is not None and inst.opcode == "copy":
        inst = comp.instructions.get(inst.operands[0])
    return inst


_MIRRORED = {"LT": "GT", "LE": "GE", "GT": "LT", "GE": "LE"}  # `a < b` is `b > a`


def _trips(direction: str, start: int, bound: int, step: int) -> Optional[int]:
    """How many times `counter <direction> bound` holds for counter = start, start + step, ... before it first
    fails (the compare is numeric: signed, as XLA's on s32; an unsigned counter's values are never negative);
    None where it never fails (a loop that runs forever, or until its counter wraps around: not read)."""
    if direction in ("GT", "GE"):  # `i > n` counting down is `-i < -n` counting up
        direction, start, bound, step = "L" + direction[1], -start, -bound, -step
    if direction == "LE":  # on integers `i <= n` is `i < n + 1`
        direction, bound = "LT", bound + 1
    if direction == "LT":
        if start >= bound:
            return 0
        return None if step <= 0 else -((start - bound) // step)  # ceil((bound - start) / step)
    if direction == "NE":
        if start == bound:
            return 0
        return (bound - start) // step if step and (bound - start) % step == 0 and (bound - start) // step > 0 \
            else None
    if direction == "EQ":
        return 0 if start != bound else (None if step == 0 else 1)
    return None
