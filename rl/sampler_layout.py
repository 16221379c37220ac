"""The sampler's weight layout: before a rollout the policy is resharded once into an inference layout.

Why: the training layouts split every weight over `fsdp`, which the update amortises over a whole batch, but
a decode loop would all-gather every layer's weights again at every token. The inference layout
(`sharding.rules.PRESETS["inference"]`) splits no weight over `fsdp`: experts over `expert`, heads, MLP and
vocabulary over `tensor`, rows over the rest; the sampler traces its activation constraints under it.

Config (`sampling:` section): `layout` is `auto` (default), `inference` or `train` (the trainer's own
layout, no copy). `mesh` ({data, fsdp, expert, tensor}, one of them -1) and `rules` (overrides of the
inference preset) replace the family default mesh, which is:
- qwen3_moe: experts over as many devices as divide the expert count (`expert` = gcd(devices, experts));
- deepseek_v3: MLA's 128 heads hold most non-expert weights, so heads, MLP and vocabulary over `tensor` =
  the largest of 16, 8, 4, 2 dividing both the devices and the heads, experts over what divides the rest;
  whole experts over `expert` x `tensor` where that divides the expert count (`EXPERTS_OVER_TENSOR`),
  else each expert's width over `tensor`. `sampling.rules` applies on top.
`auto` keeps the training layout on a single device (every layout is the same there) and falls back to it
when the inference layout cannot be had: a dimension that does not divide its mesh axes, or a weight copy
that does not fit. The fit check: the inference copy must take at most `HBM_SHARE` of the HBM a device has
free (the trainer's state stays resident while sampling; the rest is left for the KV cache and
activations). Devices that state no memory (CPU) are taken to fit. An explicit `inference` that cannot be
had is a UserError.

On accelerators (devices that are not CPUs: a TPU, or `r1jax compile`'s abstract TPU devices) the inference
copy holds each layer's parameters as arrays of their own (`per_layer`; model.decoder.
unstack_layers, part of the one reshard, so counted in `time/reshard_s`), and the sampler runs it with the
graph of the per-layer policy (`SamplerLayout.graphdef`): XLA feeds a TPU kernel (the experts' ragged dot)
only whole buffers, so a layer's slice of stacked weights would be copied at every decode step. On CPU the
copy stays stacked: no kernel there needs whole buffers, and XLA's CPU backend rounds the unrolled layers
differently from their scan in places (continuous batching's log-probs, in the last bit), so CPU runs keep
their numbers. The per-layer copy's outputs equal the stacked copy's in the fixed-batch sampler (Qwen3's bit
for bit; DeepSeek-V3's tokens and routing, its log-probs to float rounding: the `tensor`-split down-projections
sum in another order). Compiled for TPU, each layer apart took Qwen3's decode step from 35.3 to 20.7 GB of HBM
(`qwen3_30b_a3b`, v5p-16); for DeepSeek-V3 (`deepseek_v3_671b`, v5p-512) it is what lets the decode's chunked
expert dispatch (model.dispatch) pay off: with its layers stacked, the chunk loop made XLA copy each layer's
expert weights again (benchmarks/HISTORY.md's decode table: 16.6 GB per step before, 11.3 GB after). The price
is compile time: the sampler's unrolled layers take minutes to compile (DeepSeek-V3's: 322-338 s, was 33 s stacked).

The copy holds the weights in the compute dtype where the layers only use them cast to it (model.factory.
in_compute_dtype; also part of the reshard): float32 master weights under bfloat16 compute are copied at half
their bytes, the norms, routers and LM head kept float32. The policy computes the same from it, to the bit (each
use casts to the compute dtype anyway); the update and the reference log-probs read the float32 state. Equal
dtypes (float32/float32: configs/bench*.yaml) copy nothing more.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable, Optional

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from r1jax.errors import UserError
from r1jax.model.config import ModelConfig
from r1jax.model.decoder import unstack_layers
from r1jax.model.factory import abstract_policy, in_compute_dtype
from r1jax.rl.update import split_policy
from r1jax.sharding.compile_stats import device_bytes
from r1jax.sharding.context import use_mesh
from r1jax.sharding.distributed import identity_to, least
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import abstract_sharded, tree_shardings
from r1jax.sharding.rules import Rules
from r1jax.sharding.transfer import copy_to

LAYOUTS = ("auto", "inference", "train")
HBM_SHARE = 0.5
# DeepSeek-V3's default: whole experts over `expert` x `tensor` (one expert per device on 256 devices), not
# each expert's width over `tensor`: a decode step's copies per device shrink to at most tokens x local
# experts (model.dispatch.local_expert_ffn), where a width split makes every tensor shard carry all tokens x
# top-k copies at full hidden size
EXPERTS_OVER_TENSOR = {"experts": ["expert", "tensor"], "expert_mlp": []}


@dataclasses.dataclass
class SamplerLayout:
    """Where the sampler's weights live and which rules its activations follow; `train_*` is the trainer's
    layout, where a rollout's results are put back; `graphdef` merges the copy `reshard` makes (its params
    and routing bias, or its whole state): each layer's parameters apart with `per_layer` (module docstring),
    else stacked as trained. `reshard_seconds` adds up the time spent resharding."""

    sharding: ShardingConfig
    mesh: Mesh
    rules: Rules
    train_mesh: Mesh
    train_rules: Rules
    graphdef: Any
    per_layer: bool
    model: Optional[ModelConfig] = None  # its weights cast to the compute dtype once, at reshard (None: kept)
    reshard_seconds: float = 0.0
    _arrangements: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def reshard(self, state):
        """`state` (the policy's params / bias, stacked or per layer, any layout; plain arrays such as a key
        replicated) in this layout, each layer's parameters apart with `per_layer`, waited for and timed."""
        start = time.perf_counter()
        arrange, shardings = self._arrangement(state)
        if self._disjoint():  # one program cannot span both device sets: arrange here, then move
            placed = copy_to(arrange(state) if self._rearranges() else state, shardings)
        else:
            placed = arrange(state)
        placed = jax.block_until_ready(placed)
        self.reshard_seconds += time.perf_counter() - start
        return placed

    def _arrangement(self, state):
        """(the jitted `_arranged`, onto this layout's devices unless they are the sampler's own; the shardings
        of its result), made once per structure and shapes of `state`: every rollout after the first reuses
        the compiled program (a jit made at each reshard was traced and compiled again at every rollout)."""
        key = jax.tree.structure(state), tuple((x.shape, x.dtype) for x in jax.tree.leaves(state))
        if key not in self._arrangements:
            shardings = tree_shardings(jax.eval_shape(self._arranged, state), self.mesh, self.rules)
            self._arrangements[key] = (jax.jit(self._arranged, out_shardings=None if self._disjoint() else shardings),
                                       shardings)
        return self._arrangements[key]

    def lowered_reshard(self, state):
        """`reshard`'s program lowered for `state` (arrays or ShapeDtypeStructs with their shardings), for
        `r1jax compile` to count its memory (rl.aot.compile_reshard)."""
        return self._arrangement(state)[0].lower(state)

    def abstract(self, state):
        """ShapeDtypeStructs of what `reshard(state)` gives (`state` may be abstract), with their shardings."""
        return abstract_sharded(jax.eval_shape(self._arranged, state), self.mesh, self.rules)

    def _arranged(self, tree):
        """Every nnx.State in `tree` with each layer's variables apart (`unstack_layers`) with `per_layer`, in
        the compute dtype where the layers cast to it (model.factory.in_compute_dtype) with `model`."""
        if not self._rearranges():
            return tree

        def arranged(state):
            state = unstack_layers(state) if self.per_layer else state
            return state if self.model is None else in_compute_dtype(self.model, state)

        return jax.tree.map(lambda x: arranged(x) if isinstance(x, nnx.State) else x, tree,
                            is_leaf=lambda x: isinstance(x, nnx.State))

    def _rearranges(self) -> bool:
        """Whether the copy differs from the trained state beyond its layout: per layer, or in a narrower dtype."""
        return self.per_layer or (self.model is not None and jax.numpy.dtype(self.model.param_dtype).itemsize
                                  > jax.numpy.dtype(self.model.compute_dtype).itemsize)

    def run(self, state, generate: Callable[[Any], Any]):
        """`generate(state in this layout)` traced under this layout's rules, its rows put back on the
        trainer's mesh (split over its batch axes). Every array `generate` takes from outside must come in
        `state` (e.g. its random key): JAX does not mix arrays of two meshes in one program."""
        placed = self.reshard(state)
        with use_mesh(self.mesh, self.rules):
            rollout = generate(placed)
        return self._move(rollout, jax.tree.map(self._train_sharding, rollout, _batch_dims(rollout)))

    def _disjoint(self) -> bool:
        """Whether the sampler has devices of its own (rl.sampler_devices)."""
        return set(self.mesh.devices.flat).isdisjoint(self.train_mesh.devices.flat)

    def _move(self, tree, shardings):
        """`_move`, or between the disjoint device sets of a sampler on devices of its own a copy
        (sharding.transfer.copy_to, under several processes too): one program cannot span both sets."""
        return copy_to(tree, shardings) if self._disjoint() else _move(tree, shardings)

    def _train_sharding(self, x, batch_dim: int) -> NamedSharding:
        axes = [None] * x.ndim
        if x.ndim:
            axes[batch_dim] = "batch"
        spec = self.train_rules.spec(axes, x.shape, dict(self.train_mesh.shape), strict=False)
        return NamedSharding(self.train_mesh, spec)

    def take_seconds(self) -> float:
        seconds, self.reshard_seconds = self.reshard_seconds, 0.0
        return seconds


