"""What a compiled program's instructions read and write in HBM, and their dot FLOPs, per device, from its HLO
text (sharding.hlo_text); the decode step's and the update's figures (sharding.decode_stats,
sharding.update_stats) add collectives and loop trip counts to them.

HBM bytes: every instruction's operands read and result written (XLA's own cost model, per device): a slice
or gather of a parameter reads what it takes, an in-place update writes the update; tuples, parameters, bitcasts and
control flow move nothing; arrays in on-chip memory (`S(1)` layouts) are not HBM traffic. The Pallas
decode-attention kernel (a custom call under the name scope `kv_read_block_N`) reads one layer of the cache
up to the live slots, counted as the XLA block-wise read is (`dynamic_trips` blocks of N slots).
"""

from __future__ import annotations

import math
import re

from r1jax.sharding.hlo_text import Computation, Instruction, parse_module, shape_bytes

_FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "call", "conditional",
         "after-all", "partition-id", "replica-id", "iota", "copy-done", "opt-barrier"}

# read only what they take of their operand: a static slice (a constant layer's cache in an unrolled stack)
# as a traced one
_SLICES = ("dynamic-slice", "slice", "gather")
_RAGGED_DOT = re.compile(r"(^|/)ragged-dot-(?!metadata)[\w.-]*$")  # op_name of XLA TPU's ragged-dot kernel
# the name scope of model.pallas_attention's kernel call, which reads `block`-slot blocks up to the live slots
KV_READ_SCOPE = "kv_read_block_"
# the kernel call's operands are (layer, lengths, q, K, V, keep); K's slots are its dim 4, V's its dim 3
KV_READ_SLOT_DIMS = {3: 4, 4: 3}
_KV_READ = re.compile(rf"(?:^|/){KV_READ_SCOPE}(\d+)/")


