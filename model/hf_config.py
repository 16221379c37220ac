"""ModelConfig <-> Hugging Face `config.json`, both directions, without importing transformers.

Export writes the keys `DeepseekV3Config` / `Qwen3MoeConfig` of transformers 5 read, plus the legacy ones
older readers use (`rope_theta` beside `rope_parameters`, `torch_dtype` beside `dtype`, DeepSeek's
`scoring_func` / `topk_method`). Import reads a hub config: a key it lacks takes transformers' class default
(the table below), never r1jax's. Every HF setting r1jax does not implement (rope scaling such as yarn,
sliding windows, attention dropout, an activation other than silu, quantised weights, another routing
function) is collected and reported in one UserError. Multi-token-prediction layers
(`num_nextn_predict_layers` > 0) are ignored by transformers too, so they are accepted with a note.

A config.json states the architecture (`architecture_fields` of its family) and the dtype its weights are
stored in (`stored_dtype`, import's `param_dtype`); the other ModelConfig fields (`R1JAX_FIELDS`: compute
dtype, MoE kernel, remat, ...) are r1jax's own and keep their defaults on import.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from r1jax.model.config import ModelConfig
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


def architecture_fields(family: str) -> tuple[str, ...]:
    """The ModelConfig fields a config.json of `family` sets (those the other family reads are not among them)."""
    return ("family", "rope_theta", "n_routed_experts", *_COMMON,
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
               rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
               bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
               dtype=dtype, torch_dtype=dtype, use_cache=True)
    return out


def generation_config(bos_token_id: int | None = None, eos_token_id: int | None = None,
                      pad_token_id: int | None = None) -> dict[str, Any]:
    """`generation_config.json`: the special ids (greedy by default, as `save_pretrained` writes it)."""
    ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    return {"_from_model_config": True, **{k: v for k, v in ids.items() if v is not None}}


# ---------------------------------------------------------------------------------------------- import


def from_hf_config(hf: Mapping[str, Any], source: str = "config.json") -> tuple[ModelConfig, list[str]]:
    """(ModelConfig, notes) for a hub config; UserError listing every unsupported setting.

    param_dtype is the dtype the weights are stored in (`stored_dtype`); the other r1jax-only fields
    (compute_dtype, moe_impl, ...) keep their defaults.
    """
    family = _family(hf, source)
    problems = _unsupported(hf, family)
    if problems:
        raise UserError(f"{source}: settings r1jax does not implement: " + "; ".join(problems))
    fields = _fields(hf, family)
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


def _get(hf: Mapping[str, Any], family: str, key: str, *aliases: str):
    for name in (key, *aliases):
        if name in hf:
            return hf[name]
    return HF_DEFAULTS[family].get(key)


def _fields(hf: Mapping[str, Any], family: str) -> dict[str, Any]:
    fields: dict[str, Any] = {"family": family, "rope_theta": float(_rope_theta(hf)),
                              "param_dtype": stored_dtype(hf)}
    for key in _COMMON:
        fields[key] = _get(hf, family, key)
    if family == "deepseek_v3":
        for key in _DEEPSEEK:
            fields[key] = _get(hf, family, key, *(("num_local_experts",) if key == "n_routed_experts" else ()))
        for key, none_means in (("n_group", 1), ("topk_group", 1), ("first_k_dense_replace", 0)):
            fields[key] = none_means if fields[key] is None else fields[key]
    else:
        fields["n_routed_experts"] = _get(hf, family, "n_routed_experts", "num_experts", "num_local_experts")
        fields["num_key_value_heads"] = _get(hf, family, "num_key_value_heads")
        fields["head_dim"] = hf.get("head_dim") or fields["hidden_size"] // fields["num_attention_heads"]
        fields["mlp_only_layers"] = tuple(_get(hf, family, "mlp_only_layers") or ())
        fields["decoder_sparse_step"] = _get(hf, family, "decoder_sparse_step")
    return fields


def stored_dtype(hf: Mapping[str, Any]) -> str:
    """The r1jax dtype that holds the checkpoint's weights exactly: bfloat16 for a bfloat16 checkpoint
    (`dtype`, or the legacy `torch_dtype`), else float32 (float16 widens exactly; r1jax has no float16)."""
    return "bfloat16" if (hf.get("dtype") or hf.get("torch_dtype")) == "bfloat16" else "float32"


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
    if rope["rope_type"] != "default":
        problems.append(f"rope scaling {rope['rope_type']!r} (rope_scaling/rope_parameters); only the "
                        "default rotary embedding is implemented")
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) not in (1, 1.0, None):
        problems.append("partial_rotary_factor != 1")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (only 'silu')")
    if hf.get("attention_dropout") not in (None, 0, 0.0):
        problems.append(f"attention_dropout={hf['attention_dropout']!r} (only 0)")
    if hf.get("quantization_config"):
        problems.append(f"quantization_config ({hf['quantization_config'].get('quant_method', '?')}); import "
                        "dequantised bfloat16/float32 weights")
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


def _notes(hf: Mapping[str, Any]) -> list[str]:
    mtp = mtp_layers(hf)
    if mtp:
        return [f"num_nextn_predict_layers={mtp}: the multi-token-prediction layers are ignored (as "
                "transformers does); their tensors are skipped"]
    return []


def mtp_layers(hf: Mapping[str, Any]) -> int:
    """How many multi-token-prediction layers follow the decoder in the checkpoint (DeepSeek-V3)."""
    return int(hf.get("num_nextn_predict_layers", hf.get("num_mtp_layers", 0)) or 0)


def model_fields(cfg: ModelConfig) -> dict[str, Any]:
    """`cfg` as plain data (tuples as lists), for merging into a run config."""
    fields = dataclasses.asdict(cfg)
    fields["mlp_only_layers"] = list(cfg.mlp_only_layers)
    return fields
