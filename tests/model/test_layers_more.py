"""model.layers and model.kv_cache's numerics against transformers' own functions and NumPy: the rotary
rotations (HF's rotate_half and DeepSeek's interleaved pairs), YaRN's cos/sin scale, RMSNorm's bfloat16
rounding, and the block-wise online softmax (a row whose every key is masked reads zeros)."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf_deepseek
from transformers.models.qwen3_moe import modeling_qwen3_moe as hf_qwen

from r1jax.model.kv_cache import KVRead, attend_blocks
from r1jax.model.layers import RMSNorm, apply_rope, apply_rope_interleaved, rope_cos_sin
from tests.model.tiny import QWEN

B, T, N, H = 2, 5, 3, 8


def rotary_inputs():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, N, H)).astype(np.float32)
    positions = np.stack([np.arange(T), np.array([0, 0, 1, 2, 3])])
    inv_freq = 1.0 / 10000.0 ** (np.arange(0, H, 2) / H)
    return x, positions, inv_freq.astype(np.float32)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rotary_equals_transformers(interleaved):
    """HF's apply_rotary_pos_emb (rotate_half: [-x2, x1]) and DeepSeek's apply_rotary_pos_emb_interleave (pairs
    (x0, x1), ... rotated by the first half's angles, returned de-interleaved) on the same cos and sin, heads on
    axis 2 (HF: axis 1). A flipped sign or swapped pair in either rotation survived the model's tests."""
    x, positions, inv_freq = rotary_inputs()
    cos, sin = rope_cos_sin(jnp.asarray(positions), jnp.asarray(inv_freq))
    ours = (apply_rope_interleaved if interleaved else apply_rope)(jnp.asarray(x), cos, sin)
    hf_apply = hf_deepseek.apply_rotary_pos_emb_interleave if interleaved else hf_qwen.apply_rotary_pos_emb
    x_hf = torch.from_numpy(x).transpose(1, 2)  # [B, N, T, H]
    want, _ = hf_apply(x_hf, x_hf, torch.from_numpy(np.array(cos)), torch.from_numpy(np.array(sin)))
    np.testing.assert_allclose(np.asarray(ours), want.transpose(1, 2).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("within_rows", [False, True])
@pytest.mark.parametrize("scale", [1.0, 1.3])
def test_rotary_cos_and_sin_are_numpys_times_the_scale(scale, within_rows):
    """cos and sin of cat(freqs, freqs), each times YaRN's attention factor (both of them; 1.0: as they are)."""
    _, positions, inv_freq = rotary_inputs()
    cos, sin = rope_cos_sin(jnp.asarray(positions), jnp.asarray(inv_freq), scale, within_rows=within_rows)
    angles = positions[..., None].astype(np.float64) * np.concatenate([inv_freq, inv_freq])
    np.testing.assert_allclose(np.asarray(cos), np.cos(angles) * scale, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sin), np.sin(angles) * scale, rtol=1e-5, atol=1e-6)


def test_bfloat16_rms_norm_equals_transformers_to_the_bit():
    """HF rounds the normalised activations to the input's dtype, then multiplies by the weight (and rounds
    again): a bfloat16 layer norm multiplied in float32 and rounded once differs in the last bit (it survived
    the model's tests: the bfloat16 forward is only compared within a tolerance)."""
    cfg = dataclasses.replace(QWEN, param_dtype="bfloat16", compute_dtype="bfloat16", rms_norm_eps=1e-6)
    norm = RMSNorm(64, cfg, nnx.Rngs(0))
    weight = np.linspace(0.3, 2.7, 64).astype(np.float32)
    norm.weight[...] = jnp.asarray(weight, jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((8, 64)) * 3, jnp.bfloat16)
    hf = hf_qwen.Qwen3MoeRMSNorm(64, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        hf.weight.copy_(torch.from_numpy(np.asarray(norm.weight[...], np.float32)).to(torch.bfloat16))
        want = hf(torch.from_numpy(np.asarray(x, np.float32)).to(torch.bfloat16)).float().numpy()
    got = norm(x)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), want)


@pytest.mark.parametrize("block", [2, 3])
def test_blockwise_softmax_equals_numpy_and_a_row_with_every_key_masked_reads_zeros(block):
    """attend_blocks' online softmax over slots [0, live) against NumPy's masked softmax; a row with no visible
    slot (a finished or empty row) gives zeros, not NaN (0 / 0: the normaliser's floor)."""
    rng = np.random.default_rng(2)
    s, d = 7, 4
    keys = rng.standard_normal((1, 3, s, d)).astype(np.float32)  # [L, B, S, D]
    values = rng.standard_normal((1, 3, s, d)).astype(np.float32)
    query = rng.standard_normal((3, d)).astype(np.float32)
    mask = np.array([[1, 1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1]], bool)

    def scores(entries):
        return jnp.einsum("bd,bsd->bs", jnp.asarray(query), entries[0])

    def weighted(probs, entries):
        return jnp.einsum("bs,bsd->bd", probs, entries[1])

    got = attend_blocks(scores, weighted, (3, d), (jnp.asarray(keys), jnp.asarray(values)), (1, 1), 0,
                        jnp.asarray(mask), KVRead(jnp.int32(s), block))
    raw = np.einsum("bd,bsd->bs", query, keys[0])
    top = np.where(mask, raw, -np.inf).max(-1, keepdims=True)
    probs = np.where(mask, np.exp(raw - np.where(np.isfinite(top), top, 0)), 0)
    want = np.einsum("bs,bsd->bd", probs / np.maximum(probs.sum(-1, keepdims=True), 1e-30), values[0])
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got)[1], 0)


def test_parameters_start_as_hugging_faces_normal_of_the_initializer_range():
    """make_param's "normal": std initializer_range (0.02 here; 1.0 without the factor), mean 0."""
    from r1jax.model.factory import init_policy
    embed = np.asarray(init_policy(QWEN, seed=0).embed_tokens[...])
    assert abs(embed.std() - QWEN.initializer_range) < 0.1 * QWEN.initializer_range
    assert abs(embed.mean()) < 0.1 * QWEN.initializer_range
