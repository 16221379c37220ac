"""Ahead-of-time compilation of a GRPO step's programs for a TPU slice, on any host (needs libtpu).

A GRPO step runs three device programs (rl.train.stage_grpo): the sampler (`rl.sampler.generate_padded`),
the reference log-probs (`rl.grpo.step.reference_logprobs`, only when kl_coef > 0) and the update step
(`make_grpo_step`, jitted with the state donated). `compile_report` lowers each with abstract inputs
(ShapeDtypeStructs carrying the trainer's NamedShardings, `sharding.params.abstract_sharded`) on a mesh of
libtpu's compile-only devices (`sharding.topology.abstract_devices`) and compiles it for TPU
(`sharding.compile_stats`). Nothing is allocated and no TPU is needed.

Memory per device (the report's `per_chip_bytes` is the largest program total), in the config's dtypes
(`dtypes`: model.param_dtype for parameters and reference, optimizer.state_dtype for Adam's moments,
model.compute_dtype for activations and the KV cache): the resident state, exact from shapes and shardings
(parameters with the float32 routing bias and DeepSeek router, optimizer state, reference), plus a program's peak
(`sharding.compile_stats.ProgramStats.peak_bytes`: the compiler's peak plus the generated code, or libtpu's
stated need when it refuses the program); a program whose arguments do not hold the whole state adds the
rest (the sampler runs while the optimizer state and the reference stay in HBM). `activations` is the update
step's temporaries; `kv_cache` comes from the sampler's cache shapes, the batch axis sharded as the sampler
layout's rules shard "batch" (the cache is made inside the program).
XLA's cost estimate (flops, bytes accessed) is reported per program as XLA gives it. The update step is read
from its compiled text (`sharding.update_stats`): FLOPs, HBM and collective bytes per chip, time and MFU.

The sampler compiles in the layout it would run in (`rl.sampler_layout.choose_layout`, fit-checked against
the HBM the resident state leaves): on the inference layout its weights are a second copy, added beside the
training parameters. Its decode loop is read per token (`sharding.decode_stats`): collectives by kind, weight
all-gathers, HBM bytes and a roofline time from the chip's published figures (`sharding.chips`).
With `sampling.devices` (rl.sampler_devices) the topology's devices are split as a run splits them: the
trainer's mesh over the others, the sampler's layout over its own (fit-checked against their whole HBM), and
the report (rl.aot_report) counts each side on its own chips.

Workload (`Workload`): rows = prompts x group size, each prompt_len + new_tokens long; the sampler
prefills `prompts` prompts of prompt_len tokens (rounded up to the sampler's prompt bucket, as at run
time) and decodes new_tokens for every row; with `sampling.cache_phases` in phases over caches that grow,
each phase's decode loop read by its share of the steps (`Workload.phase_shares`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax.errors import UserError
from r1jax.model.attention import attention_class
from r1jax.model.kv_cache import reads_blockwise
from r1jax.model.config import ModelConfig
from r1jax.model.dispatch import resolve_impl
from r1jax.model.factory import abstract_policy, decode_read_bytes
from r1jax.rl.aot_report import Report
from r1jax.rl.continuous import generate_continuous
from r1jax.rl.decoding import phase_ends
from r1jax.rl.grpo.optimizer import make_optimizer
from r1jax.rl.grpo.step import make_grpo_step, reference_logprobs
from r1jax.rl.sampler import bucket_length, generate_padded
from r1jax.rl.sampler_devices import own_devices_layout, split_devices
from r1jax.rl.sampler_layout import SamplerLayout, choose_layout
from r1jax.rl.update import TrainState, split_policy
from r1jax.sharding.compile_stats import ProgramStats, compile_stats, device_bytes
from r1jax.sharding.context import use_mesh
from r1jax.sharding.decode_stats import phase_step_shares
from r1jax.sharding.mesh import ShardingConfig, build_mesh, check_batch_rows
from r1jax.sharding.mesh_presets import MESH_PRESETS, resolve_mesh
from r1jax.sharding.params import abstract_sharded
from r1jax.sharding.rules import Rules
from r1jax.sharding.topology import DEVICES_PER_CHIP, Topology, abstract_devices

DEFAULT_PROMPT_LEN = 512  # R1-style math prompts with the chat template fit well within this bucket


@dataclasses.dataclass(frozen=True)
class Workload:
    prompts: int  # prompts per step
    group_size: int  # G completions per prompt
    prompt_len: int  # P, the sampler's prompt bucket
    new_tokens: int  # N, the sampler's token budget
    micro_batches: int = 1  # the update step's gradient-accumulation micro-batches
    slots: int = 0  # the sampler's decode slots (sampling.slots, at most rows; 0: every row decoded at once)
    kv_block: int = 0  # decode attention reads the cache in blocks of this many slots (0: all of it)
    tail_slots: tuple[int, ...] = ()  # sampling.tail_slots: the tail's smaller slot counts
    cache_phases: int = 1  # sampling.cache_phases: decode loops over caches that grow (rl.decoding.phase_ends)

    @property
    def decode_rows(self) -> int:
        """Rows one decode step advances: the slots under continuous batching, else every row."""
        return self.slots or self.rows

    @property
    def rows(self) -> int:
        return self.prompts * self.group_size

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.new_tokens

    @property
    def decode_phase_ends(self) -> tuple[int, ...]:
        return phase_ends(self.new_tokens, self.cache_phases)

    def phase_shares(self) -> list[tuple[float, int]]:
        """(share of the decode steps, cache slots) of each decode phase, for a rollout run to the budget."""
        ends = self.decode_phase_ends
        return [(share, self.prompt_len + end) for end, share in zip(ends, phase_step_shares(ends))]


def workload_for(config, *, prompts: int | None = None, group_size: int | None = None,
                 prompt_len: int | None = None, new_tokens: int | None = None,
                 micro_batches: int | None = None) -> Workload:
    """The run config's rollout shape (grpo, sampling, update sections), each field overridable. The prompt
    length defaults to 512 tokens (or the largest prompt bucket when smaller)."""
    grpo, sampling, update = config.grpo, config.sampling, config.update
    prompts, group_size = prompts or grpo.prompts_per_step, group_size or grpo.group_size
    work = Workload(prompts, group_size,
                    bucket_length(prompt_len or min(DEFAULT_PROMPT_LEN, sampling.prompt_buckets[-1]),
                                  sampling.prompt_buckets),
                    new_tokens or sampling.max_new_tokens, micro_batches or update.micro_batches,
                    min(sampling.slots, prompts * group_size), sampling.kv_block, tuple(sampling.tail_slots),
                    sampling.cache_phases)
    if min(dataclasses.astuple(work)[:5]) < 1:
        raise UserError(f"workload {work}: every size must be >= 1")
    return work


def for_tpu(model: ModelConfig) -> ModelConfig:
    """`auto` kernels (`moe_impl`, `moe_decode_impl`) follow the host's backend (CPU here); the target is a TPU."""
    return dataclasses.replace(model, moe_impl=resolve_impl(model.moe_impl, backend="tpu"),
                               moe_decode_impl=resolve_impl(model.moe_decode_impl or model.moe_impl, decode=True,
                                                            backend="tpu"))


