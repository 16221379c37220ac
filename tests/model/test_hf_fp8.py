"""Block-wise fp8 checkpoints (DeepSeek-V3/R1 as released, Qwen3's -FP8 models) import dequantised: each e4m3
weight times its block's scale (`weight_scale_inv`), as DeepSeek's fp8_cast_bf16.py computes it. The
reference is transformers run on the same dequantised weights, computed here in torch; blocks that do not
divide the weights' sides (the last block row and column partial) included."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from r1jax.errors import UserError
from r1jax.model.hf_checkpoint import HFCheckpoint
from r1jax.model.hf_config import from_hf_config
from r1jax.model.hf_io import import_params
from tests.model.hf_models import random_hf_model
from tests.model.tiny import DEEPSEEK, QWEN

BLOCK = [16, 12]  # divides neither 32-wide nor 24-wide sides of the tiny models everywhere
FP8_MAX = 448.0  # e4m3's largest finite value


def quantised(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight, float32 scales per block) as DeepSeek quantises: scale = block amax / 448."""
    rows, cols = weight.shape
    blocks = (-(-rows // BLOCK[0]), -(-cols // BLOCK[1]))
    scale = torch.zeros(blocks)
    for i in range(blocks[0]):
        for j in range(blocks[1]):
            part = weight[i * BLOCK[0]:(i + 1) * BLOCK[0], j * BLOCK[1]:(j + 1) * BLOCK[1]]
            scale[i, j] = part.abs().max().clamp(min=1e-12) / FP8_MAX
    per_element = scale.repeat_interleave(BLOCK[0], 0).repeat_interleave(BLOCK[1], 1)[:rows, :cols]
    return (weight / per_element).to(torch.float8_e4m3fn), scale


def fp8_checkpoint(cfg, directory):
    """A tiny HF model saved block-wise fp8 in `directory` (its projections; embeddings, norms, routers and
    lm_head as they are), and the model loaded by transformers from its dequantised weights."""
    import transformers
    reference = directory / "dequantised"
    random_hf_model(cfg, seed=3, bias_scale=0.05).save_pretrained(reference)  # the hub's per-expert layout
    tensors, dequantised = {}, {}
    for name, value in load_file(str(reference / "model.safetensors")).items():
        if value.ndim == 2 and name.endswith("_proj.weight"):
            q, scale = quantised(value.float())
            tensors[name], tensors[name + "_scale_inv"] = q, scale
            per_element = scale.repeat_interleave(BLOCK[0], 0).repeat_interleave(BLOCK[1], 1)
            dequantised[name] = q.float() * per_element[:value.shape[0], :value.shape[1]]
        else:
            tensors[name] = dequantised[name] = value
    assert any(t.dtype == torch.float8_e4m3fn for t in tensors.values())
    save_file(tensors, str(directory / "model.safetensors"))
    save_file(dequantised, str(reference / "model.safetensors"))
    config = json.loads((reference / "config.json").read_text())
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "weight_block_size": BLOCK}
    (directory / "config.json").write_text(json.dumps(config))
    model = transformers.AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32,
                                                              attn_implementation="eager")
    return model.eval(), config


@pytest.mark.parametrize("cfg", [DEEPSEEK, QWEN], ids=["deepseek_v3", "qwen3_moe"])
def test_fp8_checkpoints_import_dequantised_with_transformers_logits(cfg, tmp_path):
    model, config = fp8_checkpoint(cfg, tmp_path)
    imported, notes = from_hf_config(config)
    assert any("fp8" in note for note in notes)
    with HFCheckpoint(tmp_path) as ckpt:
        policy = import_params(ckpt, imported)
    tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 9))
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(policy(jnp.asarray(tokens)).logits_BTV)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_an_fp8_weight_without_its_scales_or_with_a_wrong_block_is_named(tmp_path):
    _, config = fp8_checkpoint(QWEN, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    victim = next(n for n in tensors if n.endswith("_scale_inv"))
    tensors.pop(victim)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    imported, _ = from_hf_config(config)
    with HFCheckpoint(tmp_path) as ckpt, pytest.raises(UserError, match=f"is fp8 without its block scales "
                                                                         f"'{victim}'"):
        import_params(ckpt, imported)
    for block, named in (([16], "quantization_config"), ([16, 0], "quantization_config")):
        with pytest.raises(UserError, match=named):
            from_hf_config({**config, "quantization_config": {**config["quantization_config"],
                                                              "weight_block_size": block}})
