"""What one decode step costs per chip, read from a compiled sampler's HLO text (its roofline: sharding.roofline).

The decode loop is the `while` whose op_name ends in `decode/while` (the sampler runs its token loop under
`jax.named_scope("decode")`; with `sampling.cache_phases` the later phases' loops, over longer caches, end in
`decode_phase_{end}/while` and each counts by its share of the steps: `decode_stats`). One iteration of its
body decodes one token for every row, so everything counted in the body is per decoded token (one step of the
batch), per device. Nested loops (the layer scan) count once per iteration: their body's figures are
multiplied by their trip count (`sharding.loop_trips`). A conditional counts its costliest branch.

Collective bytes, per device, by kind: what a device receives over the interconnect
(`_Module.collective_bytes`), for a group of n devices (the instruction's `replica_groups`,
`hlo_text.replica_group_size`): an all-gather (n - 1) / n of its gathered result (the device holds its own 1/n
already); a reduce-scatter or an all-to-all (n - 1) / n of its operand (its own share stays on the device; of
a ragged all-to-all, its input: an upper bound); an all-reduce (n - 1) / n of its operand, one phase of the
two it runs (a reduce-scatter then an all-gather: `sharding.roofline.collective_seconds` counts it twice), but
a reduce-scatter's when libtpu fused it with the slice each device keeps (a fusion calling
`%all-reduce-scatter...`: it runs as one); a collective-permute its whole operand. Before 2026-12-03 the whole
result or operand was counted, 8/7 of what a device receives in a group of 8. A weight all-gather (counted the
same way) is one whose data is loop-invariant in the decode loop: followed back through data movement
(bitcast, copy, reshape, transpose, convert, slices, fusions of those), it reaches a decode-loop value that
every iteration passes on unchanged, i.e. a parameter the loop closes over.

HBM bytes and dot FLOPs: sharding.hlo_traffic.

Its roofline time and the `decode` report: `sharding.roofline`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from r1jax.sharding.hlo_text import Computation, Instruction, collective_group_size, module_devices, shape_bytes
from r1jax.sharding.loop_trips import LoopTrips

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_MOVES_DATA = {"bitcast", "copy", "reshape", "transpose", "convert", "slice", "dynamic-slice", "broadcast",
               "bitcast-convert", "copy-start", "copy-done", "all-gather", "all-gather-start",
               "all-gather-done", "get-tuple-element", "fusion", "pad", "concatenate"}
# libtpu's fusion of an all-reduce and the slice each device keeps: it runs as a reduce-scatter (each device
# receives (n - 1) / n of the operand once), so its inner all-reduce counts as one
_ALL_REDUCE_SCATTER = re.compile(r"%?all-reduce-scatter(?:\.|$)")
# a decode loop: the first (or only) phase's, or a later phase's over a cache grown to prompt + `end` slots
# (rl.decoding.phase_ends; the loops of continuous batching's tail, `decode_tail_N`, are not read)
_DECODE_LOOP = re.compile(r"(?:^|/)decode(?:_phase_(\d+))?/while$")


def collective_kind(opcode: str) -> Optional[str]:
    base = opcode.removesuffix("-start")
    if base in COLLECTIVES:
        return base
    return "all-to-all" if base == "ragged-all-to-all" else None


@dataclasses.dataclass
class DecodeStats:
    """Per device, per decode-loop iteration (one token for every row)."""

    collective_bytes: dict[str, int]  # by kind, bytes received per device (an all-reduce's: one of its 2 phases)
    weight_allgather_bytes: int  # of collective_bytes["all-gather"], the weight all-gathers' (received per device)
    weight_allgathers: int  # how many weight all-gathers run per iteration (nested trip counts applied)
    hbm_bytes: int
    flops: float  # dot FLOPs per device (2 x output elements x contracted size)
    loops: int  # decode loops found
    assumed_trips: tuple[str, ...] = ()  # the loops whose trip count was not read but assumed, and what was taken

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Module(LoopTrips):
    """A compiled program's HLO: its HBM traffic and FLOPs (HloTraffic), loops' trip counts (LoopTrips),
    collectives and which values are the decode loop's loop-invariant data."""

    def __init__(self, text: str, dynamic_trips: int = 1):
        super().__init__(text, dynamic_trips)
        self.devices = module_devices(text)  # (replicas, partitions); None without the module's header line
        self.callers: dict[str, tuple[Computation, Instruction]] = {}
        for comp in self.comps.values():
            for inst in comp.instructions.values():
                for name in inst.called():
                    self.callers.setdefault(name, (comp, inst))

    def decode_loops(self) -> list[tuple[Computation, Instruction]]:
        """The first phase's loops (`decode/while`) and the later phases' (`decode_phase_{end}/while`)."""
        return [(comp, inst) for comp in self.comps.values() for inst in comp.instructions.values()
                if inst.opcode == "while" and _DECODE_LOOP.search(inst.op_name)]

    # -- where data comes from ------------------------------------------------------------------------
    def invariant_index(self, body: Computation, index: int) -> bool:
        """Does the loop with this body pass tuple element `index` on unchanged?"""
        root = body.root
        if root.opcode != "tuple" or index >= len(root.operands):
            return False
        return self._passes_on(body, root.operands[index], index)

    def _passes_on(self, body: Computation, name: str, index: int, depth: int = 0) -> bool:
        """Is value `name` of loop body `body` the body's own tuple element `index`: read from its parameter, or
        handed through an inner loop that passes it on (libtpu's decode body returns the layer scan's copy of
        the stacked weights, `get-tuple-element(while), index=j`, not its own parameter's)?"""
        inst = body.instructions.get(name)
        while inst is not None and inst.opcode in ("copy", "bitcast"):
            inst = body.instructions.get(inst.operands[0])
        if inst is None or inst.opcode != "get-tuple-element" or depth > 20:
            return False
        source = body.instructions.get(inst.operands[0])
        if source is not None and source.opcode == "parameter":
            return inst.tuple_index == index
        if source is None or source.opcode != "while":
            return False
        inner = self.comps.get(source.attr("body"))
        init = body.instructions.get(source.operands[0])
        return (inner is not None and init is not None and init.opcode == "tuple"
                and inst.tuple_index < len(init.operands) and self.invariant_index(inner, inst.tuple_index)
                and self._passes_on(body, init.operands[inst.tuple_index], index, depth + 1))

    def is_invariant(self, comp: Computation, name: str, decode_body: str, depth: int = 0) -> bool:
        """Is value `name` of `comp` loop-invariant data of the decode loop (see the module docstring)?"""
        inst = comp.instructions.get(name)
        if inst is None or depth > 200:
            return False
        if inst.opcode == "get-tuple-element":
            source = comp.instructions.get(inst.operands[0])
            index = inst.tuple_index
            if source is not None and source.opcode == "parameter":
                return self._loop_parameter(comp, index, decode_body, depth)
            if source is not None and source.opcode == "tuple":
                return self.is_invariant(comp, source.operands[index], decode_body, depth + 1)
            if source is not None and source.opcode == "while":
                body = self.comps[source.attr("body")]
                init = comp.instructions.get(source.operands[0])
                return (self.invariant_index(body, index) and init is not None and init.opcode == "tuple"
                        and self.is_invariant(comp, init.operands[index], decode_body, depth + 1))
            return False
        if inst.opcode == "parameter":  # a fused or called computation's parameter: the caller's operand
            if comp.name not in self.callers:
                return False
            parent, caller = self.callers[comp.name]
            if caller.opcode == "while":
                return False  # a whole loop tuple is carried state
            index = int(inst.attrs)
            return index < len(caller.operands) and self.is_invariant(parent, caller.operands[index],
                                                                      decode_body, depth + 1)
        if inst.opcode not in _MOVES_DATA or not inst.operands:
            return False
        if inst.opcode == "fusion":
            fused = self.comps.get(inst.attr("calls"))
            return fused is not None and self.is_invariant(fused, fused.root.name, decode_body, depth + 1)
        data = max(inst.operands, key=lambda o: comp.instructions[o].bytes if o in comp.instructions else 0)
        return self.is_invariant(comp, data, decode_body, depth + 1)

    def _loop_parameter(self, comp: Computation, index: int, decode_body: str, depth: int) -> bool:
        if comp.name not in self.callers:
            return False
        parent, caller = self.callers[comp.name]
        if caller.opcode != "while":  # a called computation's tuple parameter: follow the caller's operand
            return bool(caller.operands) and self._tuple_element(parent, caller.operands[0], index, decode_body,
                                                                   depth)
        if not self.invariant_index(comp, index):
            return False
        if comp.name == decode_body:
            return True
        init = parent.instructions.get(caller.operands[0])
        return init is not None and init.opcode == "tuple" and self.is_invariant(
            parent, init.operands[index], decode_body, depth + 1)

    def _tuple_element(self, comp, name, index, decode_body, depth) -> bool:
        inst = comp.instructions.get(name)
        return (inst is not None and inst.opcode == "tuple"
                and self.is_invariant(comp, inst.operands[index], decode_body, depth + 1))

    # -- costs ----------------------------------------------------------------------------------------
    def collective_bytes(self, comp: Computation, inst: Instruction, kind: str) -> float:
        """The bytes one device receives over the interconnect for this collective (the module docstring): of
        the data it moves (an all-gather's result, another collective's operands, a ragged all-to-all's input),
        the (n - 1) / n share of a group of n that comes from the other devices; a collective-permute's whole
        operand. Where n is unknown (empty groups in a text without its module header) the whole data counts,
        an overestimate of at most n / (n - 1)."""
        # what crosses the interconnect, wherever the chip holds it (HBM or on-chip memory, `S(1)` on TPU):
        # an operand staged on chip moves as many bytes (counted only as HBM traffic, it was missed: 2026-12-02)
        operands = [shape_bytes(comp.instructions[o].shape) if o in comp.instructions else 0
                    for o in inst.operands]
        if kind == "collective-permute":
            return sum(operands)
        if kind == "all-gather":  # an async start's shape holds its operands and its result
            moved = inst.bytes - sum(operands) if inst.opcode.endswith("-start") else inst.bytes
        elif inst.opcode.removesuffix("-start") == "ragged-all-to-all":
            # operands: input, output buffer, offsets and sizes; only the input is sent (at most all of it)
            moved = operands[0] if operands else 0
        else:
            moved = sum(operands)
        n = collective_group_size(inst, kind, self.devices)
        return moved if not n else moved * (n - 1) / n

