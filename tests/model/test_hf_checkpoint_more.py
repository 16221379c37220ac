"""Which files of a Hugging Face directory hold its weights, and which tensors a tied model has (hand-made
directories; transformers' own rules as the reference)."""

import dataclasses
import json

import numpy as np
from safetensors.numpy import save_file

from r1jax.model.hf_checkpoint import HFCheckpoint
from r1jax.model.hf_weights import tensor_map
from tests.model.tiny import DEEPSEEK, QWEN


def test_without_an_index_model_safetensors_is_the_checkpoint_as_transformers_loads_it(tmp_path):
    """A stray *.safetensors beside model.safetensors (a consolidated copy, an adapter) is not read."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    save_file({"model.norm.weight": np.ones(4, np.float32)}, str(tmp_path / "model.safetensors"))
    save_file({"model.norm.weight": np.zeros(4, np.float32), "extra": np.zeros(2, np.float32)},
              str(tmp_path / "consolidated.safetensors"))
    with HFCheckpoint(tmp_path) as ckpt:
        assert set(ckpt.files) == {"model.norm.weight"}
        np.testing.assert_array_equal(ckpt.get("model.norm.weight"), np.ones(4, np.float32))


def test_a_tied_model_has_no_lm_head_tensor():
    """transformers saves a model with tie_word_embeddings without lm_head.weight (the embedding is the head)."""
    for cfg in (QWEN, DEEPSEEK):
        names = [t.hf_name for t in tensor_map(cfg)]
        assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight"
        tied = [t.hf_name for t in tensor_map(dataclasses.replace(cfg, tie_word_embeddings=True))]
        assert tied == names[:-1]


def test_fp8_block_scales_of_another_shape_than_the_blocks_are_named(tmp_path):
    """A [4, 6] fp8 weight in blocks of [2, 4] needs [2, 2] scales: those dequantise it block by block (hand
    reference); [3, 2] scales (a block too many, which slicing would silently drop) are a UserError."""
    import pytest
    import torch
    from safetensors.torch import save_file as save_torch

    from r1jax.errors import UserError

    weight = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 4
    scale = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    quant = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [2, 4]}
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "quantization_config": quant}))
    for scales, ok in ((scale, True), (torch.ones(3, 2), False)):
        save_torch({"w": weight.to(torch.float8_e4m3fn), "w_scale_inv": scales}, str(tmp_path / "model.safetensors"))
        with HFCheckpoint(tmp_path) as ckpt:
            if ok:
                want = weight.to(torch.float8_e4m3fn).float().numpy() * np.array(
                    [[1, 1, 1, 1, 2, 2]] * 2 + [[3, 3, 3, 3, 4, 4]] * 2, np.float32)
                np.testing.assert_array_equal(ckpt.get("w"), want)
            else:
                with pytest.raises(UserError, match=r"\[4, 6\] weight with \[3, 2\] scales 'w_scale_inv'"):
                    ckpt.get("w")
