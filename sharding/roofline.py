"""The roofline of a decode step on one chip, and `r1jax compile`'s `decode` report.

max(compute, HBM) time plus collective time at the interconnect's bandwidth, from the chip's published
figures (`sharding.chips`) and a decode step's costs per device (`sharding.decode_stats`). Decode does not
overlap its collectives with compute: each layer waits for its own.

Collective time (`collective_seconds`, the update's estimate too): the bytes each chip receives over the
interconnect (`DecodeStats.collective_bytes`: (n - 1) / n of an all-gather's result or of a reduce-scatter's,
all-to-all's or all-reduce's operand in a group of n, a collective-permute's whole operand), an all-reduce's
twice (a reduce-scatter of its operand, then an all-gather of the result: each phase receives (n - 1) / n of
the operand), over the chip's inbound bandwidth: half its published ICI bandwidth, which Google states
bidirectional (a chip's links carry as much in as out; v5p's 1,200 GB/s is 600 GB/s in). Before 2026-12-03 the
whole result or operand was divided by the bidirectional figure, an estimate about 2 (n - 1) / n too fast
(1.75 x in a group of 8).

It is a lower bound on the time. It assumes every ICI link of the chip busy receiving the collective's data,
but a collective over one axis of a torus (a mesh axis laid along one dimension of the chips' 2D or 3D torus)
uses only that dimension's links, a share of the chip's (one dimension of v5p's 3D torus, of v5e's 2D one), so
it can take several times longer; and it counts no latency (a ring's n - 1 steps, each a hop and a wait), which
can dominate small collectives.
"""

from __future__ import annotations

import dataclasses

from r1jax.sharding.chips import ChipSpec
from r1jax.sharding.decode_stats import DecodeStats


def collective_seconds(bytes_by_kind: dict[str, float], chip: ChipSpec) -> float | None:
    """Time on the chip's interconnect to receive these collective bytes (bytes received by the chip, by kind:
    `DecodeStats.collective_bytes`), all-reduces twice, at the chip's inbound bandwidth (half the published
    bidirectional figure); a lower bound (module docstring). None where the chip's bandwidth is not published
    (v4) and there are bytes to move: not timed, and the estimates built on it say so."""
    if not any(bytes_by_kind.values()):
        return 0.0
    if not chip.ici_bytes_per_s:
        return None
    inbound_bytes_per_s = chip.ici_bytes_per_s / 2
    return (sum(bytes_by_kind.values()) + bytes_by_kind.get("all-reduce", 0)) / inbound_bytes_per_s


@dataclasses.dataclass(frozen=True)
class Roofline:
    compute_s: float
    hbm_s: float
    collective_s: float | None  # None: not timed (`collective_seconds`)

    @property
    def step_s(self) -> float:
        """The step's time; without a collective time, compute and HBM only (a lower bound still)."""
        return max(self.compute_s, self.hbm_s) + (self.collective_s or 0.0)


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
        "assumed_trip_counts": len(stats.assumed_trips), "assumed_trips": list(stats.assumed_trips),
        "chip": chip.to_dict(),
    }
