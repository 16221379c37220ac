"""Creating policies: abstractly (shapes only), initialised on a mesh; parameter counts and the bytes a decode
step reads."""

from __future__ import annotations

import math

import jax
from flax import nnx
from jax.sharding import Mesh

from r1jax.model.config import ModelConfig
from r1jax.model.decoder import Policy
from r1jax.sharding.params import path_name, state_shardings
from r1jax.sharding.rules import Rules


def abstract_policy(cfg: ModelConfig, stacked: bool = True) -> Policy:
    """A Policy whose Variables hold ShapeDtypeStructs: no memory is allocated. `stacked=False`: each layer's
    parameters apart (the sampler's inference copy, model.decoder.unstack_layers)."""
    return nnx.eval_shape(lambda: Policy(cfg, nnx.Rngs(0), stacked))


def init_policy(cfg: ModelConfig, seed: int = 0, mesh: Mesh | None = None,
                rules: Rules | None = None) -> Policy:
    """A randomly initialised Policy; with a mesh, every parameter is created directly in its shards."""
    if mesh is None:
        return Policy(cfg, nnx.Rngs(seed))
    graphdef, abstract_state = nnx.split(abstract_policy(cfg))
    shardings = state_shardings(abstract_state, mesh, rules)

    @jax.jit
    def create():
        return nnx.state(Policy(cfg, nnx.Rngs(seed)))

    state = jax.jit(create, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Total and active (per-token) parameter counts, from abstract shapes.

    Active = total minus, in every MoE layer, the routed experts a token does not use
    ((n_routed_experts - num_experts_per_tok) experts' weights). Non-trainable state (the routing bias) is
    not a parameter.
    """
    _, params, _ = nnx.split(abstract_policy(cfg), nnx.Param, ...)
    sizes = {path: math.prod(v.shape) for path, v in
             jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))}
    total = sum(sizes.values())
    moe_segments = {str(i) for i, (kind, _) in enumerate(cfg.layer_segments()) if kind == "moe"}
    routed = sum(size for path, size in sizes.items()
                 if _is_routed_expert(tuple(path_name(path).split(".")), moe_segments))
    unused = routed * (cfg.n_routed_experts - cfg.num_experts_per_tok) // cfg.n_routed_experts
    return {"params_total": total, "params_active": total - unused}


# used in float32 whatever the compute dtype: routers (model.routing), the LM head (Policy.logits), norm scales
# (RMSNorm's `weight`) and the routing bias
_FLOAT32_USES = ("router", "lm_head", "weight", "e_score_correction_bias")


def _keys(path) -> list[str]:
    return [k for k in path_name(path).split(".") if k != "value"]  # (an nnx.Variable's own leaf)


def cast_to_compute(cfg: ModelConfig, keys: list[str]) -> bool:
    """Whether the layers use the state's array at `keys` (its dotted path) only cast to the compute dtype: all
    but those used in float32 (_FLOAT32_USES) and a tied embedding table (the LM head's weight, float32). Matched
    by the last key, as the others: `keys` may start with the place of the state in a larger tree (e.g. `(params,
    bias)`'s 0, which as a first key took a tied table for a weight cast)."""
    if keys[-1] == "embed_tokens":
        return not cfg.tie_word_embeddings
    return keys[-1] not in _FLOAT32_USES


def in_compute_dtype(cfg: ModelConfig, tree):
    """`tree` (nnx.States, e.g. the sampler's params and routing bias; traced or abstract) with every array the
    layers cast to the compute dtype (`cast_to_compute`) cast to it where it is wider: the policy computes the
    same from it (each use casts it to the compute dtype anyway) and reads half the bytes of float32 master
    weights under bfloat16 compute; the rest as it is."""
    compute = jax.numpy.dtype(cfg.compute_dtype)

    def cast(path, x):
        narrower = jax.numpy.issubdtype(x.dtype, jax.numpy.floating) and compute.itemsize < x.dtype.itemsize
        return x.astype(compute) if narrower and cast_to_compute(cfg, _keys(path)) else x

    return jax.tree_util.tree_map_with_path(cast, tree)


def decode_read_bytes(cfg: ModelConfig) -> int:
    """The least bytes of the policy's state one decode step reads, all chips together: each array once, at the
    narrower of its dtype and the compute dtype where the layers cast it to the compute dtype (`cast_to_compute`;
    the sampler's inference copy holds them so: `in_compute_dtype`), at its own dtype where it is used in float32
    (_FLOAT32_USES); an untied embedding table not at all (a step gathers a row per token)."""
    compute = jax.numpy.dtype(cfg.compute_dtype).itemsize
    total = 0
    for path, x in jax.tree_util.tree_leaves_with_path(nnx.state(abstract_policy(cfg))):
        keys = _keys(path)
        if keys[0] == "embed_tokens" and not cfg.tie_word_embeddings:
            continue
        size = jax.numpy.dtype(x.dtype).itemsize
        total += math.prod(x.shape) * (min(size, compute) if cast_to_compute(cfg, keys) else size)
    return total


def _is_routed_expert(keys: tuple, moe_segments: set[str]) -> bool:
    """("segments", i, "block", "mlp", "gate_proj"|"up_proj"|"down_proj") in a MoE segment."""
    return (keys[0] == "segments" and keys[1] in moe_segments and keys[-2] == "mlp"
            and keys[-1] in ("gate_proj", "up_proj", "down_proj"))