def _add(into: dict, other: dict, scale: float = 1) -> None:
    for key, value in other.items():
        into[key] = into.get(key, 0) + value * scale


def _walk(module: _Module, comp: Computation, decode_body: Optional[str], seen: tuple = ()) -> dict:
    """Per-iteration totals of one computation (and everything it calls); weight all-gathers are told apart
    only inside a decode loop (`decode_body`, None elsewhere)."""
    totals = {"hbm": 0, "flops": 0.0, "weight_ag": 0, "weight_ag_count": 0}
    scatters = _ALL_REDUCE_SCATTER.match(comp.name) is not None  # (its all-reduce: a reduce-scatter)
    for inst in comp.instructions.values():
        kind = collective_kind(inst.opcode)
        if scatters and kind == "all-reduce":
            kind = "reduce-scatter"
        if kind is not None:
            moved = module.collective_bytes(comp, inst, kind)
            _add(totals, {kind: moved})
            if kind == "all-gather" and decode_body is not None and inst.operands and all(
                    module.is_invariant(comp, o, decode_body) for o in inst.operands):
                _add(totals, {"weight_ag": moved, "weight_ag_count": 1})
        totals["hbm"] += module.hbm_bytes(comp, inst)
        totals["flops"] += module.flops(comp, inst)
        called = [c for c in inst.called() if c in module.comps and c not in seen]
        if inst.opcode == "while":
            body = module.comps.get(inst.attr("body"))
            if body is not None and body.name not in seen:
                _add(totals, _walk(module, body, decode_body, seen + (body.name,)), module.trip_count(comp, inst))
        elif inst.opcode == "conditional":
            branches = [_walk(module, module.comps[c], decode_body, seen + (c,)) for c in called]
            if branches:
                _add(totals, max(branches, key=lambda b: b["hbm"] + sum(b.get(k, 0) for k in COLLECTIVES)))
        elif inst.opcode in ("fusion", "call", "async-start", "custom-call"):
            for c in called:
                inner = _walk(module, module.comps[c], decode_body, seen + (c,))
                inner["hbm"] = inner["hbm"] if inst.opcode == "call" else 0  # a fusion's traffic is its own
                _add(totals, inner)
    return totals


