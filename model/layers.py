"""Small building blocks: parameter creation with logical axes, RMSNorm, rotary embeddings, SwiGLU MLP.

Every parameter is an `nnx.Param` whose metadata `axes` holds one logical axis name per dimension
(see sharding.rules). Layers that live in a scanned stack are created with `stack=(L,)`: their parameters
get a leading "layers" axis, and the stack's forward scans over it (model.decoder).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.model.config import ModelConfig
from r1jax.sharding.context import constrain

Stack = tuple[int, ...]


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)


class RoutingBias(nnx.Variable):
    """DeepSeek-V3's `e_score_correction_bias`: set by the load-balancing rule, never by the optimizer."""


def make_param(rngs: nnx.Rngs, cfg: ModelConfig, shape: Sequence[int], axes: Sequence[str | None],
               stack: Stack = (), init: str = "normal") -> nnx.Param:
    """A parameter of `stack + shape`, initialised as Hugging Face does (normal(0, initializer_range))."""
    full_shape = tuple(stack) + tuple(shape)
    dtype = dtype_of(cfg.param_dtype)
    if init == "normal":
        value = cfg.initializer_range * jax.random.normal(rngs.params(), full_shape, dtype)
    elif init == "ones":
        value = jnp.ones(full_shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(full_shape, dtype)
    else:
        raise ValueError(f"unknown init {init!r}")
    return nnx.Param(value, axes=("layers",) * len(stack) + tuple(axes))


def matrices(params):
    """A weight-decay mask (optax's `mask`) of a policy's parameters: true for each of two or more dimensions,
    the leading "layers" axis of stacked layers (make_param) not counted, so that each layer's norm scale is a
    vector (stacked, it is 2-D)."""
    def is_matrix(leaf) -> bool:
        axes = leaf.get_metadata().get("axes") if isinstance(leaf, nnx.Variable) else None
        return len(leaf.shape) - (axes or ()).count("layers") >= 2

    return jax.tree.map(is_matrix, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(x: jax.Array, w: jax.Array, spec: str) -> jax.Array:
    """einsum(spec, x, w) for a weight product ("BTD,DF->BTF", "BTD,DNH->BTNH", "BTNH,NHD->BTD"), whose weight
    gradient, on a CPU, takes the input as its left operand. Autodiff's ("BTF,BTD->DF") had XLA's CPU transpose
    the cotangent ([F, B T]) as a copy of its own or inside the fusion that makes it (the q/k norm and rotary
    backward's: a slow strided copy, 10-11% of a bench_qwen3 GRPO update step; silu's backward in bench's MLPs);
    the same product, the other way round, reads both operands as they lie. Other platforms differentiate the
    product as autodiff does (their programs, and `r1jax compile`'s figures, unchanged). Not for use inside a
    shard_map: the CPU branch adds no psum over the axes a replicated weight's cotangent varies along (and
    platform_dependent traces both branches, so it fails there on every platform; no caller does)."""
    return jnp.einsum(spec, x, w)


def _project_fwd(x, w, spec):
    return project(x, w, spec), (x, w)


def _project_bwd(spec, residuals, dy):
    operands, out = spec.split("->")
    x_axes, w_axes = operands.split(",")

    def input_left(x, w, dy):  # (cotangents in their primals' dtypes, as autodiff's)
        return (jnp.einsum(f"{out},{w_axes}->{x_axes}", dy, w).astype(x.dtype),
                jnp.einsum(f"{x_axes},{out}->{w_axes}", x, dy).astype(w.dtype))

    def as_autodiff(x, w, dy):
        return jax.vjp(lambda x, w: jnp.einsum(spec, x, w), x, w)[1](dy)

    return jax.lax.platform_dependent(*residuals, dy, cpu=input_left, default=as_autodiff)


project.defvjp(_project_fwd, _project_bwd)


class RMSNorm(nnx.Module):
    """RMSNorm with Hugging Face's numerics: normalise in float32, cast back, then scale."""

    def __init__(self, dim: int, cfg: ModelConfig, rngs: nnx.Rngs, stack: Stack = (), eps: float | None = None):
        self.weight = make_param(rngs, cfg, (dim,), (None,), stack, init="ones")
        self.eps = cfg.rms_norm_eps if eps is None else eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)  # cast to fp32 for the variance
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.weight[...] * normed.astype(x.dtype)).astype(x.dtype)


