"""ModelConfig <-> Hugging Face `config.json`, both directions, without importing transformers.

Export writes the keys `DeepseekV3Config` / `Qwen3MoeConfig` of transformers 5 read, plus the legacy ones
older readers use (`rope_theta` beside `rope_parameters`, `torch_dtype` beside `dtype`, DeepSeek's
`scoring_func` / `topk_method`). Import reads a hub config: a key it lacks takes transformers' class default
(the table below), never r1jax's. Every HF setting r1jax does not implement (rope scaling other than yarn,
sliding windows, attention dropout, an activation other than silu, quantised weights, another routing
function) is collected and reported in one UserError. Multi-token-prediction layers
(`num_nextn_predict_layers` > 0) are ignored by transformers too, so they are accepted with a note. A config
that is not a JSON object, or a key r1jax reads whose value is of the wrong type (`"hidden_size": "2048"`),
is a UserError naming the file and the keys, as transformers' strict config classes refuse them; so is a
`dtype` / `torch_dtype` naming no float type r1jax imports (`stored_dtype`: float32, bfloat16, float16, float64).

A config.json states the architecture (`architecture_fields` of its family) and the dtype its weights are
stored in (`stored_dtype`, import's `param_dtype`); the other ModelConfig fields (`R1JAX_FIELDS`: compute
dtype, MoE kernel, remat, ...) are r1jax's own and keep their defaults on import.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Mapping, Optional

from r1jax.model.config import ModelConfig
from r1jax.model.rope import ROPE_TYPES
from r1jax.errors import UserError

ARCHITECTURES = {"deepseek_v3": "DeepseekV3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}
DEFAULT_THETA = 10000.0  # transformers' default_theta when a config names none

_COMMON = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
           "num_attention_heads", "num_experts_per_tok", "norm_topk_prob", "rms_norm_eps",
           "max_position_embeddings", "tie_word_embeddings", "attention_bias", "initializer_range")
_DEEPSEEK = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
             "rope_interleave", "n_routed_experts", "n_shared_experts", "routed_scaling_factor", "n_group",
             "topk_group", "first_k_dense_replace")
_QWEN = ("num_key_value_heads", "head_dim", "mlp_only_layers", "decoder_sparse_step")


# ModelConfig's rotary scaling fields and their keys in HF's rope_parameters (legacy: rope_scaling)
_ROPE_KEYS = {"rope_factor": "factor", "rope_original_max_position_embeddings": "original_max_position_embeddings",
              "rope_beta_fast": "beta_fast", "rope_beta_slow": "beta_slow", "rope_mscale": "mscale",
              "rope_mscale_all_dim": "mscale_all_dim", "rope_attention_factor": "attention_factor",
              "rope_truncate": "truncate"}


def architecture_fields(family: str) -> tuple[str, ...]:
    """The ModelConfig fields a config.json of `family` sets (those the other family reads are not among them)."""
    return ("family", "rope_theta", "rope_type", *_ROPE_KEYS, "n_routed_experts", *_COMMON,
            *(_DEEPSEEK if family == "deepseek_v3" else _QWEN))


# ModelConfig fields no config.json carries: how r1jax stores and runs the model, not what the model is
R1JAX_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig)
                     if f.name not in {*architecture_fields("deepseek_v3"), *architecture_fields("qwen3_moe")})

# transformers 5 class defaults for the keys r1jax reads (DeepseekV3Config, Qwen3MoeConfig).
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "deepseek_v3": dict(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, n_shared_experts=1, n_routed_experts=256,
        routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
        qk_nope_head_dim=128, n_group=8, topk_group=4, num_experts_per_tok=8, first_k_dense_replace=3,
        norm_topk_prob=True, max_position_embeddings=4096, initializer_range=0.02, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_interleave=True, attention_bias=False),
    "qwen3_moe": dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
        num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=32768, initializer_range=0.02,
        rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False, decoder_sparse_step=1,
        moe_intermediate_size=768, num_experts_per_tok=8, n_routed_experts=128, norm_topk_prob=False,
        mlp_only_layers=[]),
}


# ---------------------------------------------------------------------------------------------- export


def to_hf_config(cfg: ModelConfig, dtype: str = "float32", bos_token_id: int | None = None,
                 eos_token_id: int | None = None, pad_token_id: int | None = None) -> dict[str, Any]:
    """The `config.json` dict for `cfg`, with weights stored in `dtype` ("float32" | "bfloat16")."""
    out: dict[str, Any] = {"architectures": [ARCHITECTURES[cfg.family]], "model_type": cfg.family}
    out.update({k: getattr(cfg, k) for k in _COMMON})
    if cfg.is_deepseek:
        out.update({k: getattr(cfg, k) for k in _DEEPSEEK})
        out.update(num_key_value_heads=cfg.num_attention_heads, num_nextn_predict_layers=0,
                   scoring_func="sigmoid", topk_method="noaux_tc", moe_layer_freq=1)
    else:
        out.update({k: getattr(cfg, k) for k in _QWEN})
        out.update(num_experts=cfg.n_routed_experts, mlp_only_layers=list(cfg.mlp_only_layers),
                   use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_hidden_layers)
    out.update(hidden_act="silu", attention_dropout=0.0, rope_theta=cfg.rope_theta,
               rope_parameters={"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta, **_rope_scaling(cfg)},
               bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
               dtype=dtype, torch_dtype=dtype, use_cache=True)
    if cfg.rope_type != "default":  # the legacy key too (transformers 4, llama.cpp's converter read it)
        out["rope_scaling"] = {"type": cfg.rope_type, "rope_type": cfg.rope_type, **_rope_scaling(cfg)}
    return out


def _rope_scaling(cfg: ModelConfig) -> dict[str, Any]:
    """The rope_parameters keys of `cfg`'s rotary scaling (none for the default embedding; unset mscales and
    attention factor left out, as transformers reads a missing key)."""
    if cfg.rope_type == "default":
        return {}
    keys = {hf_key: getattr(cfg, field) for field, hf_key in _ROPE_KEYS.items()}
    return {k: v for k, v in keys.items() if v not in (None, 0.0) or k == "truncate"}


def generation_config(bos_token_id: int | None = None, eos_token_id: int | None = None,
                      pad_token_id: int | None = None) -> dict[str, Any]:
    """`generation_config.json`: the special ids (greedy by default, as `save_pretrained` writes it)."""
    ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    return {"_from_model_config": True, **{k: v for k, v in ids.items() if v is not None}}


# ---------------------------------------------------------------------------------------------- import


def from_hf_config(hf: Mapping[str, Any], source: str = "config.json") -> tuple[ModelConfig, list[str]]:
    """(ModelConfig, notes) for a hub config; UserError listing every unsupported setting, or naming the keys
    whose values are of the wrong type (as transformers' strict config classes refuse them).

    param_dtype is the dtype the weights are stored in (`stored_dtype`); the other r1jax-only fields
    (compute_dtype, moe_impl, ...) keep their defaults.
    """
    if not isinstance(hf, Mapping):
        raise UserError(f"{source}: expected a JSON object ({{...}}), found a {type(hf).__name__}")
    _check_types(_settings(hf), source)
    family = _family(hf, source)
    problems = _unsupported(hf, family)
    if problems:
        raise UserError(f"{source}: settings r1jax does not implement: " + "; ".join(problems))
    fields = _fields(hf, family, source)
    try:
        cfg = ModelConfig(**fields)
    except UserError as err:
        raise UserError(f"{source}: {err}") from err
    return cfg, _notes(hf)


def _family(hf: Mapping[str, Any], source: str) -> str:
    archs = list(hf.get("architectures") or [])
    model_type = hf.get("model_type")
    families = [f for f, arch in ARCHITECTURES.items() if arch in archs or (not archs and model_type == f)]
    supported = ", ".join(f"{arch} (model_type {f!r})" for f, arch in ARCHITECTURES.items())
    if len(families) != 1 or (model_type is not None and model_type != families[0]):
        raise UserError(f"{source}: unsupported architecture (architectures={archs}, model_type="
                        f"{model_type!r}); r1jax imports {supported}")
    return families[0]


# the config.json keys that give n_routed_experts, in the order transformers resolves them: its attribute_map's
# alias is set after the field, so it wins when both are given; Qwen3MoeConfig reads no `n_routed_experts`
_EXPERT_KEYS = {"deepseek_v3": ("num_local_experts", "n_routed_experts"),
                "qwen3_moe": ("num_local_experts", "num_experts")}


def _lookup(hf: Mapping[str, Any], family: str, key: str) -> tuple[str, Any]:
    """(the config.json key that gives `key`, its value); a key it lacks takes transformers' default."""
    for name in _EXPERT_KEYS[family] if key == "n_routed_experts" else (key,):
        if name in hf:
            return name, hf[name]
    return key, HF_DEFAULTS[family].get(key)


# the keys that size or place a tensor: one a config.json lacks takes transformers' default, which a checkpoint's
# tensors then contradict (a missing hidden_size reads 2048 and every tensor is named of the wrong shape)
_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
          "num_attention_heads", "n_routed_experts", "tie_word_embeddings", "attention_bias", "q_lora_rank",
          "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_shared_experts",
          "first_k_dense_replace", "num_key_value_heads", "mlp_only_layers", "decoder_sparse_step")


