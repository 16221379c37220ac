"""What one update step costs per chip, read from its compiled program, and a roofline estimate of its time
and MFU from the chip's published figures (`sharding.chips`, the table the decode estimate uses).

Costs per device (`StepStats`, from `compiled.as_text()` by `sharding.decode_stats.program_stats`): dot and
convolution FLOPs, HBM bytes (each instruction's operands read and result written) and collective bytes by
kind (received per device: `sharding.decode_stats`), every loop counted times its trip count. XLA's own
`cost_analysis()` counts a loop body once, so a layer scan (and its backward) would be counted for one layer
only; its figures stay in the report as XLA gives them (`programs.update.flops`) but the estimate does not use
them.

Roofline (`update_report`): est_step_s = max(FLOPs / peak, HBM bytes / HBM bandwidth) + collective bytes
received / inbound interconnect bandwidth (half the published bidirectional figure, an all-reduce's bytes
twice: `sharding.roofline.collective_seconds`, a lower bound). Overlap assumption: none between collectives
and compute (the collectives' time is added). XLA's scheduler on TPU runs collectives asynchronously and hides
some of them behind the layers' matmuls (FSDP's all-gathers of the next layer, the gradients'
reduce-scatters), so the step takes somewhere between `est_step_overlapped_s` (every collective hidden: the
max of the three times) and `est_step_s`; the report states both and estimates MFU from the conservative one.

MFU = model FLOPs / (est_step_s x peak). Model FLOPs are the model's own (`rl.bench.flops.train_step_flops`:
6 x active matmul parameters x tokens + attention), not the compiled program's: the standard definition
(PaLM, Chowdhery et al. 2022, appendix B), which counts rematerialisation, padding to blocks and
dispatch work as cost rather than useful work, so the figure compares across implementations and with
`r1jax bench`'s measured MFU. The compiled FLOPs give the hardware FLOPs utilisation (`est_hfu`) beside it.
"""

from __future__ import annotations

import dataclasses

from r1jax.sharding.chips import ChipSpec
from r1jax.sharding.decode_stats import COLLECTIVES, program_stats
from r1jax.sharding.roofline import collective_seconds


@dataclasses.dataclass(frozen=True)
class StepStats:
    """One run of a whole compiled program, per device."""

    collective_bytes: dict[str, int]  # by kind, bytes received per device (an all-reduce's: one of its 2 phases)
    hbm_bytes: int
    flops: float
    assumed_trips: tuple[str, ...] = ()  # the loops whose trip count was not read but assumed, and what was taken

    @classmethod
    def from_hlo(cls, hlo_text: str) -> "StepStats":
        return cls(*program_stats(hlo_text))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def update_report(stats: StepStats, chip: ChipSpec, *, devices_per_chip: int,
                  model_flops_per_chip: float) -> dict:
    """The `update` object of `r1jax compile --json`: per chip, one update step (module docstring)."""
    scale = devices_per_chip
    flops, hbm = stats.flops * scale, stats.hbm_bytes * scale
    collectives = {k: stats.collective_bytes.get(k, 0) * scale for k in COLLECTIVES}
    compute_s, hbm_s = flops / chip.peak_flops, hbm / chip.hbm_bytes_per_s
    collective_s = collective_seconds(collectives, chip)  # None: not timed (no published ICI bandwidth)
    step_s = max(compute_s, hbm_s) + (collective_s or 0.0)
    overlapped_s = max(compute_s, hbm_s, collective_s or 0.0)
    return {
        "flops_per_chip": flops, "model_flops_per_chip": model_flops_per_chip, "hbm_bytes_per_chip": hbm,
        "collective_bytes_per_chip": collectives,
        "est_compute_s": compute_s, "est_hbm_s": hbm_s, "est_collective_s": collective_s,
        "est_step_s": step_s, "est_step_overlapped_s": overlapped_s,
        "est_mfu": model_flops_per_chip / (step_s * chip.peak_flops) if step_s > 0 else None,
        "est_mfu_overlapped": model_flops_per_chip / (overlapped_s * chip.peak_flops) if overlapped_s > 0 else None,
        "est_hfu": flops / (step_s * chip.peak_flops) if step_s > 0 else None,
        "assumed_trip_counts": len(stats.assumed_trips), "assumed_trips": list(stats.assumed_trips),
        "chip": chip.to_dict(),
    }
