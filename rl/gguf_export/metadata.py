"""The architecture metadata of a GGUF file: every key llama.cpp's loader reads for `deepseek2` and
`qwen3moe` (src/models/deepseek2.cpp, src/models/qwen3moe.cpp and `llama_model::load_hparams`), written
explicitly, never left to llama.cpp's defaults (its deepseek2 loader falls back to softmax gating when the
gating key is absent).

Both families: context_length (max_position_embeddings), embedding_length, block_count,
feed_forward_length (the dense MLP width), attention.head_count, attention.head_count_kv,
attention.key_length / value_length, attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count,
rope.scaling.type (none, or yarn with rope.scaling.factor, original_context_length, yarn_beta_fast /
yarn_beta_slow, and for deepseek2 yarn_log_multiplier = 0.1 x mscale_all_dim, from which llama.cpp scales the
MLA softmax by mscale^2 as transformers does), expert_count, expert_used_count, expert_feed_forward_length,
expert_weights_norm (norm_topk_prob), expert_weights_scale, expert_gating_func (sigmoid for DeepSeek-V3,
softmax for Qwen3-MoE), expert_group_count / expert_group_used_count (0 / 0 for Qwen3-MoE: no groups),
vocab_size, general.file_type.
deepseek2 adds: leading_dense_block_count (first_k_dense_replace), attention.q_lora_rank / kv_lora_rank,
head_count_kv = 1 with key_length = kv_lora + rope and value_length = kv_lora (MLA stored as one shared
latent, the layout of llama.cpp's converter), key_length_mla = nope + rope and value_length_mla = v_head_dim
(the per-head sizes after decompression), expert_shared_count.

Group-limited routing: llama.cpp asserts expert_group_used_count < expert_group_count when there is more
than one group. With topk_group == n_group every group is kept, which is routing without groups, so that
case is written as one group of all experts (count 1, used 1): the same selection.

`unsupported(cfg)` lists what llama.cpp cannot run as r1jax does; the export refuses such a model. Under YaRN
llama.cpp scales cos and sin by 0.1 ln(factor) + 1 (qwen3moe) or 1 (deepseek2): a config whose mscales or
attention factor give another scale is refused (DeepSeek-V3's released mscale = mscale_all_dim = 1 gives 1).
llama.cpp's deepseek2 loader (`llama_model_deepseek2::load_arch_hparams`) takes a model for "lite"
(DeepSeek-V2-Lite and kin: no q LoRA) by its shape alone: 26 or 27 layers, or 48 layers with a vocabulary
(deepseek2.vocab_size) of 128256. It reads attention.q_lora_rank only for the others, and then looks for
blk.N.attn_q_a / attn_q_b, else for blk.N.attn_q (what the export writes when q_lora_rank is null), so
q_lora_rank must be set exactly when the model is not lite.
"""

from __future__ import annotations

import math

import gguf

from r1jax.model.attention import MLA_NORM_EPS
from r1jax.model.config import ModelConfig
from r1jax.model.rope import cos_sin_scale, yarn_mscale
from r1jax.rl.gguf_export.layout import FILE_TYPES

_LITE_LAYERS = (26, 27)  # deepseek2 models llama.cpp loads without q_lora_rank (DeepSeek-V2-Lite and kin) ...
_LITE_LAYERS_VOCAB = (48, 128256)  # ... and this layer count with this vocabulary (Kanana-2-30B-A3B)


def llama_cpp_lite(cfg: ModelConfig) -> bool:
    """Whether llama.cpp's deepseek2 takes `cfg` for a lite model: it then reads no attention.q_lora_rank."""
    return cfg.num_hidden_layers in _LITE_LAYERS or (cfg.num_hidden_layers, cfg.vocab_size) == _LITE_LAYERS_VOCAB


_LITE_RULE = (f"llama.cpp's deepseek2 reads attention.q_lora_rank unless the model has "
              f"{' or '.join(map(str, _LITE_LAYERS))} layers, or {_LITE_LAYERS_VOCAB[0]} layers with vocab_size "
              f"{_LITE_LAYERS_VOCAB[1]} (a lite model, as DeepSeek-V2-Lite, whose q projection is one attn_q)")


