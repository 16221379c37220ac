"""YaRN rotary scaling (model.rope) against transformers: the frequencies and scales of DeepSeek-V3's and
Qwen3's published long-context settings, and both families' logits past the original context, full-sequence
and decoded token by token from a cache; the settings read from and written to config.json."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from r1jax.errors import UserError
from r1jax.model.config import ModelConfig
from r1jax.model.hf_config import from_hf_config, to_hf_config
from r1jax.model.hf_io import HFCheckpoint, import_params
from r1jax.model.rope import cos_sin_scale, inverse_frequencies, mla_softmax_scale
from tests.model.hf_models import hf_config, hf_tensors, random_hf_model
from tests.model.tiny import DEEPSEEK, QWEN

# DeepSeek-V3's released config.json rope_scaling; Qwen3's documented long-context option
DEEPSEEK_V3_YARN = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096, "beta_fast": 32,
                    "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
QWEN3_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}


def imported(hf: dict) -> ModelConfig:
    return from_hf_config(hf)[0]


@pytest.mark.parametrize("family,rope_scaling,max_positions", [
    ("deepseek_v3", DEEPSEEK_V3_YARN, 163840), ("qwen3_moe", QWEN3_YARN, 131072),
    ("qwen3_moe", {**QWEN3_YARN, "factor": None, "beta_fast": 16, "truncate": False}, 65536),
    ("deepseek_v3", {**DEEPSEEK_V3_YARN, "mscale": 0.707, "attention_factor": None}, 163840),
    # the ramp's end past the last dimension (clipped to dim - 1), and a ramp of zero width (widened by 0.001)
    ("qwen3_moe", {**QWEN3_YARN, "beta_fast": 64, "beta_slow": 0.25, "rope_theta": 100.0}, 131072),
    ("qwen3_moe", {**QWEN3_YARN, "beta_fast": 8000, "beta_slow": 6000}, 131072),
    # an attention factor given outright; mscale without mscale_all_dim (cos and sin x mscale(factor), the
    # softmax scale unchanged)
    ("qwen3_moe", {**QWEN3_YARN, "attention_factor": 1.3}, 131072),
    ("deepseek_v3", {k: v for k, v in DEEPSEEK_V3_YARN.items() if k != "mscale_all_dim"} | {"mscale": 0.707},
     163840)])
def test_frequencies_and_scales_equal_transformers_for_published_settings(family, rope_scaling, max_positions):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, yarn_apply_mscale
    base = to_hf_config(DEEPSEEK if family == "deepseek_v3" else QWEN)
    dim = 64 if family == "deepseek_v3" else 128
    sizes = dict(qk_rope_head_dim=64, qk_nope_head_dim=128) if family == "deepseek_v3" else dict(head_dim=128)
    cfg = imported({**base, **sizes, "max_position_embeddings": max_positions, "rope_scaling": rope_scaling,
                    "rope_parameters": None})
    assert cfg.rope_type == "yarn"
    theirs_cfg = hf_config(cfg)
    theirs_cfg.max_position_embeddings = max_positions
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](theirs_cfg)
    np.testing.assert_allclose(np.asarray(inverse_frequencies(cfg, dim)), inv_freq.numpy(), rtol=1e-6, atol=0)
    assert cos_sin_scale(cfg) == pytest.approx(attention_factor, rel=1e-12)
    if family == "deepseek_v3":
        assert mla_softmax_scale(cfg) == pytest.approx(yarn_apply_mscale(theirs_cfg.rope_parameters, 1.0), rel=1e-12)
        if rope_scaling is DEEPSEEK_V3_YARN:  # (0.1 ln 40 + 1)^2, cos and sin unscaled
            assert (mla_softmax_scale(cfg), cos_sin_scale(cfg)) == (pytest.approx(1.8738, abs=1e-4), 1.0)


CASES = {
    "qwen": dataclasses.replace(QWEN, max_position_embeddings=64, rope_type="yarn", rope_factor=4.0,
                                rope_original_max_position_embeddings=8),
    "deepseek": dataclasses.replace(DEEPSEEK, max_position_embeddings=64, rope_type="yarn", rope_factor=8.0,
                                    rope_original_max_position_embeddings=8, rope_mscale=1.0,
                                    rope_mscale_all_dim=0.8),
}


def logits(policy, tokens) -> np.ndarray:
    """The full-sequence forward's logits, one compiled program (run op by op, it took seconds more)."""
    graphdef, state = nnx.split(policy)
    return np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t).logits_BTV)(state, jnp.asarray(tokens)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_yarn_logits_past_the_original_context_match_transformers_full_and_cached(case, tmp_path):
    """30 positions over an original context of 8: every frequency band of the ramp is exercised."""
    cfg = CASES[case]
    hf = random_hf_model(cfg, seed=2, bias_scale=0.05)
    hf_tensors(hf, tmp_path)
    with HFCheckpoint(tmp_path) as ckpt:
        policy = import_params(ckpt, cfg)
    tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 30))
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.numpy()
    ours = logits(policy, tokens)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    # the decode path: a prefill of 20, then one token at a time from the cache (one compiled step for the 10)
    valid = np.ones((2, 30), bool)
    positions = np.broadcast_to(np.arange(30, dtype=np.int32), (2, 30))
    graphdef, state = nnx.split(policy)

    @jax.jit
    def forward_cached(state, tokens_BT, positions_BT, caches, cache_index):
        out, caches = nnx.merge(graphdef, state).forward_cached(tokens_BT, positions_BT, jnp.ones_like(tokens_BT, bool),
                                                                caches, cache_index, jnp.asarray(valid))
        return out.logits_BTV, caches

    out, caches = forward_cached(state, tokens[:, :20], positions[:, :20], policy.init_cache(2, 30), np.int32(0))
    steps = [np.asarray(out)]
    for t in range(20, 30):
        out, caches = forward_cached(state, tokens[:, t:t + 1], positions[:, t:t + 1], caches, np.int32(t))
        steps.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), theirs, atol=1e-4, rtol=0)
    # not the default embedding's logits (a tiny random model's logits move little: compared with our error)
    plain = dataclasses.replace(cfg, rope_type="default")
    with HFCheckpoint(tmp_path) as ckpt:
        default = logits(import_params(ckpt, plain), tokens)
    assert np.abs(default - theirs).max() > 20 * np.abs(ours - theirs).max()