def phase_step_shares(phase_ends: tuple[int, ...]) -> list[float]:
    """Each decode phase's share of the steps of a rollout that runs to the budget: (end_i - end_i-1) / budget.
    `phase_ends`: the completion slots filled by the end of each phase (rl.decoding.phase_ends)."""
    return [(end - start) / phase_ends[-1] for start, end in zip((0, *phase_ends[:-1]), phase_ends)]


def decode_stats(hlo_text: str, dynamic_trips: int = 1, phase_ends: tuple[int, ...] = ()
                 ) -> Optional[DecodeStats]:
    """The decode loop's per-iteration costs per device, None if none is found. `dynamic_trips`: the trip
    count taken for a loop inside it whose bound is traced (a block-wise cache read's live blocks; the caller's
    mean). `phase_ends`: the completion slots filled by the end of each decode phase (rl.decoding.phase_ends):
    each phase's loop counts by the share of the budget's steps it runs (`phase_step_shares`),
    so the figures are a decode step's mean over a rollout that runs to the budget. Without phases, every
    decode loop found counts once (summed)."""
    module = _Module(hlo_text, dynamic_trips)
    loops = module.decode_loops()
    if not loops:
        return None
    weight = {}  # a loop's phase (None: the first) -> its share of the steps
    if len(phase_ends) > 1:
        weight = {(None if i == 0 else str(end)): share
                  for i, (end, share) in enumerate(zip(phase_ends, phase_step_shares(phase_ends)))}
    totals: dict = {}
    for _, loop in loops:
        body = module.comps[loop.attr("body")]
        phase = _DECODE_LOOP.search(loop.op_name).group(1)
        if weight and phase not in weight:
            raise ValueError(f"decode loop {loop.op_name!r} belongs to no phase of {phase_ends}")
        _add(totals, _walk(module, body, body.name, (body.name,)), weight.get(phase, 1))
    return DecodeStats({k: round(totals.get(k, 0)) for k in COLLECTIVES}, round(totals["weight_ag"]),
                       round(totals["weight_ag_count"]), round(totals["hbm"]), float(totals["flops"]), len(loops),
                       tuple(module.assumed.values()))


def program_costs(hlo_text: str) -> tuple[dict[str, int], int, float]:
    """A whole program's costs per device, counted as in a decode step (loops times their trip counts):
    (collective bytes received by kind, HBM bytes, dot FLOPs)."""
    return program_stats(hlo_text)[:3]


def program_stats(hlo_text: str) -> tuple[dict[str, int], int, float, tuple[str, ...]]:
    """`program_costs` and the loops whose trip count was assumed, not read (`sharding.loop_trips`)."""
    module = _Module(hlo_text)
    entry = next(c for c in module.comps.values() if c.entry)
    totals = _walk(module, entry, None, (entry.name,))
    return ({k: round(totals.get(k, 0)) for k in COLLECTIVES}, int(totals["hbm"]), float(totals["flops"]),
            tuple(module.assumed.values()))
