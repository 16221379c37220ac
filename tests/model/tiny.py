"""Tiny configs of both families whose dimensions divide every test mesh (8 devices)."""

from r1jax.model.config import ModelConfig

QWEN = ModelConfig(
    family="qwen3_moe", vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8, n_routed_experts=8,
    num_experts_per_tok=2, mlp_only_layers=(1,), moe_block_size=8)

DEEPSEEK = ModelConfig(
    family="deepseek_v3", vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
    num_hidden_layers=3, num_attention_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
    qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
    n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=2.0, moe_block_size=8)

FAMILIES = {"qwen3_moe": QWEN, "deepseek_v3": DEEPSEEK}