@dataclasses.dataclass
class Setup:
    """Everything a compile needs: the mesh of compile-only devices, the abstract state and batch."""

    config: Any  # rl.config.Config, model made TPU-ready
    workload: Workload
    mesh: jax.sharding.Mesh
    rules: Rules
    graphdef: Any
    state: TrainState  # of sharded ShapeDtypeStructs
    batch: dict
    optimizer: Any
    sampler_devices: tuple = ()  # `sampling.devices`: the sampler's own devices (empty: it shares `mesh`'s)

    def dtypes(self) -> dict[str, str]:
        model = self.config.model
        return {"parameters": model.param_dtype, "optimizer_state": self.config.optimizer.state_dtype or
                model.param_dtype, "compute": model.compute_dtype}

    def resident(self) -> dict[str, int]:
        return {"parameters": device_bytes((self.state.params, self.state.bias)),
                "optimizer": device_bytes((self.state.opt_state, self.state.step)),
                "reference": device_bytes(self.state.ref) if self.state.ref is not None else 0}


def make_setup(config, topology: Topology, sharding: ShardingConfig, workload: Workload) -> Setup:
    """The abstract TrainState and GRPO batch on `sharding`'s mesh over the topology's devices, or, with
    `sampling.devices`, over those the run would leave the trainer (rl.sampler_devices.split_devices: the
    compile-only devices know their hosts)."""
    config = dataclasses.replace(config, model=for_tpu(config.model), sharding=sharding)
    train_devices, own = split_devices(config.sampling, list(abstract_devices(topology.topology_string)))
    per_chip, hosts = DEVICES_PER_CHIP[topology.kind], len({d.process_index for d in train_devices})
    if own and (len(own) // hosts) % per_chip:  # v4: counts are TensorCores, as the mesh's (sharding.topology)
        raise UserError(f"sampling.devices={len(own)}: a {topology.kind} chip holds {per_chip} compile-only devices "
                        f"(TensorCores), and each of the {hosts} hosts gives the sampler {len(own) // hosts}; give "
                        f"it whole chips (a multiple of {per_chip * hosts})")
    mesh = build_mesh(sharding, train_devices)
    rules = sharding.logical_rules()
    optimizer = make_optimizer(config.optimizer)
    graphdef, params, bias = split_policy(abstract_policy(config.model))
    state = TrainState(params, bias, jax.eval_shape(optimizer.init, params), jax.ShapeDtypeStruct((), jnp.int32),
                       (params, bias) if config.grpo.kl_coef > 0 else None)
    batch = abstract_batch(config, workload, mesh, rules)
    return Setup(config, workload, mesh, rules, graphdef, abstract_sharded(state, mesh, rules), batch, optimizer,
                 tuple(own))


def abstract_batch(config, work: Workload, mesh, rules: Rules) -> dict:
    """The update step's batch (rl.grpo.step's layout), rows split over the batch axes as the trainer
    places it; `ref_logp` is there when kl_coef > 0 (computed ahead by the reference program)."""
    axes = check_batch_rows(work.rows, mesh, rules, "a GRPO batch (grpo.prompts_per_step x group_size)")
    rows = NamedSharding(mesh, P(axes or None))
    b, t, model = work.rows, work.seq_len, config.model
    shapes = {"tokens": ((b, t), jnp.int32), "positions": ((b, t), jnp.int32), "valid": ((b, t), jnp.bool_),
              "mask": ((b, t - 1), jnp.bool_), "weight": ((b, t - 1), jnp.float32),
              "sampler_logp": ((b, t - 1), jnp.float32), "adv": ((b,), jnp.float32)}
    if config.grpo.kl_coef > 0:
        shapes["ref_logp"] = ((b, t - 1), jnp.float32)
    if config.update.routing_replay:
        moe_layers = sum(count for kind, count in model.layer_segments() if kind == "moe")
        shapes["replay"] = ((b, moe_layers, t, model.num_experts_per_tok), jnp.int32)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=rows) for k, (shape, dtype) in shapes.items()}


