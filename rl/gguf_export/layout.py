"""Which GGUF tensors a checkpoint becomes, in llama.cpp's layout, and how each is cut from the parameters.

Names: every r1jax parameter slot has a Hugging Face name (`model.hf_weights.tensor_map`); llama.cpp's own
name table (`gguf.get_tensor_name_map`, the one its converter uses) turns that into the GGUF name. Data: a
GGUF tensor is made of one or more HF tensors (`parts`), each cut out of its stacked parameter with
`hf_io.host_slot` (a collective on a sharded, multi-host checkpoint) and put in HF's [out, in] layout, then
rearranged as llama.cpp's converter (convert_hf_to_gguf.py and its conversion/deepseek.py) does:
- experts are stacked per layer: `blk.N.ffn_{gate,up,down}_exps` of numpy shape [E, out, in];
- DeepSeek-V3's `kv_b_proj` ([N * (nope + v), kv_lora]) is split per head into `attn_k_b` [N, kv_lora, nope]
  (transposed, for MLA's absorbed attention) and `attn_v_b` [N, v, kv_lora];
- DeepSeek-V3's routing bias `e_score_correction_bias` is `blk.N.exp_probs_b.bias`;
- llama.cpp's deepseek2 rotates adjacent pairs (2i, 2i+1) (ggml's "normal" rope), which is what HF's
  `rope_interleave=True` computes. For `rope_interleave=False` (HF rotates pairs (i, i + d/2)) the rope rows
  of q and of the shared key are permuted so that pair (i, i + d/2) lands on (2i, 2i+1): q . k is unchanged.
Shapes below are numpy's (row-major; the GGUF header stores them reversed, as ggml counts dimensions).
Storage types follow the converter: 1-D tensors, norms, the router (`ffn_gate_inp`) and biases stay F32;
the rest take the export dtype, and a Q8_0 tensor whose rows are not a multiple of 32 falls back to F16.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Mapping

import gguf
import numpy as np

from r1jax.model.config import ModelConfig
from r1jax.model.hf_io import host_slot
from r1jax.model.hf_weights import Tensor, tensor_map

ARCHS = {"deepseek_v3": gguf.MODEL_ARCH.DEEPSEEK2, "qwen3_moe": gguf.MODEL_ARCH.QWEN3MOE}
QTYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
          "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(\w+)\.weight$")
_ALWAYS_F32 = re.compile(r"(_norm\.weight|\.ffn_gate_inp\.weight)$")


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # numpy (row-major) shape of the data written
    qtype: gguf.GGMLQuantizationType
    parts: tuple[Tensor, ...]  # HF tensors, stacked along a new axis 0 when `stacked` (a layer's experts)
    rearrange: Callable[[np.ndarray], np.ndarray]  # the HF array (stacked) -> this tensor's float32 data
    stacked: bool = False  # (a model of one expert stacks one part: [1, out, in])

    @property
    def nbytes(self) -> int:
        if self.qtype == gguf.GGMLQuantizationType.F32:
            return 4 * math.prod(self.shape)
        if self.qtype == gguf.GGMLQuantizationType.F16:
            return 2 * math.prod(self.shape)
        return math.prod(gguf.quant_shape_to_byte_shape(self.shape, self.qtype))


def storage_type(name: str, shape: tuple[int, ...], dtype: str) -> gguf.GGMLQuantizationType:
    """The GGML type llama.cpp's converter gives tensor `name` in an export of `dtype` (module docstring)."""
    if len(shape) <= 1 or _ALWAYS_F32.search(name) or not name.endswith(".weight"):
        return gguf.GGMLQuantizationType.F32
    qtype = QTYPES[dtype]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _rope_pairs(rope: int) -> np.ndarray:
    """Row order putting HF's rotated pair (i, i + rope/2) at (2i, 2i+1)."""
    return np.stack([np.arange(rope // 2), np.arange(rope // 2) + rope // 2], axis=1).reshape(-1)


def _q_rope_rows(cfg: ModelConfig) -> Callable[[np.ndarray], np.ndarray]:
    """q_proj / q_b_proj [N * (nope + rope), in]: permute the rope rows of every head."""
    order = np.concatenate([np.arange(cfg.qk_nope_head_dim), cfg.qk_nope_head_dim + _rope_pairs(cfg.qk_rope_head_dim)])
    return lambda x: np.ascontiguousarray(
        x.reshape(cfg.num_attention_heads, cfg.qk_head_dim, -1)[:, order].reshape(x.shape))


def _kv_a_rope_rows(cfg: ModelConfig) -> Callable[[np.ndarray], np.ndarray]:
    """kv_a_proj_with_mqa [kv_lora + rope, in]: permute the shared key's rope rows."""
    order = np.concatenate([np.arange(cfg.kv_lora_rank), cfg.kv_lora_rank + _rope_pairs(cfg.qk_rope_head_dim)])
    return lambda x: np.ascontiguousarray(x[order])


def _kv_b_split(cfg: ModelConfig):
    """(k_b, v_b) rearrangers of kv_b_proj [N * (nope + v), kv_lora] and their shapes."""
    heads, nope, v, rank = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank

    def k_b(x):
        return np.ascontiguousarray(x.reshape(heads, nope + v, rank)[:, :nope].transpose(0, 2, 1))

    def v_b(x):
        return np.ascontiguousarray(x.reshape(heads, nope + v, rank)[:, nope:])

    return (k_b, (heads, rank, nope)), (v_b, (heads, v, rank))


def plan(cfg: ModelConfig, shapes: Mapping[tuple, tuple[int, ...]], dtype: str) -> list[GGUFTensor]:
    """Every GGUF tensor of `cfg` in write order; `shapes` maps parameter paths to their stacked shapes."""
    names = gguf.get_tensor_name_map(ARCHS[cfg.family], cfg.num_hidden_layers)
    out: list[GGUFTensor] = []
    experts: dict[tuple[str, str], list[Tensor]] = {}

    def add(hf_name: str, shape: tuple[int, ...], parts: tuple[Tensor, ...], rearrange=_same, stacked=False) -> None:
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"llama.cpp has no name for {hf_name}"  # a layout bug, not user input
        out.append(GGUFTensor(name, shape, storage_type(name, shape, dtype), parts, rearrange, stacked))

    for t in tensor_map(cfg):
        shape = t.hf_shape(shapes[t.path][len(t.index):])
        expert = _EXPERT.match(t.hf_name)
        if expert:  # collect a layer's experts; write them stacked once the last one is in
            layer, _, proj = expert.groups()
            group = experts.setdefault((layer, proj), [])
            group.append(t)
            if len(group) == cfg.n_routed_experts:
                add(f"model.layers.{layer}.mlp.experts.{proj}.weight", (len(group), *shape), tuple(group), stacked=True)
        elif t.hf_name.endswith("kv_b_proj.weight"):
            for (rearrange, split_shape), part in zip(_kv_b_split(cfg), ("k_b_proj", "v_b_proj")):
                add(t.hf_name.replace("kv_b_proj", part), split_shape, (t,), rearrange)
        elif t.hf_name.endswith("e_score_correction_bias"):
            add(t.hf_name.replace("e_score_correction_bias", "e_score_correction.bias"), shape, (t,))
        elif cfg.is_deepseek and not cfg.rope_interleave and t.hf_name.endswith(("q_proj.weight", "q_b_proj.weight")):
            add(t.hf_name, shape, (t,), _q_rope_rows(cfg))
        elif cfg.is_deepseek and not cfg.rope_interleave and t.hf_name.endswith("kv_a_proj_with_mqa.weight"):
            add(t.hf_name, shape, (t,), _kv_a_rope_rows(cfg))
        else:
            add(t.hf_name, shape, (t,))
    return out


def tensor_data(entry: GGUFTensor, leaves: Mapping[tuple, object]) -> np.ndarray:
    """The bytes to write for `entry` (gathering its parts; every process must call this)."""
    def part(t: Tensor) -> np.ndarray:
        return t.to_hf(host_slot(leaves[t.path], t.index, "float32"))

    if not entry.stacked:
        data = entry.rearrange(part(entry.parts[0]))
    else:  # filled in place: host memory stays near one GGUF tensor
        data = np.empty(entry.shape, np.float32)
        for i, t in enumerate(entry.parts):
            data[i] = part(t)
        data = entry.rearrange(data)
    assert data.shape == entry.shape, (entry.name, data.shape, entry.shape)
    return gguf.quants.quantize(data, entry.qtype)