def defaulted_sizes(hf: Mapping[str, Any], family: str) -> dict[str, str]:
    """{ModelConfig field: 'key (transformers' default value)'} for each tensor-sizing key the config.json does
    not state."""
    keys = [key for key in _SIZES if key in HF_DEFAULTS[family] and _lookup(hf, family, key)[0] not in hf]
    return {key: f"{' or '.join(reversed(_EXPERT_KEYS[family])) if key == 'n_routed_experts' else key} "
                 f"(transformers' default {json.dumps(HF_DEFAULTS[family][key])})" for key in keys}


def _get(hf: Mapping[str, Any], family: str, key: str):
    return _lookup(hf, family, key)[1]


def _fields(hf: Mapping[str, Any], family: str, source: str) -> dict[str, Any]:
    deepseek = family == "deepseek_v3"
    found = {"rope_theta": ("rope_theta", _rope_theta(hf))}
    for key in dict.fromkeys(("n_routed_experts", *_COMMON, *(_DEEPSEEK if deepseek else _QWEN))):
        found[key] = _lookup(hf, family, key)
    # null means: DeepSeek's routing without groups, no dense layers; Qwen's head_dim = D / N, no dense layers
    none_means = {"n_group": 1, "topk_group": 1, "first_k_dense_replace": 0, "mlp_only_layers": ()}
    found = {k: (name, none_means[k] if value is None and k in none_means else value)
             for k, (name, value) in found.items()}
    if not deepseek and not found["head_dim"][1]:
        found.pop("head_dim")
    _check_types({name: (value, _HINTS[key]) for key, (name, value) in found.items()}, source)
    fields = {key: value for key, (_, value) in found.items()}
    fields.update(family=family, rope_theta=float(fields["rope_theta"]), param_dtype=stored_dtype(hf, source))
    fields.update(_rope_fields(hf, fields["max_position_embeddings"], source))
    if not deepseek:
        if "head_dim" not in fields and fields["num_attention_heads"] > 0:  # else ModelConfig names the count
            fields["head_dim"] = fields["hidden_size"] // fields["num_attention_heads"]
        fields["mlp_only_layers"] = tuple(fields["mlp_only_layers"])
    return fields


