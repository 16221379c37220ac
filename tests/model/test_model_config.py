"""ModelConfig's checks of DeepSeek-V3's routing groups and dense layers (model.config), each refusal naming the
field, and the edge values transformers accepts."""

import pytest

from r1jax.errors import UserError
from r1jax.model.config import ModelConfig

DEEPSEEK = dict(family="deepseek_v3", n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
                num_hidden_layers=2, first_k_dense_replace=0)


def test_deepseek_routing_groups_are_checked():
    ModelConfig(**DEEPSEEK)
    with pytest.raises(UserError, match="model.n_group=8: each group needs at least 2 experts"):
        ModelConfig(**{**DEEPSEEK, "n_group": 8, "topk_group": 8})  # a group scores by its top-2 experts
    with pytest.raises(UserError, match="model.num_experts_per_tok=5: exceeds the experts in the topk_group"):
        ModelConfig(**{**DEEPSEEK, "num_experts_per_tok": 5})  # 1 selected group of 4: 5 cannot be picked


def test_deepseek_may_have_every_layer_dense():
    assert ModelConfig(**{**DEEPSEEK, "first_k_dense_replace": 2}).layer_segments() == (("dense", 2),)
    with pytest.raises(UserError, match="first_k_dense_replace"):
        ModelConfig(**{**DEEPSEEK, "first_k_dense_replace": 3})


@pytest.mark.parametrize("family,field", [("qwen3_moe", "head_dim"), ("deepseek_v3", "qk_rope_head_dim")])
def test_an_odd_rotary_width_is_named(family, field):
    """Rotary embedding turns pairs of dimensions: an odd width has a dimension left over."""
    base = {**DEEPSEEK} if family == "deepseek_v3" else {"family": family}
    ModelConfig(**{**base, field: 8})
    with pytest.raises(UserError, match=f"model.{field}=7: must be even"):
        ModelConfig(**{**base, field: 7})
