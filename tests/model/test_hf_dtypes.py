"""Parameter dtypes on import: a bfloat16 DeepSeek-V3 hub checkpoint keeps its float32 router (transformers'
`_keep_in_fp32_modules_strict`), so import, logits and HF -> r1jax -> HF match transformers exactly; Qwen3-MoE's
router is an nn.Linear in the model's dtype. Other float32 tensors of a bfloat16 checkpoint are rounded, with
a warning naming them; an old r1jax checkpoint whose router was saved in bfloat16 still restores."""

import dataclasses
import logging

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file

from r1jax.model.factory import abstract_policy, init_policy
from r1jax.model.hf_io import export_hf
from r1jax.rl.checkpoint import load_policy, save_policy
from r1jax.rl.config import load_config
from r1jax.rl.hf_policy import load_hf_policy
from tests.model.hf_models import random_hf_model, read_safetensors
from tests.model.test_hf_interop import assert_bitwise_equal
from tests.model.tiny import DEEPSEEK, QWEN

torch.set_num_threads(1)
ROUNDED = "rounded to it"  # what the import's warning says


def routers(policy) -> list:
    return [seg.block.mlp.router for seg in policy.segments if hasattr(seg.block.mlp, "router")]


def save_bfloat16(cfg, tmp_path):
    """A random transformers model of `cfg` saved as the hub stores one (bfloat16; DeepSeek's router float32)."""
    random_hf_model(cfg, seed=2, bias_scale=0.05).save_pretrained(tmp_path / "f32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "f32", dtype=torch.bfloat16)
    hf.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


@pytest.mark.parametrize("cfg, router_dtype", [(DEEPSEEK, jnp.float32), (QWEN, jnp.bfloat16)])
def test_the_router_is_float32_for_deepseek_and_param_dtype_for_qwen(cfg, router_dtype):
    policy = abstract_policy(dataclasses.replace(cfg, param_dtype="bfloat16"))
    assert {r.get_value().dtype for r in routers(policy)} == {jnp.dtype(router_dtype)}
    assert policy.segments[-1].block.mlp.gate_proj.get_value().dtype == jnp.bfloat16


def test_a_bfloat16_deepseek_checkpoint_imports_exactly_by_default(tmp_path, caplog):
    hf_dir = save_bfloat16(DEEPSEEK, tmp_path)
    source = read_safetensors(hf_dir)
    assert source["model.layers.1.mlp.gate.weight"].dtype == np.float32  # as transformers stores it
    with caplog.at_level(logging.WARNING):
        config, policy = load_hf_policy(hf_dir)  # what `r1jax import-hf HF_DIR OUT` does
    assert ROUNDED not in caplog.text
    assert config.model.param_dtype == "bfloat16"
    assert {r.get_value().dtype for r in routers(policy)} == {jnp.dtype(jnp.float32)}
    export_hf(policy, tmp_path / "out")  # in param_dtype, the router in float32
    assert_bitwise_equal(read_safetensors(tmp_path / "out"), source)

    tokens = np.random.RandomState(0).randint(0, DEEPSEEK.vocab_size, (4, 32))
    theirs_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = theirs_model(torch.tensor(tokens)).logits.numpy()
    _, wide = load_hf_policy(hf_dir, overrides=["model.param_dtype=float32"])
    ours, ours_wide = (np.asarray(p(jnp.asarray(tokens)).logits_BTV, np.float32) for p in (policy, wide))
    np.testing.assert_allclose(ours, ours_wide, atol=1e-6, rtol=0)  # a rounded router: 2.65e-2 apart
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_other_float32_tensors_of_a_bfloat16_checkpoint_are_rounded_with_a_warning(tmp_path, caplog):
    hf_dir = save_bfloat16(QWEN, tmp_path)
    weights = read_safetensors(hf_dir)
    norm = np.random.RandomState(0).randn(QWEN.hidden_size).astype(np.float32)  # not a bfloat16 value
    weights["model.norm.weight"] = norm
    save_file(weights, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING):
        _, policy = load_hf_policy(hf_dir)
    assert f"{ROUNDED} (1): model.norm.weight" in caplog.text and "model.param_dtype=float32" in caplog.text
    assert np.asarray(policy.norm.weight[...]).tobytes() == norm.astype(ml_dtypes.bfloat16).tobytes()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, wide = load_hf_policy(hf_dir, overrides=["model.param_dtype=float32"])
    assert ROUNDED not in caplog.text
    assert np.asarray(wide.norm.weight[...]).tobytes() == norm.tobytes()


def test_asking_for_bfloat16_over_a_float32_checkpoint_does_not_warn(tmp_path, caplog):
    random_hf_model(QWEN, seed=2).save_pretrained(tmp_path / "hf")
    with caplog.at_level(logging.WARNING):
        config, _ = load_hf_policy(tmp_path / "hf", overrides=["model.param_dtype=bfloat16"])
    assert config.model.param_dtype == "bfloat16" and ROUNDED not in caplog.text


def test_a_checkpoint_saved_with_a_bfloat16_router_restores_it_in_float32(tmp_path):
    cfg = dataclasses.replace(DEEPSEEK, param_dtype="bfloat16")
    policy = init_policy(cfg, 0)
    for router in routers(policy):  # as r1jax saved DeepSeek's router before it kept it in float32
        router.set_value(router[...].astype(jnp.bfloat16))
    old = [np.asarray(r[...]) for r in routers(policy)]
    save_policy(tmp_path / "ck", dataclasses.replace(load_config("tiny"), model=cfg), policy)
    _, restored = load_policy(tmp_path / "ck")
    for before, after in zip(old, routers(restored)):
        assert after.get_value().dtype == jnp.float32
        assert np.asarray(after[...]).tobytes() == before.astype(np.float32).tobytes()


def test_a_float64_checkpoint_imports_rounded_to_float32_with_a_note_and_a_warning(tmp_path, caplog):
    """transformers loads a float64 checkpoint as it is; r1jax keeps no float64 parameters, so it rounds each
    tensor to float32 as transformers does when asked for float32, and says so."""
    from r1jax.rl.hf_policy import hf_run_config

    random_hf_model(QWEN, seed=2).to(torch.float64).save_pretrained(tmp_path / "hf")
    hf_dir = tmp_path / "hf"
    assert read_safetensors(hf_dir)["model.norm.weight"].dtype == np.float64
    config, notes = hf_run_config(hf_dir)
    assert config.model.param_dtype == "float32"
    assert [n for n in notes if "float64" in n] == [
        "dtype float64: the weights are rounded to float32 on import (r1jax keeps no float64 parameters; "
        "transformers loads them in float64)"]
    with caplog.at_level(logging.WARNING):
        _, policy = load_hf_policy(hf_dir)
    assert ROUNDED in caplog.text and "r1jax keeps no float64 parameters" in caplog.text
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    assert np.asarray(policy.norm.weight[...]).tobytes() == theirs.model.norm.weight.detach().numpy().tobytes()