def _rope_fields(hf: Mapping[str, Any], max_positions: int, source: str) -> dict[str, Any]:
    """ModelConfig's rotary scaling fields from rope_scaling / rope_parameters, read as transformers reads them:
    a missing or null factor is max_position_embeddings / original_max_position_embeddings, missing or null
    betas are 32 and 1, missing mscales unset, truncate true."""
    rope = _rope(hf)
    if rope["rope_type"] == "default":
        return {"rope_type": "default"}
    kinds = {"factor": Optional[float], "original_max_position_embeddings": _COUNT, "beta_fast": Optional[float],
             "beta_slow": Optional[float], "mscale": Optional[float], "mscale_all_dim": Optional[float],
             "attention_factor": Optional[float], "truncate": Optional[bool]}
    _check_types({f"rope_parameters.{k}": (rope[k], kind) for k, kind in kinds.items() if k in rope}, source)
    original = rope.get("original_max_position_embeddings")
    factor = rope.get("factor")
    if factor is None and original:
        factor = max_positions / original
    defaults = {"factor": 1.0, "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.0, "mscale_all_dim": 0.0,
                "truncate": True}
    given = {**{k: rope.get(k) for k in kinds}, "factor": factor}
    fields = {field: given[key] if given[key] is not None else defaults.get(key)
              for field, key in _ROPE_KEYS.items()}
    for field in ("rope_factor", "rope_beta_fast", "rope_beta_slow", "rope_mscale", "rope_mscale_all_dim"):
        fields[field] = float(fields[field])
    return {"rope_type": rope["rope_type"], **fields}


