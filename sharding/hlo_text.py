"""A reader for compiled HLO text (`compiled.as_text()`): computations, their instructions, shapes in bytes.

Only what `sharding.decode_stats` needs is parsed: each instruction's name, result shape, opcode, operand
names, the computations it calls (fusions, calls, while bodies, conditional branches) and its attributes as
text; a collective's group size (`replica_group_size`) and the module's device counts (`module_devices`).
Shapes are per device after SPMD partitioning, so bytes are per device. A layout carrying `S(1)` is in
on-chip memory (TPU VMEM), not HBM.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional

# Bytes per element; sub-byte integer types count as a fraction.
DTYPE_BYTES = {
    "pred": 1, "s2": 0.25, "u2": 0.25, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4,
    "u32": 4, "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "f8e4m3b11fnuz": 1, "f8e4m3": 1,
    "f8e3m4": 1, "f8e8m0fnu": 1, "f4e2m1fn": 0.5, "token": 0,
}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{\s*$")
_CALLED = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_MODULE_COUNT = re.compile(r"\b(replica_count|num_partitions)=(\d+)")
_IOTA_GROUPS = re.compile(r"\[(\d+(?:,\d+)*)\]<=\[")  # [groups,size]<=[8] or [2,4]<=[4,2]T(1,0)
_MESH_AXIS = re.compile(r"^'?([^'=]+?)'?=(\d+)$")  # 'axis_0'=4 (a mesh's axis and its size)
_GROUP_AXIS = re.compile(r"^'?([^':]+?)'?(?::\((\d+)\)(\d+))?$")  # 'axis_0', or a sub-axis 'axis_0':(1)2


def leaf_bytes(shape: str, *, hbm_only: bool = False) -> list[int]:
    """Bytes of each array in a shape string ("f32[8,32]{1,0}" or a tuple of them); with `hbm_only`, arrays
    whose layout places them in on-chip memory (`S(1)`) count 0."""
    out = []
    for dtype, dims, layout in _ARRAY.findall(shape):
        if dtype not in DTYPE_BYTES:
            continue
        size = math.prod(int(d) for d in dims.split(",") if d) * DTYPE_BYTES[dtype]
        out.append(0 if hbm_only and "S(1)" in (layout or "") else int(size))
    return out


def shape_bytes(shape: str, *, hbm_only: bool = False) -> int:
    return sum(leaf_bytes(shape, hbm_only=hbm_only))


def module_devices(text: str) -> Optional[tuple[int, int]]:
    """(replica_count, num_partitions) from the module's `HloModule` header line: XLA prints each only where it
    is not 1, so an absent one is 1 (an SPMD program's devices are its partitions). None without a header."""
    header = next((line for line in text.splitlines() if line.startswith("HloModule ")), None)
    if header is None:
        return None
    counts = {key: int(value) for key, value in _MODULE_COUNT.findall(header)}
    return counts.get("replica_count", 1), counts.get("num_partitions", 1)


def replica_group_size(attrs: str) -> Optional[int]:
    """The number of devices in each of a collective's groups, from its `replica_groups` attribute in any of
    the formats XLA prints: explicit lists `{{0,1,2,3},{4,5,6,7}}` (the groups are of equal size), an iota list
    `[2,4]<=[8]` or `[2,4]<=[4,2]T(1,0)` (groups x size: the first bracket's last dim), or mesh axes
    `mesh['a'=2,'b'=4] {'b'}` (optionally `, device_ids=(...)` before the axes; a sub-axis `'b':(1)2` counts
    its own size; the product of the named axes' sizes; `maximal_mesh[...] {}` is one device). None where the
    groups are empty (`{}`: every device of the mode's kind in one group, `sharding.decode_stats`), absent or
    unreadable."""
    start = attrs.find("replica_groups=")
    if start < 0:
        return None
    text = attrs[start + len("replica_groups="):]
    if text.startswith("{"):
        groups = text[:_balanced(text, 0)]
        first = re.match(r"\{\{([^}]*)\}", groups)
        size = len([d for d in first.group(1).split(",") if d.strip()]) if first else 0
        return size or None
    iota = _IOTA_GROUPS.match(text)
    if iota:
        return int(iota.group(1).split(",")[-1])
    if text.startswith("maximal_mesh["):
        return 1
    if not text.startswith("mesh["):
        return None
    close = _balanced(text, len("mesh"))
    sizes = {}
    for axis in text[len("mesh") + 1:close - 1].split(","):
        found = _MESH_AXIS.match(axis.strip())
        if found is None:
            return None
        sizes[found.group(1)] = int(found.group(2))
    rest = text[close:]
    if rest.startswith(", device_ids="):  # a mesh whose devices are not in iota order: `device_ids=(...)`
        paren = rest.find("(")
        rest = rest[_balanced(rest, paren):]
    rest = rest.lstrip()
    if not rest.startswith("{"):
        return None
    size = 1
    for axis in filter(None, (a.strip() for a in rest[1:_balanced(rest, 0) - 1].split(","))):
        found = _GROUP_AXIS.match(axis)
        if found is None or (found.group(3) is None and found.group(1) not in sizes):
            return None
        size *= int(found.group(3)) if found.group(3) is not None else sizes[found.group(1)]
    return size


# collectives whose `use_global_device_ids` decides what their groups' ids are (XLA's GetCollectiveOpGroupMode);
# every other one with a channel_id groups partitions
_GLOBAL_ID_KINDS = ("all-gather", "all-reduce", "reduce-scatter")


def collective_group_size(inst: "Instruction", kind: str, devices: Optional[tuple[int, int]]) -> Optional[int]:
    """How many devices take part in each group of this collective: its `replica_groups`' size, read as
    XLA's group modes read the ids (GetCollectiveOpGroupMode): without a channel_id, replicas; with one,
    partitions, except an all-gather, all-reduce or reduce-scatter without `use_global_device_ids=true`,
    whose groups of replicas take every partition of theirs (n = group size x partitions); with it, global
    device ids. Empty groups are every replica (or partition, or device) of the module. None where that
    count is unknown (`devices`, the module's (replicas, partitions): None without its header)."""
    size = inst.replica_group_size
    if "channel_id=" not in inst.attrs:
        mode = "replicas"
    elif kind not in _GLOBAL_ID_KINDS:
        mode = "partitions"
    elif "use_global_device_ids=true" in inst.attrs:
        mode = "devices"
    else:
        mode = "replicas x partitions"
    if size is not None and mode != "replicas x partitions":
        return size
    if devices is None:
        return None
    replicas, partitions = devices
    return {"replicas": replicas, "partitions": partitions, "devices": replicas * partitions,
            "replicas x partitions": (size or replicas) * partitions}[mode]


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    root: bool = False

    @property
    def bytes(self) -> int:
        return shape_bytes(self.shape)

    def called(self) -> list[str]:
        """Computations this instruction calls, in order (a conditional's branches all listed)."""
        names = [m.group(2) for m in _CALLED.finditer(self.attrs)]
        for group in _BRANCHES.findall(self.attrs):
            names += [n.strip().lstrip("%") for n in group.split(",") if n.strip()]
        return names

    @property
    def replica_group_size(self) -> Optional[int]:
        """A collective's devices per group (`replica_group_size`); None where its groups are empty."""
        return replica_group_size(self.attrs)

    def attr(self, key: str) -> str | None:
        match = re.search(rf"\b{key}=%?([\w.\-]+)", self.attrs)
        return match.group(1) if match else None

    @property
    def op_name(self) -> str:
        match = re.search(r'op_name="([^"]*)"', self.attrs)
        return match.group(1) if match else ""

    @property
    def trip_count(self) -> int | None:
        """A while loop's trip count as the compiler states it (backend_config known_trip_count)."""
        match = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', self.attrs)
        return int(match.group(1)) if match else None

    @property
    def integer(self) -> int | None:
        """A scalar integer constant's value."""
        match = re.match(r"-?\d+\b", self.attrs) if self.opcode == "constant" else None
        return int(match.group(0)) if match else None

    @property
    def tuple_index(self) -> int | None:
        match = re.search(r"\bindex=(\d+)", self.attrs)
        return int(match.group(1)) if match else None


@dataclasses.dataclass
class Computation:
    name: str
    instructions: dict[str, Instruction]
    entry: bool = False

    @property
    def root(self) -> Instruction:
        return next(i for i in self.instructions.values() if i.root)

    def parameter(self, index: int) -> Instruction | None:
        return next((i for i in self.instructions.values()
                     if i.opcode == "parameter" and i.attrs == str(index)), None)


def _balanced(text: str, start: int) -> int:
    """Index just past the bracket group opening at text[start]."""
    depth = 0
    for pos in range(start, len(text)):
        depth += (text[pos] in "({[") - (text[pos] in ")}]")
        if depth == 0:
            return pos + 1
    return len(text)


def parse_instruction(line: str) -> Instruction | None:
    text = line.strip()
    root = text.startswith("ROOT ")
    text = text[5:] if root else text
    if not text.startswith("%") or " = " not in text:
        return None
    name, rest = text[1:].split(" = ", 1)
    end = _balanced(rest, 0) if rest.startswith("(") else rest.index(" ")
    shape, rest = rest[:end], rest[end:].lstrip()
    paren = rest.find("(")
    if paren < 0:
        return None
    opcode = rest[:paren]
    close = _balanced(rest, paren)
    args, attrs = rest[paren + 1:close - 1], rest[close:].lstrip(", ")
    if opcode == "parameter":  # attrs holds the parameter's number
        return Instruction(name, shape, opcode, [], args.strip(), root)
    if opcode == "constant":  # attrs starts with the literal ("48, metadata=...")
        return Instruction(name, shape, opcode, [], ", ".join(filter(None, (args.strip(), attrs))), root)
    return Instruction(name, shape, opcode, re.findall(r"%([\w.\-]+)", args), attrs, root)


def parse_module(text: str) -> dict[str, Computation]:
    """Every computation of an HLO module's text, by name."""
    comps: dict[str, Computation] = {}
    current: Computation | None = None
    for line in text.splitlines():
        if current is None:
            header = _HEADER.match(line)
            if header:
                current = Computation(header.group(2), {}, entry=bool(header.group(1)))
            continue
        if line.startswith("}"):  # "}" or e.g. `}, execution_thread="sparsecore"` (TPU)
            comps[current.name] = current
            current = None
            continue
        inst = parse_instruction(line)
        if inst is not None:
            current.instructions[inst.name] = inst
    return comps
