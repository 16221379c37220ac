"""TPU topologies by name, their compile-only devices, and their memory, on any host (needs libtpu).

Two spellings are accepted:
- Cloud TPU names, `TYPE-N`: `v5p-128`, `v4-32` count TensorCores (2 per chip: v5p-128 is 64 chips);
  `v5e-16` (Cloud's `v5litepod-16`) and `v6e-256` count chips. The chip grid is the one Cloud TPU
  provisions: 3-D for v4/v5p (2x2x1, 2x2x2, 2x2x4, 2x4x4, then multiples of 4x4x4: v5p-128 is 4x4x4,
  v5p-512 4x8x8), 2-D for v5e/v6e (v5e-16 is 4x4, v6e-256 16x16).
- Topology strings, `TYPE:AxB` (v5e, v6e) or `TYPE:AxBxC` (v4, v5p): `v5p:4x4x4`.

`abstract_devices` asks libtpu for compile-only devices of that topology (no TPU needed): meshes built on
them lower and compile exactly as on the slice. libtpu's compile-only v4 topology has one device per
TensorCore (no megacore), so on v4 a "device" is half a chip.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re

from r1jax.errors import UserError

# HBM per chip in GiB, from the Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/v4, v5e,
# v5p, v6e): v4 32 GiB, v5e 16 GiB, v5p 95 GiB, v6e (Trillium) 32 GiB. Used only when the compiler's own
# figure (`device_hbm_bytes`) cannot be had; the compiler reserves a little (v5p reports 95.74 GiB usable).
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}
DEVICES_PER_CHIP = {"v4": 2, "v5e": 1, "v5p": 1, "v6e": 1}  # compile-only devices libtpu makes per chip
TENSORCORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}  # what Cloud names count for v4/v5p
_ALIASES = {"v5litepod": "v5e", "v6": "v6e"}
_GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
_GRID_3D_SMALL = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}
_EXAMPLES = "a Cloud TPU name (v5p-128, v6e-256, v5e-16, v4-32) or a topology (v5p:4x4x4, v6e:16x16)"


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice: generation and chip grid. `name` is what the user typed."""

    name: str
    kind: str  # v4 | v5e | v5p | v6e
    grid: tuple[int, ...]

    @property
    def topology_string(self) -> str:
        return f"{self.kind}:{'x'.join(map(str, self.grid))}"

    @property
    def chips(self) -> int:
        return math.prod(self.grid)

    @property
    def num_devices(self) -> int:
        return self.chips * DEVICES_PER_CHIP[self.kind]

    @property
    def chip_hbm_bytes(self) -> int:
        return HBM_GIB[self.kind] * 2**30

    def to_dict(self) -> dict:
        return {"name": self.name, "topology": self.topology_string, "chips": self.chips,
                "devices": self.num_devices, "devices_per_chip": DEVICES_PER_CHIP[self.kind],
                "chip_hbm_bytes": self.chip_hbm_bytes}


def parse_topology(name: str) -> Topology:
    """A Topology from a Cloud TPU name or a topology string; a UserError names what is wrong."""
    text = name.strip().lower()
    cloud = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    explicit = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", text)
    if not cloud and not explicit:
        raise UserError(f"unknown TPU topology {name!r}: use {_EXAMPLES}")
    kind = _kind((cloud or explicit).group(1), name)
    if explicit:
        grid = tuple(int(d) for d in explicit.group(2).split("x"))
        rank = 2 if kind in ("v5e", "v6e") else 3
        if len(grid) != rank or min(grid) < 1:
            raise UserError(f"TPU topology {name!r}: {kind} needs {rank} positive dimensions "
                            f"({'AxB' if rank == 2 else 'AxBxC'})")
        # shapes no slice has (libtpu compiles for them all the same, so a typo gave figures for no machine):
        # the grids Cloud TPU provisions, in any order (`_cloud_grid`)
        shape = sorted(grid)
        if rank == 3 and shape not in [sorted(g) for g in _GRID_3D_SMALL.values()] and any(d % 4 for d in grid):
            raise UserError(f"TPU topology {name!r}: no {kind} slice has that shape; {kind} slices are 2x2x1, 2x2x2, "
                            "2x2x4, 2x4x4, or multiples of 4 in every dimension (4x4x4, 4x4x8, 4x8x8, ...)")
        if rank == 2 and shape not in [sorted(g) for g in _GRID_2D.values()]:
            raise UserError(f"TPU topology {name!r}: no {kind} slice has that shape; {kind} slices are "
                            f"{', '.join('x'.join(map(str, g)) for g in _GRID_2D.values())}")
        return Topology(name, kind, grid)
    return Topology(name, kind, _cloud_grid(kind, int(cloud.group(2)), name))


def _kind(text: str, name: str) -> str:
    kind = _ALIASES.get(text, text)
    if kind not in HBM_GIB:
        raise UserError(f"TPU topology {name!r}: unknown TPU type {text!r}; choose one of "
                        f"{', '.join(sorted(HBM_GIB))} (v5litepod = v5e)")
    return kind


