"""config.json read as transformers' own config classes read it (the independent reference): legacy keys,
aliases, and the settings r1jax refuses or notes."""

import json

import pytest
import torch
import transformers

from r1jax.errors import UserError
from r1jax.model.hf_config import from_hf_config, is_block_fp8, to_hf_config
from tests.model.tiny import DEEPSEEK, QWEN

CLASSES = {"deepseek_v3": transformers.DeepseekV3Config, "qwen3_moe": transformers.Qwen3MoeConfig}


def hub(cfg, **change):
    """r1jax's config.json of `cfg` with `change`; a None value drops the key."""
    out = {**to_hf_config(cfg), **change}
    return {k: v for k, v in out.items() if v is not None or k not in change}


@pytest.mark.parametrize("cfg", [QWEN, DEEPSEEK], ids=["qwen3_moe", "deepseek_v3"])
def test_a_bfloat16_checkpoint_named_by_the_legacy_torch_dtype_stays_bfloat16(cfg):
    """Qwen3's and DeepSeek-V3's released config.json name only `torch_dtype`."""
    config = hub(cfg, dtype=None, torch_dtype="bfloat16")
    assert "dtype" not in config
    theirs = CLASSES[cfg.family](**{k: v for k, v in config.items() if k == "torch_dtype"})
    assert theirs.dtype == torch.bfloat16
    assert from_hf_config(config)[0].param_dtype == "bfloat16"
    assert from_hf_config(hub(cfg, dtype="float32", torch_dtype="bfloat16"))[0].param_dtype == "float32"


def test_the_multi_token_prediction_layers_under_their_alias_are_noted():
    """DeepseekV3Config maps num_mtp_layers to num_nextn_predict_layers."""
    config = hub(DEEPSEEK, num_nextn_predict_layers=None, num_mtp_layers=2)
    assert transformers.DeepseekV3Config(num_mtp_layers=2).num_nextn_predict_layers == 2
    _, notes = from_hf_config(config)
    assert any("num_nextn_predict_layers=2" in note for note in notes)