def compile_update(setup: Setup) -> ProgramStats:
    cfg = setup.config
    update = dataclasses.replace(cfg.update, micro_batches=setup.workload.micro_batches)
    step = make_grpo_step(setup.graphdef, setup.optimizer, cfg.grpo, update, cfg.model,
                          cfg.optimizer.grad_clip_norm)
    shardings = jax.tree.map(lambda x: x.sharding, setup.state)  # the state keeps its shardings
    with use_mesh(setup.mesh, setup.rules):
        lowered = jax.jit(step, out_shardings=(shardings, None), donate_argnums=0).lower(
            setup.state, setup.batch)
    return compile_stats(lowered, setup.mesh)


def compile_reference(setup: Setup) -> ProgramStats:
    batch = {k: v for k, v in setup.batch.items() if k != "ref_logp"}
    with use_mesh(setup.mesh, setup.rules):
        lowered = jax.jit(reference_logprobs, static_argnums=(0, 3, 4)).lower(
            setup.graphdef, setup.state.ref, batch, setup.config.grpo.temperature, setup.workload.micro_batches)
    return compile_stats(lowered, setup.mesh)


def compile_sampler(setup: Setup, layout: SamplerLayout | None = None) -> ProgramStats:
    """The sampler's program as the config runs it (rl.sampler.Sampler.generate: continuous batching over
    `workload.slots` slots, else the fixed batch; decode attention in blocks of `workload.kv_block`), on the
    training layout or (with `layout`) on the sampler's inference layout (on the target's TPUs: its copy holds
    each layer's weights apart, `SamplerLayout.per_layer`)."""
    mesh, rules = (setup.mesh, setup.rules) if layout is None else (layout.mesh, layout.rules)
    work, replicated = setup.workload, NamedSharding(mesh, P())

    def scalar(dtype, shape=()):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)

    key = jax.eval_shape(lambda: jax.random.key(0))
    prompts = (work.prompts, work.prompt_len)
    weights, graphdef = (setup.state.params, setup.state.bias), setup.graphdef
    if layout is not None:  # the inference copy: each layer's parameters apart, merged by its own graph
        weights, graphdef = layout.abstract(weights), layout.graphdef
    args = (graphdef, weights, scalar(jnp.int32, prompts), scalar(jnp.bool_, prompts),
            scalar(key.dtype, key.shape), scalar(jnp.float32), scalar(jnp.int32), scalar(jnp.float32))
    options = dict(max_new=work.new_tokens, samples=work.group_size, stop_ids=(1,), pad_id=0, ignore_eos=False,
                   kv_block=work.kv_block, cache_phases=work.cache_phases, filters=setup.config.sampling.filters)
    with use_mesh(mesh, rules):
        if work.slots:
            lowered = generate_continuous.lower(*args, slots=work.slots, tail_slots=work.tail_slots, **options)
        else:
            lowered = generate_padded.lower(*args, **options)
    return compile_stats(lowered, mesh, dynamic_trips=dynamic_trips(work), phase_ends=work.decode_phase_ends)


