"""The r1jax policy: a decoder-only mixture-of-experts transformer in Flax NNX.

Two families with Hugging Face semantics: `deepseek_v3` (multi-head latent attention, shared + routed
experts, sigmoid group-limited routing) and `qwen3_moe` (grouped-query attention with qk-norm, softmax
top-k routing).

One alphabet for dimensions, used in einsum strings and in shape-suffixed names (`x_BTD`, `w_EDF`):
  B batch, T query length, S key length, D model width, N query heads, K kv heads, H head dim,
  R rope head dim, C latent (LoRA) rank, F (expert) hidden width, E experts, L layers, V vocab,
  A token copies (tokens x top-k), G group size.
"""