class HloTraffic:
    """A module's computations, with each instruction's HBM bytes and dot FLOPs per device. `dynamic_trips`: the
    live blocks taken for the decode-attention kernel's read (the caller's mean)."""

    def __init__(self, text: str, dynamic_trips: int = 1):
        self.comps = parse_module(text)
        self.dynamic_trips = dynamic_trips
        self._user_maps: dict[str, dict[str, list[Instruction]]] = {}

    def operand_bytes(self, comp: Computation, inst: Instruction) -> list[int]:
        return [shape_bytes(comp.instructions[o].shape, hbm_only=True) if o in comp.instructions else 0
                for o in inst.operands]

    def hbm_bytes(self, comp: Computation, inst: Instruction) -> int:
        if inst.opcode in _FREE or inst.opcode.endswith("-done"):
            return 0
        reads = self.operand_bytes(comp, inst)
        write = shape_bytes(inst.shape, hbm_only=True)
        fused = self.comps.get(inst.attr("calls")) if inst.opcode == "fusion" else None
        if inst.opcode in _SLICES:
            return 2 * write
        if inst.opcode == "dynamic-update-slice":
            update = reads[1] if len(reads) > 1 else 0
            return 2 * update + sum(reads[2:])
        if inst.opcode == "copy-start":
            return reads[0] if reads else 0
        kv_read = _KV_READ.search(inst.op_name) if inst.opcode == "custom-call" else None
        if kv_read is not None:
            return self._kv_read_bytes(comp, inst, reads, int(kv_read.group(1))) + write
        if fused is not None:
            reads, write = self._fused_traffic(fused, reads, write)
        return sum(reads) + write

    def _kv_read_bytes(self, comp: Computation, inst: Instruction, reads: list[int], block: int) -> int:
        """What the decode-attention kernel reads: of each layer-stacked cache operand (K [L, B, kv_heads,
        head_dim, S], V [L, B, kv_heads, S, head_dim]: `KV_READ_SLOT_DIMS`), one layer's rows up to the live
        slots (`dynamic_trips` blocks of `block` slots, at most S), as the XLA block-wise read is counted; its
        other operands whole."""
        total = 0
        for position, (operand, read) in enumerate(zip(inst.operands, reads)):
            dims = shape_dims(comp.instructions[operand].shape) if operand in comp.instructions else []
            slot_dim = KV_READ_SLOT_DIMS.get(position)
            if slot_dim is not None and len(dims) == 5 and dims[0] * dims[slot_dim]:
                read = read * min(dims[slot_dim], self.dynamic_trips * block) // (dims[0] * dims[slot_dim])
            total += read
        return total

    def _fused_traffic(self, fused: Computation, reads: list[int], write: int) -> tuple[list[int], int]:
        """A fusion reads only the slices (or gathered rows) it takes of a parameter, through bitcasts and
        nested fusions, and writes only an in-place update: a buffer that the fusion only updates and slices
        (a read-modify-write of one slice, `x.at[i].add(v)`, or of scattered rows, `x.at[rows].add(v)`) is
        updated in place, as XLA's buffer assignment shares a dynamic-update-slice or scatter fusion's
        output with that operand (only where the update is the fusion's output: `_is_output`); a scatter reads
        and writes the rows of its updates."""
        reads = list(reads)
        for inst in fused.instructions.values():
            if inst.opcode != "parameter" or not inst.attrs.isdigit() or int(inst.attrs) >= len(reads):
                continue
            index = int(inst.attrs)
            reads[index] = min(reads[index], self._read_bytes(fused, inst.name, reads[index]))
            uses = self._users(fused).get(inst.name, [])
            updates = [u for u in uses if u.operands[0] == inst.name and self._is_output(fused, u)
                       and u.opcode in ("dynamic-update-slice", "scatter")]
            if updates and all(u in updates or u.opcode in ("dynamic-slice", "slice") for u in uses):
                write = min(write, sum(self._operand(fused, u, 1) if u.opcode == "dynamic-update-slice"
                                       else self._scatter_updates(fused, u) for u in updates))
        return reads, write

    def _is_output(self, comp: Computation, inst: Instruction) -> bool:
        """Is `inst` the computation's result (its root, or only an element of its root tuple)? Only an update
        that is the fusion's output is done in place; one whose result the fusion computes on (`x.at[i].set(v)
        * 2`) reads its buffer whole and writes a new one."""
        root = comp.root
        users = self._users(comp).get(inst.name, [])
        return inst is root or (root.opcode == "tuple" and bool(users) and all(u is root for u in users))

    @staticmethod
    def _operand(comp: Computation, inst: Instruction, index: int) -> int:
        """Bytes of operand `index` of `inst` (0 when it has none there)."""
        name = inst.operands[index] if index < len(inst.operands) else None
        return comp.instructions[name].bytes if name in comp.instructions else 0

    def _scatter_updates(self, comp: Computation, scatter: Instruction) -> int:
        """Bytes of a scatter's updates: its last N of 2N + 1 operands (N buffers, the indices, N updates)."""
        n = len(scatter.operands)
        return sum(self._operand(comp, scatter, i) for i in range((n + 1) // 2, n))

    def _users(self, comp: Computation) -> dict[str, list[Instruction]]:
        if comp.name not in self._user_maps:
            users: dict[str, list[Instruction]] = {}
            for inst in comp.instructions.values():
                for operand in inst.operands:
                    users.setdefault(operand, []).append(inst)
            self._user_maps[comp.name] = users
        return self._user_maps[comp.name]

    def _read_bytes(self, comp: Computation, name: str, full: int, depth: int = 0, outer_output: bool = True) -> int:
        """Bytes of value `name` (of `full` bytes) that `comp` reads: slices and gathers read what they take,
        an in-place update's buffer (one that is the computation's output, `_is_output`, and so, through nested
        fusions, the outer fusion's: `outer_output`) nothing, bitcasts and nested fusions pass it on; anything
        else all."""
        uses = self._users(comp).get(name, [])
        if not uses or depth > 20:
            return full
        total = 0
        for use in uses:
            if use.opcode in _SLICES and use.operands[0] == name:
                total += use.bytes
            elif use.opcode == "dynamic-update-slice" and use.operands[0] == name and outer_output \
                    and self._is_output(comp, use):
                continue
            elif use.opcode == "scatter" and use.operands[0] == name and outer_output and self._is_output(comp, use):
                total += self._scatter_updates(comp, use)  # read-modify-write of the updated rows
            elif use.opcode == "bitcast":
                total += self._read_bytes(comp, use.name, full, depth + 1)
            elif use.opcode == "fusion" and use.attr("calls") in self.comps:
                nested = self.comps[use.attr("calls")]
                for index, operand in enumerate(use.operands):
                    param = nested.parameter(index) if operand == name else None
                    if param is not None:  # (its update is in place only where the nested result is output)
                        total += self._read_bytes(nested, param.name, full, depth + 1,
                                                  outer_output and self._is_output(comp, use))
            else:
                return full
        return min(total, full)

    def flops(self, comp: Computation, inst: Instruction) -> float:
        """2 x result elements x contracted size for dots (CPU) and convolutions (TPU lowers dots to them: the
        contracted size is the kernel's input features times, per spatial dimension, the (output, window)
        position pairs that read the input rather than its padding, as XLA's cost analysis counts them: a weight
        gradient's contracted batch is such a window); a ragged dot
        (TPU: a Mosaic kernel, lhs [A, K] x groups' rhs [G, K, N] -> [A, N]) 2 x A x K x N, all A rows: the
        worst case of a dropless dispatch (whether the kernel skips rows past the groups' sizes at run time is not
        measured here; model.dispatch's decode chunks keep the rows near what the copies need either way)."""
        if inst.opcode == "custom-call" and _RAGGED_DOT.search(inst.op_name):
            lhs = next((comp.instructions[o] for o in inst.operands if o in comp.instructions
                        and len(shape_dims(comp.instructions[o].shape)) == 2
                        and comp.instructions[o].shape.startswith(("bf16", "f32", "f16", "f8"))), None)
            return 2.0 * math.prod(shape_dims(lhs.shape)) * shape_dims(inst.shape)[-1] if lhs is not None else 0.0
        if inst.opcode not in ("dot", "convolution") or len(inst.operands) < 2:
            return 0.0
        if any(o not in comp.instructions for o in inst.operands[:2]):
            return 0.0
        if inst.opcode == "dot":
            found = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", inst.attrs)
            if not found:
                return 0.0
            sizes = shape_dims(comp.instructions[inst.operands[0]].shape)
            contracted = math.prod(sizes[int(d)] for d in found.group(1).split(",") if d)
            return 2.0 * math.prod(shape_dims(inst.shape)) * contracted
        labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", inst.attrs)
        if not labels:
            return 0.0
        lhs, rhs = (shape_dims(comp.instructions[o].shape) for o in inst.operands[:2])
        out = shape_dims(inst.shape)
        features = math.prod(rhs[i] for i, label in enumerate(labels.group(2)) if label == "i")
        # output batch x output features x the kernel's input features, times each spatial dimension's pairs
        fmas = math.prod(out[i] for i, label in enumerate(labels.group(3)) if not label.isdigit()) * features
        for spatial in sorted(label for label in labels.group(3) if label.isdigit()):
            size_in, size_k, size_out = (dims[labels.group(g).index(spatial)]
                                         for g, dims in ((1, lhs), (2, rhs), (3, out)))
            fmas *= _valid_pairs(size_in, size_k, size_out, *_window(inst.attrs, int(spatial)))
        return 2.0 * fmas


def _window(attrs: str, dim: int) -> tuple[int, int, int, int]:
    """(stride, padding low, lhs dilation, rhs dilation) of a convolution's spatial dimension `dim`."""
    body = re.search(r"window=\{([^}]*)\}", attrs)
    fields = dict(re.findall(r"(\w+)=([0-9x_-]+)", body.group(1))) if body else {}

    def get(key: str, default: str) -> str:
        parts = fields.get(key, "").split("x")
        return parts[dim] if dim < len(parts) and parts[dim] else default

    return int(get("stride", "1")), int(get("pad", "0_0").split("_")[0]), int(get("lhs_dilate", "1")), \
        int(get("rhs_dilate", "1"))


def _valid_pairs(size_in: int, size_k: int, size_out: int, stride: int, pad_low: int, lhs_dilate: int,
                 rhs_dilate: int) -> int:
    """(output position, window position) pairs of one spatial dimension that read an input element: not
    padding, nor a hole of a dilated input (XLA's HloCostAnalysis counts a convolution's FLOPs so)."""
    extent = (size_in - 1) * lhs_dilate + 1  # the dilated input's positions, padding excluded
    total = 0
    for w in range(size_k):
        offset = w * rhs_dilate - pad_low  # output position p reads p * stride + offset
        if lhs_dilate == 1:  # positions 0 <= p * stride + offset < extent: a range of p
            first = max(0, -(offset // stride))  # ceil(-offset / stride)
            last = min(size_out - 1, (extent - 1 - offset) // stride) if extent - 1 - offset >= 0 else -1
            total += max(0, last - first + 1)
        else:
            total += sum(1 for p in range(size_out) if 0 <= p * stride + offset < extent
                         and (p * stride + offset) % lhs_dilate == 0)
    return total


def shape_dims(shape: str) -> list[int]:
    found = re.search(r"\[([0-9,]*)\]", shape)
    return [int(d) for d in found.group(1).split(",") if d] if found else []