# ---------------------------------------------------------------------------------------------- value types

_HINTS = typing.get_type_hints(ModelConfig)
_OBJECT, _COUNT = Optional[Mapping], Optional[int]  # the other settings r1jax reads (`_settings`)


def _settings(hf: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (value, type)} of the config.json keys other than ModelConfig's that r1jax reads (when given)."""
    kinds = {"rope_scaling": _OBJECT, "rope_parameters": _OBJECT, "quantization_config": _OBJECT,
             "num_nextn_predict_layers": _COUNT, "num_mtp_layers": _COUNT, "architectures": Optional[list]}
    return {key: (hf[key], kind) for key, kind in kinds.items() if key in hf}


def _check_types(values: Mapping[str, tuple[Any, Any]], source: str) -> None:
    """UserError naming every key whose value is not of its type ({key: (value, type)})."""
    wrong = [f"{key} is {json.dumps(value, default=repr)} (expected {_describe(kind)})"
             for key, (value, kind) in values.items() if not _accepts(kind, value)]
    if wrong:
        raise UserError(f"{source}: values of the wrong type: " + "; ".join(wrong))


def _accepts(kind, value) -> bool:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_accepts(k, value) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if typing.get_origin(kind) is tuple:  # tuple[int, ...]: a JSON list of integers
        return isinstance(value, (list, tuple)) and all(_accepts(int, v) for v in value)
    if kind is float:  # JSON writes 1.0 as 1
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(kind) or kind)


def _describe(kind) -> str:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_describe(k) for k in typing.get_args(kind))
    names = {type(None): "null", int: "an integer", float: "a number", bool: "true or false", str: "a string",
             list: "a list", Mapping: "an object"}
    return "a list of integers" if typing.get_origin(kind) is tuple else names[kind]


# config.json's dtype (a torch dtype name) -> the r1jax dtype its weights import in: float16 widens to float32
# exactly (r1jax has no float16); float64, which transformers loads as it is, is rounded to float32 (a note says so);
# an fp8 checkpoint's config may name its fp8 type (transformers takes any torch dtype): its block-wise fp8 weights
# are dequantised, and its other tensors, stored wider, kept, in float32, as before 2026-12-06
_STORED_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float32", "float64": "float32",
                  "float8_e4m3fn": "float32", "float8_e5m2": "float32"}


def _dtype_key(hf: Mapping[str, Any]) -> str:
    """The key that names the weights' dtype: `dtype`, else the legacy `torch_dtype` (transformers keeps `dtype`
    when both are given)."""
    return "dtype" if hf.get("dtype") is not None else "torch_dtype"


def stored_dtype(hf: Mapping[str, Any], source: str = "config.json") -> str:
    """The r1jax dtype that holds the checkpoint's weights (`_STORED_DTYPES`; float32 when config.json names
    none); UserError naming `source` and the key when it names a dtype r1jax does not know, or no string."""
    key = _dtype_key(hf)
    value = hf.get(key)
    if value is None:
        return "float32"
    if not isinstance(value, str) or value not in _STORED_DTYPES:
        accepted = ", ".join(f'"{name}"' for name in _STORED_DTYPES)
        raise UserError(f"{source}: {key} is {json.dumps(value, default=repr)} (expected one of {accepted} or null: "
                        "the dtype the weights are stored in)")
    return _STORED_DTYPES[value]


