"""Compiling a lowered program for a mesh's devices (real or libtpu's compile-only ones) and reading what it
needs per device: XLA's memory analysis and cost estimate, or libtpu's stated need when it refuses.

Memory per device of a compiled program (`ProgramStats.peak_bytes`): the TPU compiler's own peak (buffers
live at once, its arguments included; where absent, arguments + outputs - aliased (donated) + temporaries)
plus the generated code. When libtpu refuses a program for lack of memory, its peak is the requirement libtpu
states (`topology.parse_oom`). XLA's cost estimate (flops, bytes accessed) is kept as XLA gives it. A program
with a decode loop (the sampler) also gets its per-iteration costs read from its HLO text
(`sharding.decode_stats`); every program's whole run is read the same way (`sharding.update_stats`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time

import jax
import jax.numpy as jnp

from r1jax.sharding.decode_stats import DecodeStats, decode_stats
from r1jax.sharding.topology import parse_oom
from r1jax.sharding.update_stats import StepStats


@dataclasses.dataclass(frozen=True)
class ProgramStats:
    """One compiled program on one device, from `memory_analysis()` and `cost_analysis()`."""

    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    code_bytes: int = 0
    peak_bytes: int = 0  # what the program needs in HBM while it runs, its own arguments included
    flops: float | None = None
    bytes_accessed: float | None = None
    compile_seconds: float = 0.0
    error: str | None = None  # libtpu's refusal (out of memory); peak_bytes is then its stated need
    decode: DecodeStats | None = None  # per decode-loop iteration, when the program has one
    step: StepStats | None = None  # one run of the whole program, loops times their trip counts

    @property
    def working_bytes(self) -> int:
        """What the program holds at its peak beside its arguments and code: temporaries and the outputs not
        written over donated arguments. Not `temp_bytes`: libtpu's temporaries are not all live at once and
        may hold what the donated arguments hold (Qwen3-30B-A3B's update on v5p-16: 50.9 GiB of temporaries,
        43.2 GiB beside its arguments at its peak)."""
        return max(self.peak_bytes - self.argument_bytes - self.code_bytes, 0)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("decode")  # reported per token beside the programs (rl.aot.Report)
        out.pop("step")  # the update's is reported beside the programs
        return out


_COMPILED: dict[str, ProgramStats] = {}  # by program text: one compile per program and process


def compile_stats(lowered, mesh, *, dynamic_trips: int = 1, phase_ends: tuple[int, ...] = ()) -> ProgramStats:
    """Compile for the mesh's devices; the same program on the same devices is compiled once per process
    (e.g. a report judged again against another HBM figure). `dynamic_trips`, `phase_ends`: how the decode
    step's reader counts a loop whose bound is traced and the decode phases' loops
    (`sharding.decode_stats.decode_stats`)."""
    devices = [(d.device_kind, d.id, getattr(d, "coords", None)) for d in mesh.devices.flat]
    key = hashlib.sha256(f"{devices}\n{dynamic_trips} {phase_ends}\n{lowered.as_text()}".encode()).hexdigest()
    if key not in _COMPILED:
        _COMPILED[key] = _compile(lowered, dynamic_trips, phase_ends)
    return _COMPILED[key]


def _compile(lowered, dynamic_trips: int, phase_ends: tuple[int, ...]) -> ProgramStats:
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as err:
        required, _ = parse_oom(str(err))
        if required is None:
            raise
        return ProgramStats(peak_bytes=required, compile_seconds=time.perf_counter() - start,
                            error=str(err).splitlines()[0][:500])
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    fields = dict(argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
                  alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
                  code_bytes=mem.generated_code_size_in_bytes)
    peak = getattr(mem, "peak_memory_in_bytes", 0) or (
        fields["argument_bytes"] + fields["output_bytes"] - fields["alias_bytes"] + fields["temp_bytes"])
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
    text = compiled.as_text()
    return ProgramStats(**fields, peak_bytes=peak + fields["code_bytes"], flops=cost.get("flops"),
                        bytes_accessed=cost.get("bytes accessed"), compile_seconds=seconds,
                        decode=decode_stats(text, dynamic_trips, phase_ends) if "decode/while" in text else None,
                        step=StepStats.from_hlo(text))


def device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (even shardings: every device alike)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))
