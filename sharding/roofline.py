"""The roofline of a decode step on one chip, and `r1jax compile`'s `decode` report.

max(compute, HBM) time plus collective time at the interconnect's bandwidth, from the chip's published
figures (`sharding.chips`) and a decode step's costs per device (`sharding.decode_stats`). Decode does not
overlap its collectives with compute: each layer waits for its own.

Collective time (`collective_seconds`, the update's estimate too): each collective's bytes (an all-gather's
result, the others' operands: `DecodeStats.collective_bytes`) over the chip's interconnect bandwidth, an
all-reduce's twice: it is a reduce-scatter of its operand and an all-gather of the result, each moving
about the operand's bytes through every chip (ring or torus alike), where an all-gather of the same result
or a reduce-scatter of the same operand moves it once. Counted once (before 2026-12-02), a gradient
all-reduce looked as cheap as the reduce-scatter that could replace it.
"""

from __future__ import annotations

import dataclasses

from r1jax.sharding.chips import ChipSpec
from r1jax.sharding.decode_stats import DecodeStats


def collective_seconds(bytes_by_kind: dict[str, float], chip: ChipSpec) -> float:
    """Time on the chip's interconnect for these collective bytes (module docstring: all-reduces twice);
    0 where the chip's bandwidth is not published."""
    if not chip.ici_bytes_per_s:
        return 0.0
    return (sum(bytes_by_kind.values()) + bytes_by_kind.get("all-reduce", 0)) / chip.ici_bytes_per_s


@dataclasses.dataclass(frozen=True)
class Roofline:
    compute_s: float
    hbm_s: float
    collective_s: float

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.hbm_s) + self.collective_s


def estimate(stats: DecodeStats, chip: ChipSpec, devices_per_chip: int = 1) -> Roofline:
    """Roofline time of one decode step on one chip (its devices' work added; per-device stats)."""
    scale = devices_per_chip
    collectives = {kind: moved * scale for kind, moved in stats.collective_bytes.items()}
    return Roofline(stats.flops * scale / chip.peak_flops, stats.hbm_bytes * scale / chip.hbm_bytes_per_s,
                    collective_seconds(collectives, chip))


def decode_report(stats: DecodeStats, chip: ChipSpec, *, devices_per_chip: int, rows: int, chips: int,
                  min_read_bytes_per_chip: int) -> dict:
    """The `decode` object of `r1jax compile --json`: per chip, per decode step ("per token": one token for
    every row), and the roofline against the HBM-read limit (reading `min_read_bytes_per_chip`, the chip's
    even share of the weights plus its KV cache, once per step)."""
    scale = devices_per_chip
    roof = estimate(stats, chip, devices_per_chip)
    limit_s = min_read_bytes_per_chip / chip.hbm_bytes_per_s
    return {
        "weight_allgather_bytes_per_token": stats.weight_allgather_bytes * scale,
        "weight_allgathers_per_token": stats.weight_allgathers,
        "collective_bytes_per_token": {k: v * scale for k, v in stats.collective_bytes.items()},
        "hbm_bytes_per_token": stats.hbm_bytes * scale,
        "flops_per_token": stats.flops * scale,
        "est_compute_s": roof.compute_s, "est_hbm_s": roof.hbm_s, "est_collective_s": roof.collective_s,
        "est_step_s": roof.step_s,
        "est_tokens_per_s_per_chip": rows / roof.step_s / chips if roof.step_s > 0 else None,
        "hbm_read_limit_bytes": min_read_bytes_per_chip, "hbm_read_limit_s": limit_s,
        "est_vs_hbm_read_limit": roof.step_s / limit_s if limit_s > 0 else None,
        "chip": chip.to_dict(),
    }
