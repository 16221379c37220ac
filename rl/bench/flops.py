"""Model FLOPs of one GRPO train step (forward + backward of the policy), the numerator of MFU.

    flops = 6 * N * B * T  +  6 * L * B * T^2 * heads * (d_qk + d_v)

- N: parameters each token multiplies by = active parameters (`count_params`: the routed experts a token
  does not use excluded) minus the input embedding table, which is a lookup (the LM head is counted; tied
  embeddings are counted once, as the head). Norm weights are included (a rounding error). 2N per token is
  the forward's multiply-adds, 4N the backward's (gradients for activations and for weights): 6N.
- Attention scores and mixing are not parameters: per layer the forward computes Q K^T
  (2 * T * S * heads * d_qk) and P V (2 * T * S * heads * d_v) per row, and the backward twice that. The
  model computes the full masked T x T score matrix, so S = T (no causal halving; PaLM's 12 * L * H * Q * T
  per token with d_qk = d_v = Q). d_qk = qk_nope_head_dim + qk_rope_head_dim and d_v = v_head_dim for
  MLA (training attends with expanded keys and values, no absorption); head_dim both for GQA, whose query
  heads each attend.
- Not counted: the router's softmax/top-k, norms, rotary, the loss and the optimizer (elementwise work),
  the reference policy (its log-probs are computed ahead of the step, as the trainer does).

B rows of T tokens: padding is computed like real tokens, so every position counts.
"""

from __future__ import annotations

from r1jax.model.config import ModelConfig
from r1jax.model.factory import count_params


def matmul_params(cfg: ModelConfig) -> int:
    """N: the parameters a token is multiplied by (active parameters minus the embedding lookup)."""
    lookup = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size
    return count_params(cfg)["params_active"] - lookup


def attention_dims(cfg: ModelConfig) -> tuple[int, int]:
    """(d_qk, d_v) per query head."""
    if cfg.is_deepseek:
        return cfg.qk_head_dim, cfg.v_head_dim
    return cfg.head_dim, cfg.head_dim


def attention_flops(cfg: ModelConfig, rows: int, seq_len: int) -> int:
    """Forward + backward FLOPs of the score and mixing products of every layer."""
    d_qk, d_v = attention_dims(cfg)
    forward = 2 * rows * seq_len * seq_len * cfg.num_attention_heads * (d_qk + d_v) * cfg.num_hidden_layers
    return 3 * forward


def train_step_flops(cfg: ModelConfig, rows: int, seq_len: int) -> int:
    """Model FLOPs of one update step on `rows` sequences of `seq_len` tokens (formula above)."""
    return 6 * matmul_params(cfg) * rows * seq_len + attention_flops(cfg, rows, seq_len)
