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


def decode_read_bytes(cfg: ModelConfig) -> int:
    """The least bytes of the policy's state one decode step reads, all chips together: each array once, at the
    narrower of its dtype and the compute dtype where the layers cast it to the compute dtype (a cast of a weight
    the decode loop closes over is hoisted out of the loop, which then reads the narrow copy), at its own dtype
    where it is used in float32 (_FLOAT32_USES); an untied embedding table not at all (a step gathers a row
    per token)."""
    compute = jax.numpy.dtype(cfg.compute_dtype).itemsize
    total = 0
    for path, x in jax.tree_util.tree_leaves_with_path(nnx.state(abstract_policy(cfg))):
        keys = [k for k in path_name(path).split(".") if k != "value"]  # (an nnx.Variable's own leaf)
        if keys[0] == "embed_tokens" and not cfg.tie_word_embeddings:
            continue
        size = jax.numpy.dtype(x.dtype).itemsize
        own = keys[0] == "embed_tokens" or keys[-1] in _FLOAT32_USES
        total += math.prod(x.shape) * (size if own else min(size, compute))
    return total


def _is_routed_expert(keys: tuple, moe_segments: set[str]) -> bool:
    """("segments", i, "block", "mlp", "gate_proj"|"up_proj"|"down_proj") in a MoE segment."""
    return (keys[0] == "segments" and keys[1] in moe_segments and keys[-2] == "mlp"
            and keys[-1] in ("gate_proj", "up_proj", "down_proj"))