def dynamic_trips(work: Workload) -> int:
    """The trip count taken for a decode-step loop whose bound is traced (the block-wise cache read runs
    ceil(live / kv_block) blocks): the blocks of the mean live length over the decode, prompt + half the
    new tokens."""
    if not reads_blockwise(work.seq_len, work.kv_block):
        return 1
    return -(-(work.prompt_len + work.new_tokens // 2) // work.kv_block)


def kv_cache_bytes(setup: Setup, layout: SamplerLayout | None = None, *, read: bool = False) -> int:
    """Per-device bytes of the sampler's cache (per segment, `Policy.init_cache`), batch sharded by the rules of
    `layout` (default: the trainer's). Continuous batching holds the slots' caches and the prompts'
    (prompt-long). With `read`, what one decode step reads: its rows' caches, up to the mean live length
    (`dynamic_trips` blocks) when the cache is read block-wise, else whole: with decode phases, each phase's
    cache by its share of the steps (`Workload.phase_shares`)."""
    work = setup.workload
    if read:
        if reads_blockwise(work.seq_len, work.kv_block):
            length = min(work.seq_len, dynamic_trips(work) * work.kv_block)
            return _cache_bytes(setup, layout, work.decode_rows, length)
        return round(sum(share * _cache_bytes(setup, layout, work.decode_rows, length)
                         for share, length in work.phase_shares()))
    if work.slots:  # the prompts' prefilled caches sit whole on every device (rl.continuous: any slot copies any)
        return (_cache_bytes(setup, layout, work.slots, work.seq_len)
                + _cache_bytes(setup, layout, work.prompts, work.prompt_len, rows_split=False))
    return _cache_bytes(setup, layout, work.rows, work.seq_len)


def _cache_bytes(setup: Setup, layout: SamplerLayout | None, b: int, s: int, rows_split: bool = True) -> int:
    """A device's share of the caches of `b` rows of `s` positions; `rows_split=False`: every row on it."""
    model = setup.config.model
    mesh, rules = (setup.mesh, setup.rules) if layout is None else (layout.mesh, layout.rules)
    attention = attention_class(model)
    entries = list(zip(attention.cache_shapes(model, b, s), attention.CACHE_AXES))
    itemsize = jnp.dtype(model.compute_dtype).itemsize
    total = 0
    for _, count in model.layer_segments():
        for shape, axes in entries:
            axes = axes if rows_split else (None, *axes[1:])  # the first is the rows' ("batch")
            spec = rules.spec((None, *axes), (count, *shape), dict(mesh.shape), strict=False)
            total += math.prod(NamedSharding(mesh, spec).shard_shape((count, *shape))) * itemsize
    return total


def sampler_layout(setup: Setup, hbm_bytes: int) -> tuple[SamplerLayout | None, str]:
    """The layout the sampler would run in (rl.sampler_layout.choose_layout), judged against the HBM the
    trainer's resident state leaves free; on devices of its own, against their whole HBM."""
    if setup.sampler_devices:
        return own_devices_layout(setup.config.sampling, setup.config.sharding, setup.config.model, setup.mesh,
                                  setup.rules, list(setup.sampler_devices), hbm_bytes)
    free = hbm_bytes - sum(setup.resident().values())
    layout, note = choose_layout(setup.config.sampling, setup.config.model, setup.mesh, setup.rules, free)
    return layout, note or "sampler layout: train (one device)"


def compile_reshard(setup: Setup, layout: SamplerLayout) -> ProgramStats:
    """The program that copies the policy's weights into the sampler's inference layout before each rollout
    (rl.sampler_layout.SamplerLayout.reshard): its arguments are the resident parameters, its outputs the copy,
    and what it holds beside them while it runs (a weight XLA cannot move between the two layouts' shards
    directly is gathered whole first: its "involuntary full rematerialization") counts toward the peak."""
    return compile_stats(layout.lowered_reshard((setup.state.params, setup.state.bias)), layout.mesh)


def compile_setup(setup: Setup, layout: SamplerLayout | None = None) -> dict[str, ProgramStats]:
    programs = {}
    if layout is not None and not setup.sampler_devices:  # (on devices of its own: copied between device sets)
        programs["reshard"] = compile_reshard(setup, layout)
    programs["sampler"] = compile_sampler(setup, layout)
    if setup.state.ref is not None:
        programs["reference"] = compile_reference(setup)
    programs["update"] = compile_update(setup)
    return programs


def compile_report(config, topology: Topology, mesh: str, workload: Workload, hbm: tuple[int, str]) -> Report:
    """Compile the GRPO programs under mesh preset `mesh`; `hbm` is (bytes per device, its source)."""
    setup = make_setup(config, topology, resolve_mesh(mesh, config.sharding), workload)
    return _report(setup, topology, mesh, hbm)


def _report(setup: Setup, topology: Topology, mesh: str, hbm: tuple[int, str]) -> Report:
    layout, note = sampler_layout(setup, hbm[0])
    copy = 0 if layout is None else device_bytes(layout.abstract((setup.state.params, setup.state.bias)))
    return Report(topology, mesh, setup.config.sharding, dict(setup.mesh.shape), setup.workload, hbm[0], hbm[1],
                  setup.resident(), device_bytes(setup.batch), kv_cache_bytes(setup, layout),
                  compile_setup(setup, layout), setup.dtypes(), decode_read_bytes(setup.config.model), note, copy,
                  model=setup.config.model, decode_cache_read_bytes=kv_cache_bytes(setup, layout, read=True),
                  sampler_devices=len(setup.sampler_devices))


def alternatives(config, topology: Topology, workload: Workload, hbm: tuple[int, str], skip: str) -> list[dict]:
    """Every other mesh preset, judged: invalid ones (a mesh that does not divide) with the reason; those
    whose resident state and batch alone exceed HBM without compiling; the rest compiled."""
    out = []
    for name in MESH_PRESETS:
        if name == skip:
            continue
        try:
            setup = make_setup(config, topology, resolve_mesh(name, config.sharding), workload)
        except UserError as err:
            out.append({"mesh": name, "fits": False, "reason": str(err)})
            continue
        floor = sum(setup.resident().values()) + device_bytes(setup.batch)
        if floor > hbm[0]:
            out.append({"mesh": name, "fits": False, "per_chip_bytes": floor,
                        "reason": "resident state and batch alone exceed HBM (not compiled)"})
            continue
        try:
            report = _report(setup, topology, name, hbm)
        except UserError as err:  # e.g. a sampler layout that cannot be had over the sampler's own devices
            out.append({"mesh": name, "fits": False, "reason": str(err)})
            continue
        out.append({"mesh": name, "fits": report.fits, "per_chip_bytes": report.per_chip_bytes})
    return out