def _rope(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The rope settings in transformers 5 form: `rope_scaling` (legacy) wins over `rope_parameters`."""
    rope = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    rope.setdefault("rope_type", rope.get("type", "default"))
    return rope


def _rope_theta(hf: Mapping[str, Any]) -> float:
    return _rope(hf).get("rope_theta", hf.get("rope_theta", DEFAULT_THETA))


def _unsupported(hf: Mapping[str, Any], family: str) -> list[str]:
    """Human-readable reasons, one per HF setting whose semantics r1jax does not implement."""
    problems = []
    rope = _rope(hf)
    if rope["rope_type"] not in ROPE_TYPES:
        problems.append(f"rope scaling {rope['rope_type']!r} (rope_scaling/rope_parameters); r1jax implements "
                        + " and ".join(ROPE_TYPES))
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) not in (1, 1.0, None):
        problems.append("partial_rotary_factor != 1")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (only 'silu')")
    if hf.get("attention_dropout") not in (None, 0, 0.0):
        problems.append(f"attention_dropout={hf['attention_dropout']!r} (only 0)")
    quant = hf.get("quantization_config")
    if quant and not is_block_fp8(quant):
        problems.append(f"quantization_config ({quant.get('quant_method', '?')}, {quant.get('fmt', '?')}); r1jax "
                        "dequantises block-wise fp8 e4m3 weights (quant_method fp8, weight_block_size [rows, "
                        "columns]); import dequantised bfloat16/float32 weights otherwise")
    problems += _unsupported_deepseek(hf) if family == "deepseek_v3" else _unsupported_qwen(hf)
    return problems


def _unsupported_deepseek(hf: Mapping[str, Any]) -> list[str]:
    problems = []
    kv, heads = hf.get("num_key_value_heads"), _get(hf, "deepseek_v3", "num_attention_heads")
    if kv not in (None, heads):
        problems.append(f"num_key_value_heads={kv} != num_attention_heads={heads} (MLA uses one per head)")
    if hf.get("scoring_func", "sigmoid") != "sigmoid":
        problems.append(f"scoring_func={hf['scoring_func']!r} (only 'sigmoid')")
    if hf.get("topk_method", "noaux_tc") != "noaux_tc":
        problems.append(f"topk_method={hf['topk_method']!r} (only 'noaux_tc')")
    if hf.get("moe_layer_freq", 1) != 1:
        problems.append(f"moe_layer_freq={hf['moe_layer_freq']!r} (only 1)")
    return problems


def _unsupported_qwen(hf: Mapping[str, Any]) -> list[str]:
    if hf.get("use_sliding_window"):
        return [f"use_sliding_window=true (sliding_window={hf.get('sliding_window')}); r1jax attends to the "
                "full context"]
    return []


def is_block_fp8(quant: Mapping[str, Any]) -> bool:
    """`quantization_config` describes block-wise fp8 e4m3 weights (DeepSeek-V3's release; model.hf_checkpoint
    dequantises them)."""
    block = quant.get("weight_block_size")
    return (quant.get("quant_method") == "fp8" and quant.get("fmt", "e4m3") == "e4m3" and isinstance(block, list)
            and len(block) == 2 and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block))


def _notes(hf: Mapping[str, Any]) -> list[str]:
    notes = []
    mtp = mtp_layers(hf)
    if mtp:
        notes.append(f"num_nextn_predict_layers={mtp}: the multi-token-prediction layers are ignored (as "
                     "transformers does); their tensors are skipped")
    if hf.get(_dtype_key(hf)) == "float64":
        notes.append(f"{_dtype_key(hf)} float64: the weights are rounded to float32 on import (r1jax keeps no "
                     "float64 parameters; transformers loads them in float64)")
    if hf.get("quantization_config"):
        notes.append(f"block-wise fp8 weights: dequantised on import to {stored_dtype(hf)} (an export writes "
                     f"them so, not in fp8)")
    return notes


def mtp_layers(hf: Mapping[str, Any]) -> int:
    """How many multi-token-prediction layers follow the decoder in the checkpoint (DeepSeek-V3)."""
    return int(hf.get("num_nextn_predict_layers", hf.get("num_mtp_layers", 0)) or 0)
