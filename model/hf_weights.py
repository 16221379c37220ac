"""The correspondence between r1jax parameters and Hugging Face tensor names, in both directions.

r1jax stores a linear map as [in dims..., out dims...] (e.g. q_proj [D, N, H]); HF stores [out, in]
(q_proj.weight [N*H, D]). Layers are stacked per segment and experts are stacked per layer in r1jax; HF
names each layer and each expert (`model.layers.N.mlp.experts.M.gate_proj.weight`), the canonical hub
layout that `save_pretrained` writes. Conversion is reshapes and transposes only, so it is exact.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np

from r1jax.model.config import ModelConfig

Path = tuple  # keys into the pure parameter dict, e.g. ("segments", 0, "block", "mlp", "router")


@dataclasses.dataclass(frozen=True)
class Tensor:
    hf_name: str
    path: Path
    index: tuple[int, ...]  # position inside the stacked r1jax array: (layer,) or (layer, expert) or ()
    n_in: int | None  # number of leading input dims of a linear map; None: copy as is (norms, biases)
    keep_shape: bool = False  # with n_in None: the HF tensor has our shape (embeddings), else it is flat

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The HF shape of one slot of ours (a layer's / an expert's slice) of shape `shape`."""
        if self.n_in is None:
            return tuple(shape) if self.keep_shape or len(shape) <= 1 else (math.prod(shape),)
        return (math.prod(shape[self.n_in:]), math.prod(shape[: self.n_in]))

    def to_hf(self, ours: np.ndarray) -> np.ndarray:
        if self.n_in is None:
            return ours.reshape(self.hf_shape(ours.shape))
        rows = math.prod(ours.shape[: self.n_in])
        return np.ascontiguousarray(ours.reshape(rows, -1).T)

    def from_hf(self, theirs: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if self.n_in is None:
            return theirs.reshape(shape)
        return np.ascontiguousarray(theirs.T).reshape(shape)


def _attention(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], int | None]]:
    if not cfg.is_deepseek:
        names = [("q_proj.weight", ("q_proj",), 1), ("k_proj.weight", ("k_proj",), 1),
                 ("v_proj.weight", ("v_proj",), 1), ("o_proj.weight", ("o_proj",), 2),
                 ("q_norm.weight", ("q_norm", "weight"), None), ("k_norm.weight", ("k_norm", "weight"), None)]
        if cfg.attention_bias:
            names += [("q_proj.bias", ("q_bias",), None), ("k_proj.bias", ("k_bias",), None),
                      ("v_proj.bias", ("v_bias",), None), ("o_proj.bias", ("o_bias",), None)]
        return names
    if cfg.q_lora_rank is None:
        names = [("q_proj.weight", ("q_proj",), 1)]
    else:
        names = [("q_a_proj.weight", ("q_a_proj",), 1), ("q_b_proj.weight", ("q_b_proj",), 1),
                 ("q_a_layernorm.weight", ("q_a_layernorm", "weight"), None)]
    names += [("kv_a_proj_with_mqa.weight", ("kv_a_proj_with_mqa",), 1),
              ("kv_a_layernorm.weight", ("kv_a_layernorm", "weight"), None),
              ("kv_b_proj.weight", ("kv_b_proj",), 1), ("o_proj.weight", ("o_proj",), 2)]
    if cfg.attention_bias:
        if cfg.q_lora_rank is not None:
            names.append(("q_a_proj.bias", ("q_a_bias",), None))
        names += [("kv_a_proj_with_mqa.bias", ("kv_a_bias",), None), ("o_proj.bias", ("o_bias",), None)]
    return names


_MLP = [("gate_proj.weight", ("gate_proj",), 1), ("up_proj.weight", ("up_proj",), 1),
        ("down_proj.weight", ("down_proj",), 1)]


def tensor_map(cfg: ModelConfig) -> list[Tensor]:
    """Every HF tensor of this architecture with where it lives in r1jax, in HF's layer order."""
    out = [Tensor("model.embed_tokens.weight", ("embed_tokens",), (), None, keep_shape=True)]
    layer = 0
    for seg_index, (kind, count) in enumerate(cfg.layer_segments()):
        block = ("segments", seg_index, "block")
        for i in range(count):
            out.extend(_layer(cfg, kind, f"model.layers.{layer}.", block, i))
            layer += 1
    out.append(Tensor("model.norm.weight", ("norm", "weight"), (), None))
    if not cfg.tie_word_embeddings:
        out.append(Tensor("lm_head.weight", ("lm_head",), (), 1))
    return out


def _layer(cfg: ModelConfig, kind: str, prefix: str, block: Path, i: int) -> Iterator[Tensor]:
    yield Tensor(prefix + "input_layernorm.weight", block + ("input_layernorm", "weight"), (i,), None)
    yield Tensor(prefix + "post_attention_layernorm.weight", block + ("post_attention_layernorm", "weight"),
                 (i,), None)
    for name, sub, n_in in _attention(cfg):
        yield Tensor(prefix + "self_attn." + name, block + ("self_attn",) + sub, (i,), n_in)
    mlp = block + ("mlp",)
    if kind == "dense":
        for name, sub, n_in in _MLP:
            yield Tensor(prefix + "mlp." + name, mlp + sub, (i,), n_in)
        return
    yield Tensor(prefix + "mlp.gate.weight", mlp + ("router",), (i,), 1)
    if cfg.is_deepseek:
        yield Tensor(prefix + "mlp.gate.e_score_correction_bias", mlp + ("e_score_correction_bias",), (i,), None)
    for e in range(cfg.n_routed_experts):
        for name, sub, n_in in _MLP:
            yield Tensor(f"{prefix}mlp.experts.{e}.{name}", mlp + sub, (i, e), n_in)
    if cfg.is_deepseek and cfg.n_shared_experts:
        for name, sub, n_in in _MLP:
            yield Tensor(prefix + "mlp.shared_experts." + name, mlp + ("shared_experts",) + sub, (i,), n_in)