@pytest.mark.parametrize("cfg,change,named", [
    (DEEPSEEK, {"moe_layer_freq": 2}, "moe_layer_freq"),
    (QWEN, {"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    (QWEN, {"model_type": "deepseek_v3"}, "unsupported architecture"),
    (DEEPSEEK, {"quantization_config": {"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [2, 2]}},
     "e5m2"),
    (DEEPSEEK, {"quantization_config": {"quant_method": "fp8", "weight_block_size": [2, 2, 2]}}, "fp8"),
])
def test_settings_r1jax_does_not_run_are_named(cfg, change, named):
    with pytest.raises(UserError, match=named):
        from_hf_config(hub(cfg, **change))


def test_block_fp8_is_e4m3_with_a_two_dimensional_block():
    good = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    assert is_block_fp8(good) and is_block_fp8({k: v for k, v in good.items() if k != "fmt"})
    for bad in ({"fmt": "e5m2"}, {"weight_block_size": [128, 128, 1]}, {"weight_block_size": [128, 0]},
                {"weight_block_size": [True, 128]}, {"quant_method": "bitsandbytes"}):
        assert not is_block_fp8({**good, **bad}), bad


@pytest.mark.parametrize("key,value", [("rms_norm_eps", True), ("num_hidden_layers", True),
                                       ("routed_scaling_factor", False), ("n_group", False)])
def test_true_or_false_for_a_number_is_named(key, value):
    """JSON's true is no number (Python's bool is an int: it would read as 1)."""
    with pytest.raises(UserError, match=f"{key} is {str(value).lower()}"):
        from_hf_config(hub(DEEPSEEK, **{key: value}))


def test_yarn_without_truncation_is_exported_so_transformers_reads_it(tmp_path):
    import dataclasses
    import json

    cfg = dataclasses.replace(QWEN, max_position_embeddings=64, rope_type="yarn", rope_factor=4.0,
                              rope_original_max_position_embeddings=16, rope_truncate=False)
    config = to_hf_config(cfg)
    (tmp_path / "config.json").write_text(json.dumps(config))
    theirs = transformers.AutoConfig.from_pretrained(tmp_path)
    assert theirs.rope_parameters["truncate"] is False
    assert from_hf_config(config)[0].rope_truncate is False
    assert from_hf_config({**config, "rope_parameters": None})[0].rope_truncate is False


@pytest.mark.parametrize("cfg,rope", [
    (QWEN, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    (QWEN, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 8}),
    (DEEPSEEK, {"type": "yarn", "factor": 40, "original_max_position_embeddings": 64, "mscale": 1.0}),
], ids=["qwen-no-betas", "qwen-beta-fast", "deepseek-no-betas"])
def test_yarn_keys_a_hub_config_leaves_out_take_transformers_values(cfg, rope):
    """The betas and truncate a rope_scaling leaves out: the frequencies transformers computes from the same
    config.json (its config class built from the dict itself, not from r1jax's reading of it)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from r1jax.model.rope import inverse_frequencies

    sizes = dict(qk_rope_head_dim=64) if cfg.is_deepseek else dict(head_dim=64, hidden_size=256)
    config = hub(cfg, max_position_embeddings=256, rope_parameters=None, rope_scaling=dict(rope), **sizes)
    ours = from_hf_config(config)[0]
    theirs = CLASSES[cfg.family](**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    inv_freq, scale = ROPE_INIT_FUNCTIONS["yarn"](theirs)
    assert (ours.rope_beta_fast, ours.rope_beta_slow, ours.rope_truncate) == (rope.get("beta_fast", 32), 1, True)
    import numpy as np
    np.testing.assert_allclose(np.asarray(inverse_frequencies(ours, 64)), inv_freq.numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("cfg,keys", [
    (DEEPSEEK, {"n_routed_experts": 4, "num_local_experts": 8}),
    (QWEN, {"num_experts": 4, "num_local_experts": 8}),
    (QWEN, {"n_routed_experts": 4, "num_experts": 8}),  # no key of Qwen3MoeConfig's
    (QWEN, {"n_routed_experts": 4, "num_experts": None}),  # so the class default (128)
], ids=["deepseek-both-names", "qwen-both-names", "qwen-deepseek-name", "qwen-deepseek-name-only"])
def test_the_expert_count_is_the_one_transformers_reads(cfg, keys):
    """A config.json naming the routed experts twice: transformers' attribute_map alias (num_local_experts) is
    set after the field and wins; Qwen3MoeConfig reads num_experts, never n_routed_experts."""
    config = hub(cfg, **keys)
    theirs = CLASSES[cfg.family](**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    assert from_hf_config(config)[0].n_routed_experts == theirs.num_local_experts


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
@pytest.mark.parametrize("value", ["banana", "bf16", 16, True, ["bfloat16"]])
def test_a_dtype_naming_no_float_type_is_named_with_the_accepted_ones(key, value):
    """transformers turns config.json's dtype into `getattr(torch, dtype)`: "bf16" fails there; r1jax read
    every value but "bfloat16" as float32 without a word."""
    config = hub(QWEN, **{"dtype": None, "torch_dtype": None, key: value})
    if isinstance(value, str):
        with pytest.raises(AttributeError):
            transformers.Qwen3MoeConfig(**{key: value})
    with pytest.raises(UserError) as err:
        from_hf_config(config, source="hf/config.json")
    assert str(err.value).startswith(f"hf/config.json: {key} is {json.dumps(value)} (expected one of \"float32\", "
                                     '"bfloat16", "float16", "float64", "float8_e4m3fn", "float8_e5m2" or null')


@pytest.mark.parametrize("value, param_dtype", [("float32", "float32"), ("bfloat16", "bfloat16"),
                                                ("float16", "float32"), ("float64", "float32"), (None, "float32"),
                                                ("float8_e4m3fn", "float32"), ("float8_e5m2", "float32")])
def test_the_dtypes_transformers_stores_import_in_the_float_type_that_holds_them(value, param_dtype):
    """float16 widens to float32 exactly; float64 is rounded to float32, with a note; no dtype is float32.
    Block-wise fp8 checkpoints state the dtype of their other tensors (DeepSeek-V3's: bfloat16), or their fp8
    type (transformers takes any torch dtype; such configs are on the Hub): float32 then, as before 2026-12-06."""
    if value is not None:
        assert str(transformers.Qwen3MoeConfig(dtype=value).dtype) == f"torch.{value}"  # a dtype transformers takes
    config = hub(QWEN, dtype=value, torch_dtype=None)
    cfg, notes = from_hf_config(config)
    assert cfg.param_dtype == param_dtype
    assert any("float64: the weights are rounded to float32" in n for n in notes) == (value == "float64")
    fp8 = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128], "activation_scheme": "dynamic"}
    cfg, notes = from_hf_config(hub(DEEPSEEK, dtype=None, torch_dtype=value, quantization_config=fp8))
    assert cfg.param_dtype == param_dtype and f"dequantised on import to {param_dtype}" in " ".join(notes)


def test_a_bad_legacy_torch_dtype_beside_a_dtype_is_not_read():
    """transformers keeps `dtype` when both are given, and drops `torch_dtype`."""
    config = hub(QWEN, dtype="bfloat16", torch_dtype="banana")
    assert transformers.Qwen3MoeConfig(dtype="bfloat16", torch_dtype="banana").dtype == torch.bfloat16
    assert from_hf_config(config)[0].param_dtype == "bfloat16"
