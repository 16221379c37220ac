"""Tiny random Hugging Face models (transformers + torch, test-only) and their r1jax twins."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from safetensors.numpy import load_file

from r1jax.model.config import ModelConfig
from r1jax.model.hf_config import to_hf_config

# r1jax field -> HF config field, where the names differ.
_RENAMES = {"qwen3_moe": {"n_routed_experts": "num_experts"}}


def hf_config(cfg: ModelConfig):
    """The transformers config for an r1jax ModelConfig (float32, eager attention)."""
    import transformers

    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    for ours, theirs in _RENAMES.get(cfg.family, {}).items():
        fields[theirs] = fields.pop(ours)
    common = dict(rope_parameters=to_hf_config(cfg)["rope_parameters"],
                  dtype="float32", attn_implementation="eager", pad_token_id=None)
    keep = {k: v for k, v in fields.items() if not k.startswith("rope_") or k == "rope_interleave"}
    keep = {k: v for k, v in keep.items() if k not in ("family", "param_dtype",
                                                         "compute_dtype", "moe_impl", "moe_block_size",
                                                         "moe_decode_used_blocks", "moe_decode_impl", "remat", "scan_layers",
                                                         "decode_attention",
                                                         "routing_bias_update_rate")}
    if cfg.is_deepseek:
        for qwen_only in ("head_dim", "mlp_only_layers", "decoder_sparse_step"):
            keep.pop(qwen_only)
        keep["num_key_value_heads"] = cfg.num_attention_heads
        return transformers.DeepseekV3Config(**keep, **common)
    keep["mlp_only_layers"] = list(cfg.mlp_only_layers)
    return transformers.Qwen3MoeConfig(**keep, **common)


def random_hf_model(cfg: ModelConfig, seed: int = 0, bias_scale: float = 0.0, initializer_range: float | None = None):
    """A randomly initialised HF model; `bias_scale` > 0 also randomises e_score_correction_bias;
    `initializer_range`: the weights' std (HF's 0.02 leaves expert outputs too small for a wrong routing to
    show in the logits)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = hf_config(cfg)
    if initializer_range is not None:
        config.initializer_range = initializer_range
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # HF initialises norms to one; perturb them so the test sees their role
                p.add_(0.1 * torch.randn_like(p))
        if bias_scale:
            for name, buf in model.named_buffers():
                if name.endswith("e_score_correction_bias"):
                    buf.copy_(bias_scale * torch.randn_like(buf))
    return model.eval()


def read_safetensors(directory) -> dict[str, np.ndarray]:
    """Every tensor of the *.safetensors files in `directory`, read with safetensors itself."""
    tensors = {}
    for file in sorted(pathlib.Path(directory).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def hf_tensors(model, tmp_path) -> dict[str, np.ndarray]:
    """The model's tensors in the canonical hub layout, read back from `save_pretrained`."""
    model.save_pretrained(tmp_path, safe_serialization=True)
    return read_safetensors(tmp_path)
