"""Routing against an independent NumPy reference over many random tokens (the hand-computed cases in test_moe
pin single decisions; these pin the rule wherever it can differ), the router's float32 logits, and the blocked
kernel's layout of expert groups in blocks, computed by hand."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.model.blocked import block_layout
from r1jax.model.config import ModelConfig
from r1jax.model.routing import route


def numpy_deepseek_routing(logits, bias, n_group, topk_group, k, norm, scale):
    """DeepSeek-V3's router (the paper's eqs. 16-18, transformers' DeepseekV3TopkRouter) in NumPy float64:
    sigmoid scores; selection on scores + bias within the `topk_group` groups of the best top-2 sums; weights
    the unbiased scores of the chosen experts, normalised if `norm`, times `scale`. Experts sorted per token."""
    scores = 1 / (1 + np.exp(-logits.astype(np.float64)))
    choice = scores + bias
    t, e = choice.shape
    grouped = choice.reshape(t, n_group, e // n_group)
    group_scores = np.sort(grouped, axis=-1)[..., -2:].sum(-1)
    experts, weights = [], []
    for row in range(t):
        groups = np.argsort(-group_scores[row])[:topk_group]
        allowed = np.concatenate([np.arange(g * (e // n_group), (g + 1) * (e // n_group)) for g in groups])
        chosen = np.sort(allowed[np.argsort(-choice[row, allowed])[:k]])
        w = scores[row, chosen]
        if norm:
            w = w / w.sum()
        experts.append(chosen)
        weights.append(w * scale)
    return np.array(experts), np.array(weights)


@pytest.mark.parametrize("n_group,topk_group,k,norm", [(4, 2, 3, True), (8, 3, 4, False), (4, 1, 2, True)])
def test_group_limited_routing_equals_numpy_over_random_tokens(n_group, topk_group, k, norm):
    e, t = 16, 256
    cfg = ModelConfig(family="deepseek_v3", hidden_size=e, n_routed_experts=e, num_experts_per_tok=k,
                      n_group=n_group, topk_group=topk_group, routed_scaling_factor=2.5, norm_topk_prob=norm)
    rng = np.random.default_rng(n_group * 10 + k)
    logits = rng.normal(0, 2, (t, e)).astype(np.float32)
    # biases as aux-loss-free balancing leaves them, of either sign: some choices below 0, where the masked
    # groups' experts must still lose (masked to -inf, as DeepSeek-V3's and transformers' routers mask them)
    bias = rng.normal(-0.8, 0.4, e).astype(np.float32)
    r = route(jnp.asarray(logits), jnp.eye(e), jnp.asarray(bias), cfg)  # identity router: the logits as given
    order = np.argsort(np.asarray(r.experts_TK), axis=-1)
    got_experts = np.take_along_axis(np.asarray(r.experts_TK), order, -1)
    got_weights = np.take_along_axis(np.asarray(r.weights_TK), order, -1)
    experts, weights = numpy_deepseek_routing(logits, bias, n_group, topk_group, k, norm, 2.5)
    # the groups' limit changes the choice for many tokens here (else the case would not test it)
    unlimited = np.sort(np.argsort(-(1 / (1 + np.exp(-logits)) + bias), axis=-1)[:, :k], axis=-1)
    assert (unlimited != experts).any(axis=1).mean() > 0.1
    assert ((1 / (1 + np.exp(-logits)) + bias)[np.arange(t)[:, None], experts] < 0).any()
    np.testing.assert_array_equal(got_experts, experts)
    np.testing.assert_allclose(got_weights, weights, rtol=1e-5)



@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_router_logits_of_bfloat16_inputs_and_weights_are_float32_products(family):
    """Routing computes in float32 whatever the compute and parameter dtypes: the logits of bfloat16 tokens and a
    bfloat16 router are the float32 products of their values (NumPy float64 here), not bfloat16-rounded ones
    (which move by ~1e-2 and flip near-tied choices)."""
    cfg = ModelConfig(family=family, hidden_size=64, n_routed_experts=8, num_experts_per_tok=2)
    keys = jax.random.split(jax.random.key(7))
    x = jax.random.normal(keys[0], (32, 64)).astype(jnp.bfloat16)
    router = jax.random.normal(keys[1], (64, 8)).astype(jnp.bfloat16)
    r = route(x, router, jnp.zeros(8) if cfg.is_deepseek else None, cfg)
    expected = np.asarray(x, np.float64) @ np.asarray(router, np.float64)
    assert r.logits_TE.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(r.logits_TE), expected, rtol=1e-5, atol=1e-5)

def test_block_layout_pads_each_group_to_whole_blocks_and_gives_empty_groups_none():
    """Groups of 0, 3, 8 and 9 rows in blocks of 4 (20 rows over 4 groups: the configured 4 is kept): 0 + 1 + 2
    + 3 = 6 used blocks, computed by hand; an empty group and a group filling its blocks exactly take no block
    more (each would be a block of zeros multiplied at every layer)."""
    lay = block_layout(jnp.array([0, 3, 8, 9]), rows=20, block_size=4)
    assert lay.block == 4 and lay.num_blocks == 5 + 4  # every row in blocks, plus a partial block per group
    assert int(lay.used) == 6
    assert np.asarray(lay.starts_E).tolist() == [0, 0, 3, 11]
    assert np.asarray(lay.padded_starts_E).tolist() == [0, 0, 4, 12]
    assert np.asarray(lay.group_N)[:6].tolist() == [1, 2, 2, 3, 3, 3]  # the used blocks' groups, in order


def test_a_bfloat16_deepseek_router_is_made_float32_and_qwens_in_the_model_dtype():
    """transformers keeps DeepSeek-V3's router weight float32 in a bfloat16 model (`_keep_in_fp32_modules_strict`;
    a hub checkpoint stores it so); Qwen3-MoE's gate is a plain Linear in the model's dtype."""
    from flax import nnx
    from r1jax.model.moe import MoE
    from tests.model.tiny import DEEPSEEK, QWEN
    for cfg, dtype in ((DEEPSEEK, jnp.float32), (QWEN, jnp.bfloat16)):
        layer = MoE(dataclasses.replace(cfg, param_dtype="bfloat16"), nnx.Rngs(0))
        assert layer.router[...].dtype == dtype, cfg.family
        assert layer.gate_proj[...].dtype == jnp.bfloat16