def unsupported(cfg: ModelConfig) -> list[str]:
    """Reasons llama.cpp's architecture for `cfg.family` would not compute what r1jax computes."""
    problems = []
    if cfg.rope_type == "yarn":  # llama.cpp fixes the cos/sin scale (its ggml_rope_ext mscale) per architecture
        wanted = 1.0 if cfg.is_deepseek else yarn_mscale(cfg.rope_factor)
        if not math.isclose(cos_sin_scale(cfg), wanted, rel_tol=1e-6):
            architecture = "deepseek2" if cfg.is_deepseek else "qwen3moe"
            problems.append(f"YaRN with cos and sin scaled by {cos_sin_scale(cfg):.6g} (rope_mscale, "
                            f"rope_mscale_all_dim, rope_attention_factor); llama.cpp's {architecture} "
                            f"scales them by {wanted:.6g}")
        if not cfg.rope_truncate:  # logits 1.3-2.0 apart on tiny models with it written anyway
            problems.append("YaRN with rope truncate=false (its correction range unrounded); llama.cpp always "
                            "rounds it (floor / ceil)")
    if cfg.attention_bias:
        problems.append("attention_bias=true (llama.cpp's deepseek2 / qwen3moe have no attention biases)")
    if cfg.is_deepseek:
        lite = llama_cpp_lite(cfg)
        if cfg.q_lora_rank is None and not lite:
            problems.append(f"q_lora_rank=null with num_hidden_layers={cfg.num_hidden_layers}, "
                            f"vocab_size={cfg.vocab_size} ({_LITE_RULE})")
        elif cfg.q_lora_rank is not None and lite:
            problems.append(f"q_lora_rank={cfg.q_lora_rank} with num_hidden_layers={cfg.num_hidden_layers}, "
                            f"vocab_size={cfg.vocab_size} ({_LITE_RULE}; it would ignore the q LoRA and look for "
                            "blk.N.attn_q.weight)")
        if cfg.n_shared_experts < 1:
            problems.append("n_shared_experts=0 (llama.cpp's deepseek2 requires shared-expert tensors)")
        if cfg.rms_norm_eps != MLA_NORM_EPS:
            problems.append(f"rms_norm_eps={cfg.rms_norm_eps} (llama.cpp's deepseek2 applies it to the MLA q_a / kv_a "
                            f"norms, which transformers and r1jax compute with {MLA_NORM_EPS})")
    else:
        dense = [i for i in range(cfg.num_hidden_layers) if not cfg.layer_is_moe(i)]
        if dense:
            problems.append(f"dense layers {dense} (mlp_only_layers / decoder_sparse_step): llama.cpp's qwen3moe "
                            "makes every layer a MoE layer")
        if not cfg.norm_topk_prob:
            problems.append("norm_topk_prob=false (llama.cpp's qwen3moe always renormalises the top-k weights)")
    return problems


def write_architecture(writer: gguf.GGUFWriter, cfg: ModelConfig, dtype: str) -> None:
    """All architecture keys of `cfg` (module docstring); `dtype` is the export's (f32 | f16 | bf16 | q8_0)."""
    writer.add_file_type(FILE_TYPES[dtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)  # as llama.cpp's converter and quantizer write it
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    _rope_scaling(writer, cfg)
    writer.add_expert_count(cfg.n_routed_experts)
    writer.add_expert_used_count(cfg.num_experts_per_tok)
    writer.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    writer.add_expert_weights_norm(cfg.norm_topk_prob)
    if cfg.is_deepseek:
        _deepseek(writer, cfg)
    else:
        _qwen(writer, cfg)


def _rope_scaling(writer: gguf.GGUFWriter, cfg: ModelConfig) -> None:
    """The rotary scaling as llama.cpp's converter states it: YaRN's factor, original context and betas; for
    deepseek2 the MLA mscale's log multiplier (0.1 x mscale_all_dim), from which llama.cpp scales the softmax."""
    if cfg.rope_type == "default":
        writer.add_rope_scaling_type(gguf.RopeScalingType.NONE)
        return
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(cfg.rope_factor)
    writer.add_rope_scaling_orig_ctx_len(cfg.rope_original_max_position_embeddings)
    writer.add_rope_scaling_yarn_beta_fast(cfg.rope_beta_fast)
    writer.add_rope_scaling_yarn_beta_slow(cfg.rope_beta_slow)
    if cfg.is_deepseek:
        writer.add_rope_scaling_yarn_log_mul(0.1 * cfg.rope_mscale_all_dim)


def _deepseek(writer: gguf.GGUFWriter, cfg: ModelConfig) -> None:
    writer.add_leading_dense_block_count(cfg.first_k_dense_replace)
    if cfg.q_lora_rank is not None:
        writer.add_q_lora_rank(cfg.q_lora_rank)
    writer.add_kv_lora_rank(cfg.kv_lora_rank)
    writer.add_head_count_kv(1)
    writer.add_key_length(cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    writer.add_value_length(cfg.kv_lora_rank)
    writer.add_key_length_mla(cfg.qk_head_dim)
    writer.add_value_length_mla(cfg.v_head_dim)
    writer.add_rope_dimension_count(cfg.qk_rope_head_dim)
    writer.add_expert_shared_count(cfg.n_shared_experts)
    writer.add_expert_weights_scale(cfg.routed_scaling_factor)
    writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    groups, used = (cfg.n_group, cfg.topk_group) if cfg.topk_group < cfg.n_group else (1, 1)
    writer.add_expert_group_count(groups)
    writer.add_expert_group_used_count(used)


def _qwen(writer: gguf.GGUFWriter, cfg: ModelConfig) -> None:
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_expert_shared_count(0)
    writer.add_expert_weights_scale(1.0)
    writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
    writer.add_expert_group_count(0)  # no expert groups (llama.cpp's value for ungrouped routing)
    writer.add_expert_group_used_count(0)
