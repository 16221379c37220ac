"""Rotary embedding frequencies and scales: the default rotary embedding and YaRN, as transformers computes them.

YaRN (Peng et al. 2023, arXiv:2309.00071) stretches the rotary embedding past the context a model was trained
on: each frequency is blended between itself (fast ones, `beta_fast` rotations or more over the original
context, kept: "extrapolation") and itself divided by `factor` (slow ones, `beta_slow` rotations or fewer,
"interpolation"), on a linear ramp between the two dimensions; cos and sin are multiplied by an attention
factor (0.1 ln(factor) + 1 unless given, or mscale(factor, mscale) / mscale(factor, mscale_all_dim)), and MLA
also multiplies its softmax scale by mscale(factor, mscale_all_dim)^2 (DeepSeek-V3's released config: factor
40 over 4,096 positions, mscale = mscale_all_dim = 1: cos and sin unscaled, the softmax scale x 1.874 at
every position). Sources: transformers 5 `modeling_rope_utils._compute_yarn_parameters`, `yarn_get_mscale`,
`yarn_apply_mscale` (DeepseekV3Attention's scaling); Qwen3's long-context option (factor 4 over 32,768) is the
same computation without the MLA scale.

The frequencies are computed once, in float32 in the order transformers computes them, as constants of the
compiled program; the default rotary embedding's keep the traced form r1jax always used (the same values).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "yarn")


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's eq. 21 scale: 0.1 x mscale x ln(factor) + 1 (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def inverse_frequencies(cfg, dim: int):
    """float32 [dim / 2] rotary inverse frequencies of `cfg` (a ModelConfig) for a rotary dimension `dim`."""
    if cfg.rope_type == "default":
        return 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    f32 = np.float32
    base, factor = cfg.rope_theta, cfg.rope_factor
    original = cfg.rope_original_max_position_embeddings

    def correction_dim(rotations: float) -> float:  # the dimension turning `rotations` times over `original`
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(cfg.rope_beta_fast), correction_dim(cfg.rope_beta_slow)
    if cfg.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    pos_freqs = f32(base) ** (np.arange(0, dim, 2).astype(f32) / f32(dim))
    ramp = np.clip((np.arange(dim // 2, dtype=f32) - f32(low)) / f32(high - low), 0, 1).astype(f32)
    keep = f32(1) - ramp  # 1: the frequency as it is (extrapolation), 0: divided by factor (interpolation)
    inv = (f32(1) / (f32(factor) * pos_freqs)) * (f32(1) - keep) + (f32(1) / pos_freqs) * keep
    return jnp.asarray(inv.astype(f32))


def cos_sin_scale(cfg) -> float:
    """The factor cos and sin are multiplied by (YaRN's attention factor; 1 for the default embedding)."""
    if cfg.rope_type == "default":
        return 1.0
    if cfg.rope_attention_factor is not None:
        return cfg.rope_attention_factor
    if cfg.rope_mscale and cfg.rope_mscale_all_dim:
        return yarn_mscale(cfg.rope_factor, cfg.rope_mscale) / yarn_mscale(cfg.rope_factor, cfg.rope_mscale_all_dim)
    return yarn_mscale(cfg.rope_factor)


def mla_softmax_scale(cfg) -> float:
    """What MLA's softmax scale (qk_head_dim^-0.5) is multiplied by: mscale(factor, mscale_all_dim)^2 under YaRN
    with `mscale_all_dim` set, else 1."""
    if cfg.rope_type == "default" or not cfg.rope_mscale_all_dim:
        return 1.0
    return yarn_mscale(cfg.rope_factor, cfg.rope_mscale_all_dim) ** 2