@pytest.mark.parametrize("case", sorted(CASES))
def test_yarn_settings_round_trip_through_config_json(case):
    cfg = CASES[case]
    hf = to_hf_config(cfg)
    assert hf["rope_parameters"]["rope_type"] == hf["rope_scaling"]["type"] == "yarn"
    fields = ("rope_type", "rope_theta", *(f for f in vars(cfg) if f.startswith("rope_")))
    assert {f: getattr(imported(hf), f) for f in fields} == {f: getattr(cfg, f) for f in fields}
    legacy = {**hf, "rope_parameters": None}  # only the legacy key, as DeepSeek-V3's hub config has it
    assert imported(legacy) == imported(hf)


@pytest.mark.parametrize("field,value,named", [
    ("rope_type", "dynamic", "model.rope_type"), ("rope_factor", 0.5, "model.rope_factor"),
    ("rope_original_max_position_embeddings", None, "model.rope_original_max_position_embeddings"),
    ("rope_beta_fast", 0.5, "model.rope_beta_fast"), ("rope_mscale", -1.0, "model.rope_mscale"),
    ("rope_attention_factor", float("nan"), "model.rope_attention_factor")])
def test_bad_yarn_settings_are_named(field, value, named):
    good = dict(rope_type="yarn", rope_factor=4.0, rope_original_max_position_embeddings=8)
    with pytest.raises(UserError, match=named):
        ModelConfig(**{**good, field: value})