def _move(tree, shardings):
    """`tree` laid out by `shardings` (a prefix tree). A jitted identity rather than `jax.device_put`: under
    several processes it moves arrays between meshes of the same devices, and takes host-local inputs (a
    random key) as replicated. Compiled once per `shardings` (sharding.distributed.identity_to)."""
    return identity_to(shardings)(tree)


def _batch_dims(rollout):
    """The row axis of each field of a Rollout: 1 for the routing record [L, B, T, K], else 0."""
    dims = {name: 0 for name in rollout._fields}
    dims["experts_LBTK"] = 1
    return type(rollout)(**{name: None if getattr(rollout, name) is None else dims[name]
                            for name in rollout._fields})


def reshard_metrics(sampler) -> dict[str, float]:
    """`time/reshard_s` since the last call, for a sampler that reshards (none for the training layout)."""
    layout = getattr(sampler, "layout", None)
    return {} if layout is None else {"time/reshard_s": layout.take_seconds()}


def default_sharding(model: ModelConfig, devices: int) -> ShardingConfig:
    """The family's inference mesh for `devices` devices (module docstring)."""
    tensor = 1
    if model.is_deepseek:
        tensor = next(t for t in (16, 8, 4, 2, 1) if devices % t == 0 and model.num_attention_heads % t == 0)
    experts = model.n_routed_experts or 1
    expert = math.gcd(devices // tensor, experts)
    rules = None
    if model.is_deepseek and tensor > 1 and experts % (expert * tensor) == 0:
        rules = EXPERTS_OVER_TENSOR
    return ShardingConfig(data=1, fsdp=-1, expert=expert, tensor=tensor, preset="inference", rules=rules)


def inference_sharding(sampling, model: ModelConfig, devices: int) -> ShardingConfig:
    """The inference mesh: `sampling.mesh` (its axes checked by rl.sampler.SamplingConfig), else the family's."""
    if sampling.mesh is None:
        base = default_sharding(model, devices)
    else:
        base = ShardingConfig(**{"data": 1, "fsdp": -1, "expert": 1, "tensor": 1, **sampling.mesh},
                              preset="inference")
    rules = {**(base.rules or {}), **(sampling.rules or {})}
    return dataclasses.replace(base, rules=rules or None)


def free_hbm_bytes(mesh: Mesh) -> Optional[int]:
    """The least free memory of this process's devices in the mesh, None where devices state none (CPU)."""
    free = []
    for device in mesh.devices.flat:
        if device.process_index != jax.process_index():
            continue
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if not stats or "bytes_limit" not in stats:
            return None
        free.append(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return min(free) if free else None


def choose_layout(sampling, model: ModelConfig, train_mesh: Mesh, train_rules: Rules,
                  free_bytes: Optional[int] = None, devices: Optional[list] = None,
                  per_layer: Optional[bool] = None) -> tuple[Optional[SamplerLayout], str]:
    """(the sampler's layout, None for the training layout; a line saying which layout runs and why).

    `free_bytes`: HBM free per device for the fit check (default: what the devices state now); `devices`:
    the sampler's devices (default: the trainer's; rl.sampler_devices passes its own); `per_layer`: the copy
    holds each layer apart (default: on devices that are not CPUs; module docstring). `sampling` is a
    SamplingConfig, its `layout` and `mesh` checked on construction."""
    if sampling.layout == "train":
        return None, "sampler layout: train (sampling.layout=train)"
    devices = list(train_mesh.devices.flat) if devices is None else list(devices)
    if sampling.layout == "auto" and len(devices) == 1 and sampling.mesh is None:
        return None, ""  # one device: every layout is the same
    try:
        sharding = inference_sharding(sampling, model, len(devices))
        mesh = build_mesh(sharding, devices)
        rules = sharding.logical_rules()
        _, params, bias = split_policy(abstract_policy(model))
        copy = jax.eval_shape(lambda state: in_compute_dtype(model, state), (params, bias))
        need = sum(device_bytes(abstract_sharded(part, mesh, rules)) for part in copy)  # (each: its own names)
    except UserError as err:  # the mesh is sampling.mesh's or the family's, not the `sharding` section's
        mesh_of = f"sampling.mesh={sampling.mesh}" if sampling.mesh is not None else "the family's default mesh"
        why = f"the inference layout ({mesh_of}) does not apply: {str(err).removeprefix('sharding: ')}"
        if sampling.layout == "inference":
            raise UserError(f"sampling.layout=inference: {why}; set sampling.mesh to one that does, or "
                            "sampling.layout=auto") from None
        return None, f"sampler layout: train ({why})"
    # every process decides from the least free HBM of any process's devices: each deciding from its own
    # could pick different layouts on unequal hosts, whose collectives then never match (a hang)
    free = least("free-hbm", free_hbm_bytes(mesh), "the sampler layout's memory check") \
        if free_bytes is None else free_bytes
    shape = " ".join(f"{k}={v}" for k, v in mesh.shape.items())
    if free is not None and need > HBM_SHARE * free:
        message = (f"the inference layout ({shape}) needs {need / 2**30:.2f} GiB per device for its weight "
                   f"copy, more than {HBM_SHARE:.0%} of the {free / 2**30:.2f} GiB free")
        if sampling.layout == "inference":
            raise UserError(f"sampling.layout=inference: {message}; set sampling.mesh to split more, or "
                            "sampling.layout=train")
        return None, f"sampler layout: train ({message})"
    if per_layer is None:
        per_layer = devices[0].platform != "cpu"
    graphdef = split_policy(abstract_policy(model, stacked=not per_layer))[0]
    return (SamplerLayout(sharding, mesh, rules, train_mesh, train_rules, graphdef, per_layer, model),
            f"sampler layout: inference ({shape}; {need / 2**30:.2f} GiB of weights per device)")


def inference_layout(config, state, mesh: Mesh, rules: Rules):
    """For commands that only sample (eval, generate): (the layout, `state` moved into it once, so a single
    copy is held), the layout's line on stderr (stdout may be JSON)."""
    layout, note = choose_layout(config.sampling, config.model, mesh, rules)
    if note:
        print(note, file=sys.stderr)
    return layout, state if layout is None else layout.reshard(state)
