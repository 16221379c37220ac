"""The policy's architecture config: one typed, frozen dataclass for both families.

Field names follow Hugging Face's `DeepseekV3Config` and `Qwen3MoeConfig` so that conversion is a renaming,
not a translation. Fields that only one family reads are ignored (and not validated) for the other.
Validation happens on construction and names the offending key as `model.<field>`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from r1jax.errors import UserError
from r1jax.model.rope import ROPE_TYPES

FAMILIES = ("deepseek_v3", "qwen3_moe")
DTYPES = ("float32", "bfloat16")
MOE_IMPLS = ("auto", "ragged", "blocked", "blocked_autodiff")  # the kernels of model.dispatch
DECODE_ATTENTIONS = ("auto", "pallas", "xla")  # the block-wise decode reads of model.attention

# Upper bounds of the sizes: 16 x (or more than) the largest of published models (Gemma 3's vocabulary of 262,144;
# Llama 3.1 405B's hidden size 16,384, 126 layers and 128 heads; its MLP width 53,248; Qwen3-Next's 512
# experts, Qwen3's 10 per token; head dims <= 256; Kimi K2 and DeepSeek-V3's MLA ranks <= 1,536), and low enough
# that every array's shape and element count fit the device's int32/int64 indexing (a hidden size of 1e20 or a
# vocabulary of 2^63 failed inside XLA; 10^8 layers took minutes before any check).
MAX_SIZES = {
    "vocab_size": 1 << 22, "hidden_size": 1 << 18, "intermediate_size": 1 << 20, "moe_intermediate_size": 1 << 20,
    "num_hidden_layers": 2048, "num_attention_heads": 2048, "num_key_value_heads": 2048, "head_dim": 4096,
    "q_lora_rank": 1 << 15, "kv_lora_rank": 1 << 15, "qk_nope_head_dim": 4096, "qk_rope_head_dim": 4096,
    "v_head_dim": 4096, "n_routed_experts": 8192, "num_experts_per_tok": 8192, "n_shared_experts": 8192,
    "n_group": 8192, "topk_group": 8192, "first_k_dense_replace": 2048, "decoder_sparse_step": 2048,
    "moe_block_size": 1 << 16, "max_position_embeddings": (1 << 31) - 1,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str = "qwen3_moe"
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128  # width of the dense (non-MoE) MLP layers
    moe_intermediate_size: int = 32  # width of one routed (and one shared) expert
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # qwen3_moe GQA; deepseek_v3 attends with one latent per token
    head_dim: int = 16  # qwen3_moe
    # Multi-head latent attention (deepseek_v3).
    q_lora_rank: Optional[int] = None  # None: a plain q_proj, as DeepSeek-V2-Lite
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    rope_interleave: bool = True
    # Mixture of experts.
    n_routed_experts: int = 8  # HF: n_routed_experts (deepseek_v3), num_experts (qwen3_moe)
    num_experts_per_tok: int = 2
    n_shared_experts: int = 0  # deepseek_v3 only
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0  # deepseek_v3 only
    n_group: int = 1  # deepseek_v3 group-limited routing
    topk_group: int = 1
    first_k_dense_replace: int = 0  # deepseek_v3: the first k layers are dense
    mlp_only_layers: tuple[int, ...] = ()  # qwen3_moe: these layers are dense
    decoder_sparse_step: int = 1  # qwen3_moe: layer i is MoE when (i + 1) % step == 0
    # Aux-loss-free balancing (DeepSeek-V3 §2.1.2): bias += rate * sign(mean_load - load).
    routing_bias_update_rate: float = 0.001
    # Both families.
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    # Rotary scaling (model.rope), HF's rope_parameters keys with a `rope_` prefix: "default", or "yarn"
    # (DeepSeek-V3's released 128K config: factor 40 over 4,096 original positions, mscale = mscale_all_dim = 1)
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_original_max_position_embeddings: Optional[int] = None  # yarn: the context trained on
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_mscale: float = 0.0  # 0: unset (HF None)
    rope_mscale_all_dim: float = 0.0
    rope_attention_factor: Optional[float] = None  # None: from factor and the mscales
    rope_truncate: bool = True
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    initializer_range: float = 0.02
    # Numerics and kernels.
    param_dtype: str = "float32"
    compute_dtype: str = "float32"  # router, softmax, norms and logits always run in float32
    # auto: `blocked` (model.blocked) on CPU and TPU, but `ragged` (ragged_dot) for a TPU decode step and on
    # GPU: XLA compiles ragged_dot's weight gradient for TPU as a dense product over every local expert
    # (dispatch.resolve_impl)
    moe_impl: str = "auto"
    moe_block_size: int = 64  # rows per block of the blocked grouped matmul (at most; see model.blocked)
    # a one-token-per-row forward (a decode step) runs only `blocked_autodiff`'s non-empty blocks: the same
    # outputs, fewer loop iterations (model.blocked._used_blocks); forward only, so never in training.
    # `blocked` runs only its non-empty blocks in every forward and backward, whatever this says
    moe_decode_used_blocks: bool = False
    # the kernel of a one-token-per-row forward (a decode step); "" = moe_impl. On TPU the update wants
    # `blocked` (XLA's ragged_dot weight gradient is a dense product over every local expert) while decoding
    # wants `ragged` (one pass over each expert's weights per step): what `auto` picks for each
    moe_decode_impl: str = ""
    # the block-wise decode read of qwen3_moe's cache (`sampling.kv_block` > 0): auto = the Pallas kernel
    # (model.pallas_attention) when compiled for TPU, the XLA loop elsewhere; pallas = the kernel everywhere
    # (off TPU in Pallas's interpret mode: slow, for tests); xla = the XLA loop everywhere. MLA: always XLA
    decode_attention: str = "auto"
    remat: bool = False  # rematerialise each layer in the backward pass
    # False: the forward without a KV cache (training, log-probs) runs a segment's layers one after another
    # instead of in a `lax.scan`; the backward then keeps each layer's residuals apart instead of stacking
    # them (XLA's CPU backend zero-fills and copies those stacks every step). Float rounding differs from
    # the scan (XLA fuses the unrolled layers differently). Decoding then runs them one after another too, each
    # layer with a KV cache of its own and its weights sliced out of the stack once per rollout
    # (model.decoder: `Segment.unrolled`, `Policy.for_decoding`): XLA's CPU dots copy a layer's slice of a
    # stacked cache, and XLA leaves the weight slices inside the decode loop.
    scan_layers: bool = True

    def __post_init__(self) -> None:
        _check_choice("family", self.family, FAMILIES)
        _check_choice("param_dtype", self.param_dtype, DTYPES)
        _check_choice("compute_dtype", self.compute_dtype, DTYPES)
        _check_choice("moe_impl", self.moe_impl, MOE_IMPLS)
        _check_choice("decode_attention", self.decode_attention, DECODE_ATTENTIONS)
        if self.moe_decode_impl:
            _check_choice("moe_decode_impl", self.moe_decode_impl, MOE_IMPLS)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size",
                     "num_hidden_layers", "num_attention_heads", "n_routed_experts",
                     "num_experts_per_tok", "moe_block_size", "max_position_embeddings"):
            _check_positive(name, getattr(self, name))
        for name, high in MAX_SIZES.items():  # both families' fields: an HF config.json's too
            value = getattr(self, name)
            if value is not None and value > high:
                _fail(name, value, f"must be <= {high:,} (model.config.MAX_SIZES: 16 x the largest real models)")
        for name in ("rope_theta", "rms_norm_eps", "initializer_range"):
            if not getattr(self, name) > 0:
                _fail(name, getattr(self, name), "must be > 0")
        self._check_rope()
        if self.routing_bias_update_rate < 0:
            _fail("routing_bias_update_rate", self.routing_bias_update_rate, "must be >= 0 (0: the biases stay)")
        if self.num_experts_per_tok > self.n_routed_experts:
            _fail("num_experts_per_tok", self.num_experts_per_tok,
                  f"must be <= n_routed_experts ({self.n_routed_experts})")
        if self.family == "deepseek_v3":
            self._check_deepseek()
        else:
            self._check_qwen()

    def _check_rope(self) -> None:
        _check_choice("rope_type", self.rope_type, ROPE_TYPES)
        if self.rope_type == "default":
            return
        if not self.rope_factor >= 1 or self.rope_factor == float("inf"):
            _fail("rope_factor", self.rope_factor, "must be a finite number >= 1 (the context's stretch)")
        original = self.rope_original_max_position_embeddings
        if original is None or not 0 < original < 1 << 31:
            _fail("rope_original_max_position_embeddings", original, "yarn needs the context trained on (> 0)")
        if not self.rope_beta_fast > self.rope_beta_slow > 0:
            _fail("rope_beta_fast", self.rope_beta_fast, f"must be > rope_beta_slow ({self.rope_beta_slow}) > 0")
        for name in ("rope_mscale", "rope_mscale_all_dim"):
            if not 0 <= getattr(self, name) < float("inf"):
                _fail(name, getattr(self, name), "must be a finite number >= 0 (0: unset)")
        if self.rope_attention_factor is not None and not 0 < self.rope_attention_factor < float("inf"):
            _fail("rope_attention_factor", self.rope_attention_factor, "must be a finite number > 0 (or null)")

    def _check_deepseek(self) -> None:
        for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_group",
                     "topk_group"):
            _check_positive(name, getattr(self, name))
        if self.q_lora_rank is not None:
            _check_positive("q_lora_rank", self.q_lora_rank)
        if self.qk_rope_head_dim % 2:
            _fail("qk_rope_head_dim", self.qk_rope_head_dim, "must be even")
        if self.n_routed_experts % self.n_group:
            _fail("n_group", self.n_group, f"must divide n_routed_experts ({self.n_routed_experts})")
        if self.n_routed_experts // self.n_group < 2:
            _fail("n_group", self.n_group, "each group needs at least 2 experts (groups score by top-2)")
        if self.topk_group > self.n_group:
            _fail("topk_group", self.topk_group, f"must be <= n_group ({self.n_group})")
        if self.num_experts_per_tok > self.topk_group * (self.n_routed_experts // self.n_group):
            _fail("num_experts_per_tok", self.num_experts_per_tok,
                  "exceeds the experts in the topk_group selected groups")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            _fail("first_k_dense_replace", self.first_k_dense_replace,
                  f"must be in [0, num_hidden_layers={self.num_hidden_layers}]")
        if self.n_shared_experts < 0:
            _fail("n_shared_experts", self.n_shared_experts, "must be >= 0")
        if not self.routed_scaling_factor > 0:
            _fail("routed_scaling_factor", self.routed_scaling_factor, "must be > 0")

    def _check_qwen(self) -> None:
        _check_positive("num_key_value_heads", self.num_key_value_heads)
        _check_positive("head_dim", self.head_dim)
        _check_positive("decoder_sparse_step", self.decoder_sparse_step)
        if self.head_dim % 2:
            _fail("head_dim", self.head_dim, "must be even (rotary embedding)")
        if self.num_attention_heads % self.num_key_value_heads:
            _fail("num_key_value_heads", self.num_key_value_heads,
                  f"must divide num_attention_heads ({self.num_attention_heads})")
        bad = [i for i in self.mlp_only_layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            _fail("mlp_only_layers", bad, f"layer indices must be in [0, {self.num_hidden_layers})")

    @property
    def is_deepseek(self) -> bool:
        return self.family == "deepseek_v3"

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def layer_is_moe(self, index: int) -> bool:
        """Whether layer `index` is a MoE layer, by each family's Hugging Face rule."""
        if self.is_deepseek:
            return index >= self.first_k_dense_replace
        return index not in self.mlp_only_layers and (index + 1) % self.decoder_sparse_step == 0

    def layer_segments(self) -> tuple[tuple[str, int], ...]:
        """Runs of consecutive same-kind layers, e.g. (("dense", 3), ("moe", 58)); each run is one scan."""
        segments: list[list] = []
        for i in range(self.num_hidden_layers):
            kind = "moe" if self.layer_is_moe(i) else "dense"
            if segments and segments[-1][0] == kind:
                segments[-1][1] += 1
            else:
                segments.append([kind, 1])
        return tuple((kind, count) for kind, count in segments)


def _fail(name: str, value, why: str) -> None:
    raise UserError(f"model.{name}={value!r}: {why}")


def _check_positive(name: str, value: int) -> None:
    if value is None or value <= 0:
        _fail(name, value, "must be > 0")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(name, value, f"must be one of {', '.join(choices)}")
