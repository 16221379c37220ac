"""Published per-chip figures of TPU generations, for roofline estimates (`sharding.decode_stats`).

Sources, the Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/<generation>):
- v4: 275 TFLOP/s bf16, HBM2 32 GiB at 1,200 GB/s; the page states no per-chip ICI figure.
- v5e: 197 TFLOP/s bf16, 16 GB at 819 GB/s, ICI 400 GB/s bidirectional per chip (1,600 Gbps per direction).
- v5p: 459 TFLOP/s bf16, 95 GiB at 2,765 GB/s, ICI 1,200 GB/s bidirectional per chip (4,800 Gbps).
- v6e (Trillium): 918 TFLOP/s bf16, 32 GB at 1,638 GB/s, ICI 800 GB/s bidirectional per chip.
Bandwidths are bytes per second (decimal GB), compute is dense bf16 FLOP/s.
"""

from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    peak_flops: float  # dense bf16 FLOP/s per chip
    hbm_bytes_per_s: float  # HBM bandwidth per chip
    # inter-chip interconnect, per chip, bidirectional as published (None: not published): a chip receives at
    # half of it on all its links at once (sharding.roofline.collective_seconds); a collective over one axis of
    # the torus uses only that dimension's links, so the time estimated from it is a lower bound
    ici_bytes_per_s: Optional[float]
    source: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_DOCS = "cloud.google.com/tpu/docs/"
CHIPS: dict[str, ChipSpec] = {
    "v4": ChipSpec(275e12, 1200e9, None, _DOCS + "v4"),
    "v5e": ChipSpec(197e12, 819e9, 400e9, _DOCS + "v5e"),
    "v5p": ChipSpec(459e12, 2765e9, 1200e9, _DOCS + "v5p"),
    "v6e": ChipSpec(918e12, 1638e9, 800e9, _DOCS + "v6e"),
}
