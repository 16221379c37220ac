"""The report of `r1jax compile` (rl.aot): one mesh's compiled GRPO programs for one topology and workload,
judged against the chip's HBM, with the decode and update steps per chip (sharding.roofline,
sharding.update_stats). With a sampler on devices of its own (`sampler_devices`), the sampler's figures are
over its chips and the trainer's over the others."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from r1jax.model.config import ModelConfig
from r1jax.rl.bench.flops import train_step_flops
from r1jax.sharding.chips import CHIPS
from r1jax.sharding.compile_stats import ProgramStats
from r1jax.sharding.mesh import ShardingConfig
from r1jax.sharding.roofline import decode_report
from r1jax.sharding.topology import DEVICES_PER_CHIP, Topology
from r1jax.sharding.update_stats import update_report

if TYPE_CHECKING:
    from r1jax.rl.aot import Workload


@dataclasses.dataclass
class Report:
    """The compile of one mesh for one topology and workload, judged against `hbm_bytes` per device."""

    topology: Topology
    mesh: str  # the mesh preset's name ("config": the config's own sharding section)
    sharding: ShardingConfig
    mesh_shape: dict[str, int]
    workload: Workload
    hbm_bytes: int
    hbm_source: str  # "compiler" (libtpu's stated capacity), "table" (spec sheet) or "override"
    resident: dict[str, int]
    batch_bytes: int
    kv_cache_bytes: int
    programs: dict[str, ProgramStats]
    dtypes: dict[str, str]  # parameters, optimizer_state, compute
    weight_read_bytes: int = 0  # the policy's state a decode step reads at least, once (decode_read_bytes)
    sampler_layout: str = "train"  # rl.sampler_layout's line saying which layout the sampler ran in
    sampler_weight_bytes: int = 0  # per device, the inference layout's weight copy (0: the training layout)
    alternatives: list[dict] = dataclasses.field(default_factory=list)
    model: ModelConfig | None = None  # for the update's model FLOPs
    decode_cache_read_bytes: int = 0  # per device, the KV cache one decode step reads (kv_cache_bytes(read=True))
    sampler_devices: int = 0  # `sampling.devices`: the sampler's own devices (0: it shares the trainer's)

    def chips(self, program: str) -> int:
        """The chips `program` runs on: all of the topology's, or with a sampler on devices of its own, those
        (the sampler) or the others (the trainer's programs)."""
        if not self.sampler_devices:
            return self.topology.chips
        own = program == "sampler"
        devices = self.sampler_devices if own else self.topology.num_devices - self.sampler_devices
        return devices // DEVICES_PER_CHIP[self.topology.kind]

    def program_totals(self) -> dict[str, int]:
        """Each program's peak plus the resident state it does not take as arguments. With a sampler on devices
        of its own: none beside the sampler (the trainer's state lives on the others), and one more copy of the
        parameters beside the trainer's programs (the weights that sampled the batch ahead, kept on the
        trainer's devices for its behaviour log-probs while the update runs: rl.train.stage_grpo)."""
        r = self.resident
        besides = {"sampler": r["optimizer"] + r["reference"] + (r["parameters"] if self.sampler_weight_bytes else 0),
                   "reshard": r["optimizer"] + r["reference"],  # (its arguments: the parameters; its output: the copy)
                   "reference": r["parameters"] + r["optimizer"], "update": 0}
        if self.sampler_devices:
            besides = {"sampler": 0, "reference": besides["reference"] + r["parameters"],
                       "update": r["parameters"]}
        return {name: stats.peak_bytes + besides[name] for name, stats in self.programs.items()}

    @property
    def per_chip_bytes(self) -> int:
        return max(self.program_totals().values())

    @property
    def fits(self) -> bool:
        return all(p.error is None for p in self.programs.values()) and self.per_chip_bytes <= self.hbm_bytes

    def breakdown(self) -> dict[str, int | None]:
        """Per-device bytes by kind: the update's total is the resident state, the batch, its activations
        (what it holds at its peak beside its arguments: `ProgramStats.working_bytes`) and its code; the
        sampler's temporaries likewise. A program libtpu refused has no such figure (None)."""
        update, sampler = self.programs["update"], self.programs["sampler"]
        return {**self.resident, "batch": self.batch_bytes,
                "activations": None if update.error else update.working_bytes,
                "code": None if update.error else update.code_bytes, "kv_cache": self.kv_cache_bytes,
                "sampler_temporaries": None if sampler.error else sampler.working_bytes}

    def to_dict(self) -> dict:
        totals = self.program_totals()
        return {
            "fits": self.fits, "per_chip_bytes": self.per_chip_bytes, "hbm_bytes": self.hbm_bytes,
            "hbm_source": self.hbm_source, "peak_program": max(totals, key=totals.get),
            "topology": self.topology.to_dict(), "mesh": self.mesh, "mesh_shape": self.mesh_shape,
            "rules_preset": self.sharding.preset, "rules_overrides": self.sharding.rules or {},
            "dtypes": self.dtypes, "sampler_layout": self.sampler_layout, "sampler_devices": self.sampler_devices,
            "trainer_chips": self.chips("update"), "sampler_chips": self.chips("sampler"),
            "sampler_weight_bytes": self.sampler_weight_bytes,
            "workload": {**dataclasses.asdict(self.workload), "rows": self.workload.rows,
                         "seq_len": self.workload.seq_len},
            "breakdown": self.breakdown(), "program_totals": totals,
            "programs": {name: stats.to_dict() for name, stats in self.programs.items()},
            "alternatives": self.alternatives,
            "fitting_meshes": [a["mesh"] for a in self.alternatives if a["fits"]],
            "decode": self.decode(),
            "update": self.update(),
        }

    def update(self) -> dict | None:
        """The update step per chip (`sharding.update_stats.update_report`): its roofline time and MFU, the
        model FLOPs (`rl.bench.flops.train_step_flops` on the workload's rows x seq_len) split evenly."""
        stats = self.programs["update"].step
        if stats is None or self.model is None:
            return None
        model_flops = train_step_flops(self.model, self.workload.rows, self.workload.seq_len)
        kind = self.topology.kind
        return update_report(stats, CHIPS[kind], devices_per_chip=DEVICES_PER_CHIP[kind],
                             model_flops_per_chip=model_flops / self.chips("update"))

    def decode(self) -> dict | None:
        """The sampler's decode step per chip and token (`sharding.roofline.decode_report`); the HBM-read
        limit reads the chip's even share of the weights (as a step reads them at least:
        model.factory.decode_read_bytes) and, once per step, the KV cache its rows hold in the sampler's layout
        (`kv_cache_bytes(read=True)`), over the sampler's chips."""
        stats = self.programs["sampler"].decode
        if stats is None:
            return None
        per_chip, chips = DEVICES_PER_CHIP[self.topology.kind], self.chips("sampler")
        read_bytes = self.weight_read_bytes // chips + self.decode_cache_read_bytes * per_chip
        return decode_report(stats, CHIPS[self.topology.kind], devices_per_chip=per_chip,
                             rows=self.workload.decode_rows, chips=chips, min_read_bytes_per_chip=read_bytes)