def _cloud_grid(kind: str, count: int, name: str) -> tuple[int, ...]:
    if kind in ("v5e", "v6e"):
        if count not in _GRID_2D:
            raise UserError(f"TPU {name!r}: {kind} slices have {', '.join(map(str, _GRID_2D))} chips")
        return _GRID_2D[count]
    cores = TENSORCORES_PER_CHIP[kind]
    if count % cores:
        raise UserError(f"TPU {name!r}: {kind}-N counts TensorCores ({cores} per chip), so N must be even")
    chips = count // cores
    if chips in _GRID_3D_SMALL:
        return _GRID_3D_SMALL[chips]
    if chips < 64 or chips % 64:
        raise UserError(f"TPU {name!r}: {kind} slices have 4, 8, 16, 32 chips or a multiple of 64 "
                        f"({kind}-8, -16, -32, -64, -128, -256, ...); {count} cores are {chips} chips")
    return tuple(4 * d for d in _most_cubic(chips // 64))


def _most_cubic(n: int) -> tuple[int, int, int]:
    """a <= b <= c with a * b * c == n and the smallest c / a (4x4x8-style grids)."""
    best = None
    for a in range(1, n + 1):
        for b in range(a, n // a + 1):
            c, rest = divmod(n, a * b)
            if rest == 0 and c >= b and (best is None or c / a < best[2] / best[0]):
                best = (a, b, c)
    return best


def _prepare_libtpu() -> None:
    """Let libtpu load for compile-only use beside other processes, quietly.

    ALLOW_MULTIPLE_LIBTPU_LOAD: otherwise a second process (pytest -n 2, a second `r1jax compile`) fails on
    libtpu's lockfile. When this process will not use a TPU backend (JAX_PLATFORMS=cpu), name a host so
    that libtpu does not look for TPU metadata and warn about it; topologies are explicit anyway.
    """
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


@functools.cache
def abstract_devices(topology_string: str) -> tuple:
    """Compile-only TPU devices for a topology string such as "v5p:4x4x4" (cached per process)."""
    import jax

    _prepare_libtpu()
    try:
        from jax.experimental import topologies

        try:
            return tuple(topologies.get_topology_desc(topology_string, "tpu").devices)
        except jax.errors.JaxRuntimeError as err:
            if "chips_per_host_bounds" not in str(err):
                raise
            # Slices smaller than one host (v5e:1x1, v5p:1x1x2): the host is the whole slice.
            grid = [int(d) for d in topology_string.split(":")[1].split("x")]
            bounds = (grid + [1, 1])[:3]
            return tuple(topologies.get_topology_desc(topology_string, "tpu",
                                                      chips_per_host_bounds=bounds).devices)
    except RuntimeError as err:
        if "TPU support not installed" in str(err) or "libtpu" in str(err).lower():
            raise UserError("compiling for TPU needs libtpu: pip install 'r1jax[tpu]' "
                            "(jax[tpu] brings libtpu; no TPU is needed)") from err
        raise UserError(f"libtpu rejected topology {topology_string!r}: {err}") from err


# A size: a number and an optional unit, e.g. "5GB", "95.74G", "16 GiB", "1000000".
_SIZE = r"\d+(?:\.\d+)?\s*[KMGTPE]?i?B?"
_SIZE_UNITS = {"": 1, "B": 1} | {
    spelling: factor for power, prefix in enumerate("KMGTPE", start=1)
    for spelling, factor in ((prefix, 2**(10 * power)), (prefix + "IB", 2**(10 * power)),
                             (prefix + "B", 10**(3 * power)))}


def parse_size(text: str, what: str = "size") -> int:
    """Bytes in a size such as "5GB", "95.74G", "16GiB" or "1000000" (units case-insensitive).

    KB, MB, GB, TB, PB, EB are decimal (10**3 steps: SI, and Hugging Face's `max_shard_size="5GB"`);
    KiB, MiB, GiB, ... and the bare letters K, M, G, ... are binary (2**10 steps: libtpu prints HBM sizes
    as "95.74G", meaning GiB, the unit of the TPU docs' HBM figures). No unit or "B": bytes. Fractions
    round down to whole bytes. Anything else is a UserError naming `what`.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _SIZE_UNITS:
        raise UserError(f"{what} {text!r}: expected a size such as 5GB (10**9 bytes), 4GiB (2**32), "
                        "500MB or 1000000")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def parse_oom(message: str) -> tuple[int | None, int | None]:
    """(bytes required, bytes available) from libtpu's RESOURCE_EXHAUSTED messages, None where absent.

    Two forms: "the total memory required for HLO temporaries (X) exceeds available HBM (Y)" and
    "Used X of Y hbm. Exceeded hbm capacity by Z"."""
    for pattern in (rf"required[^(]*\(({_SIZE})\)\s*exceeds available HBM \(({_SIZE})\)",
                    rf"Used ({_SIZE}) of ({_SIZE}) hbm"):
        match = re.search(pattern, message)
        if match:
            return parse_size(match.group(1), "required HBM"), parse_size(match.group(2), "available HBM")
    return None, None


@functools.cache
def device_hbm_bytes(topology: Topology) -> tuple[int, str]:
    """(usable HBM per device, "compiler") as the TPU compiler reports it, else (the spec table's figure
    per device, "table").

    The compiler states its capacity only when a program does not fit, so this compiles one that cannot
    (a 1 TiB output; takes milliseconds) and reads the figure from the error."""
    import jax
    import jax.numpy as jnp

    device = abstract_devices(topology.topology_string)[0]
    arg = jax.ShapeDtypeStruct((), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(device))
    try:
        jax.jit(lambda x: jnp.broadcast_to(x, (2**38,)) * 2).lower(arg).compile()
    except jax.errors.JaxRuntimeError as err:
        _, available = parse_oom(str(err))
        if available:
            return available, "compiler"
    return topology.chip_hbm_bytes // DEVICES_PER_CHIP[topology.kind], "table"