def rope_cos_sin(positions_BT: jax.Array, inv_freq: jax.Array, scale: float = 1.0,
                 within_rows: bool = False) -> tuple[jax.Array, jax.Array]:
    """cos and sin of shape [B, T, 2 x len(inv_freq)], laid out as HF's cat((freqs, freqs)), in float32, times
    `scale` (YaRN's attention factor; `model.rope` gives the frequencies and the scale).

    `within_rows`: every position lies in [0, T) (a row's tokens count their positions from its first real
    token, as left-padded and packed rows do: the full-sequence forward). On a CPU the values are then gathered
    from a table of the T positions: XLA's CPU fusion otherwise recomputes cos and sin inside every consumer
    (each head of q and k, in every layer, forward and backward: 9% of the op time of bench_qwen3's update; its
    step 5.13 -> 4.78 s best of 3, interleaved), and a gather is computed once. The same float32 angles, so the
    same values; a position outside [0, T) gives NaN there."""
    def direct(positions):
        freqs = positions.astype(jnp.float32)[..., None] * inv_freq
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        if scale == 1.0:
            return jnp.cos(emb), jnp.sin(emb)
        return jnp.cos(emb) * scale, jnp.sin(emb) * scale

    def gathered(positions):
        tables = direct(jnp.arange(positions.shape[-1]))
        return tuple(jnp.take(table, positions, axis=0, mode="fill", fill_value=jnp.nan) for table in tables)

    if not within_rows:
        return direct(positions_BT)
    return jax.lax.platform_dependent(positions_BT, cpu=gathered, default=direct)


def apply_rope(x_BTNH: jax.Array, cos_BTH: jax.Array, sin_BTH: jax.Array) -> jax.Array:
    """HF's apply_rotary_pos_emb: x * cos + rotate_half(x) * sin (heads on axis 2)."""
    half = x_BTNH.shape[-1] // 2
    rotated = jnp.concatenate([-x_BTNH[..., half:], x_BTNH[..., :half]], axis=-1)
    cos, sin = cos_BTH[:, :, None, :], sin_BTH[:, :, None, :]
    return (x_BTNH * cos + rotated * sin).astype(x_BTNH.dtype)


def apply_rope_interleaved(x_BTNH: jax.Array, cos_BTH: jax.Array, sin_BTH: jax.Array) -> jax.Array:
    """HF's apply_rotary_pos_emb_interleave: pairs (x0, x1), (x2, x3) ... each rotated by one frequency.

    The output is de-interleaved, [evens rotated, odds rotated], exactly as HF returns it.
    """
    half = x_BTNH.shape[-1] // 2
    cos, sin = cos_BTH[:, :, None, :half], sin_BTH[:, :, None, :half]
    x1, x2 = x_BTNH[..., 0::2], x_BTNH[..., 1::2]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BTNH.dtype)


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)). Used for dense layers and shared experts."""

    def __init__(self, width: int, cfg: ModelConfig, rngs: nnx.Rngs, stack: Stack = ()):
        d = cfg.hidden_size
        self.gate_proj = make_param(rngs, cfg, (d, width), ("embed", "mlp"), stack)
        self.up_proj = make_param(rngs, cfg, (d, width), ("embed", "mlp"), stack)
        self.down_proj = make_param(rngs, cfg, (width, d), ("mlp", "embed"), stack)
        self.compute_dtype = dtype_of(cfg.compute_dtype)

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        dt = self.compute_dtype
        gate_BTF = project(x_BTD, self.gate_proj[...].astype(dt), "BTD,DF->BTF")
        up_BTF = project(x_BTD, self.up_proj[...].astype(dt), "BTD,DF->BTF")
        h_BTF = constrain(jax.nn.silu(gate_BTF) * up_BTF, ("batch", "length", "act_mlp"))
        return project(h_BTF, self.down_proj[...].astype(dt), "BTF,FD->BTD")
