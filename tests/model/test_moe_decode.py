"""The decode-step MoE kernel (`model.moe_decode_used_blocks`: only the non-empty blocks run) against the
full blocked scan: the same outputs to the bit, and the same rollouts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.model.dispatch import local_expert_ffn
from r1jax.model.factory import init_policy
from r1jax.rl.sampler import Sampler, SamplingConfig
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import state_shardings
from tests.model.test_moe import dense_reference, dispatch_case
from tests.model.tiny import FAMILIES


@pytest.mark.parametrize("impl", ["blocked", "blocked_autodiff"])
@pytest.mark.parametrize("tokens,experts,block,offset", [(64, 16, 128, 0), (5, 8, 8, 0), (24, 8, 16, 4)])
def test_used_blocks_equal_the_full_scan_to_the_bit(impl, tokens, experts, block, offset):
    x, chosen, weights, wg, wu, wd = dispatch_case(tokens, experts, 2)
    local = (wg, wu, wd) if offset == 0 else tuple(w[offset:] for w in (wg, wu, wd))  # other experts elsewhere
    run = jax.jit(lambda used: local_expert_ffn(x, chosen, weights, *local, expert_offset=offset, impl=impl,
                                                block_size=block, used_blocks_only=used), static_argnums=0)
    full, used = np.asarray(run(False)), np.asarray(run(True))
    np.testing.assert_array_equal(used, full)
    if offset == 0:
        np.testing.assert_allclose(used, dense_reference(x, chosen, weights, wg, wu, wd), atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rollouts_with_the_decode_kernel_equal_the_default(family):
    """Greedy and sampled rollouts: tokens equal, log-probs equal (tolerance 0: the blocks run the same
    products)."""
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20], [30, 31]]
    config = SamplingConfig(max_new_tokens=8, prompt_buckets=(8,))
    rollouts = []
    for used in (False, True):
        model = dataclasses.replace(FAMILIES[family], moe_impl="blocked", moe_decode_used_blocks=used)
        graphdef, state = nnx.split(init_policy(model, 0))
        sampler = Sampler(graphdef, config, stop_ids=(3,), pad_id=0)
        rollouts.append([sampler.generate(state, prompts, samples=2, key=jax.random.key(1), temperature=t)
                         for t in (0.0, 1.0)])
    for default, decode_kernel in zip(*rollouts):
        np.testing.assert_array_equal(np.asarray(decode_kernel.tokens_BT), np.asarray(default.tokens_BT))
        np.testing.assert_array_equal(np.asarray(decode_kernel.logprobs_BN), np.asarray(default.logprobs_BN))
        np.testing.assert_array_equal(np.asarray(decode_kernel.experts_LBTK), np.asarray(default.experts_LBTK))


def test_the_option_leaves_multi_token_forwards_alone():
    """A forward of several tokens per row (training, prefill) never takes the decode kernel: it has no
    gradient."""
    model = dataclasses.replace(FAMILIES["qwen3_moe"], moe_impl="blocked", moe_decode_used_blocks=True)
    graphdef, state = nnx.split(init_policy(model, 0))
    tokens = jnp.arange(12).reshape(2, 6) + 4
    grad = jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(tokens).logits_BTV ** 2))(state)  # no while loop
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grad))


def test_the_decode_kernel_under_an_expert_parallel_mesh_equals_unsharded():
    """Inside the dispatch's shard_map (each device its own experts and token shards)."""
    model = dataclasses.replace(FAMILIES["deepseek_v3"], moe_impl="blocked", moe_decode_used_blocks=True)
    graphdef, state = nnx.split(init_policy(model, 0))
    sampler = Sampler(graphdef, SamplingConfig(max_new_tokens=6, prompt_buckets=(8,)), stop_ids=(3,), pad_id=0)
    prompts, key = [[5, 6, 7], [9, 10, 11, 12], [20], [30, 31]] * 2, jax.random.key(2)  # 8 rows over 8 devices
    expected = sampler.generate(state, prompts, key=key, ignore_eos=True)
    mesh = build_mesh(ShardingConfig(data=2, fsdp=2, expert=2, tensor=1))
    rules = ShardingConfig(preset="fsdp_expert_tensor").logical_rules()
    with use_mesh(mesh, rules):
        got = sampler.generate(jax.device_put(state, state_shardings(state, mesh, rules)), prompts, key=key,
                               ignore_eos=True)
    np.testing.assert_array_equal(np.asarray(got.tokens_BT), np.asarray(expected.tokens_BT))
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(expected.logprobs_BN), atol=1e-5)


def test_decode_steps_take_the_decode_kernel_and_training_forwards_the_update_kernel():
    """`model.moe_decode_impl`: a one-token-per-row forward runs it, a multi-token forward runs `moe_impl`
    (read from the traced programs: ragged_dot appears only where `ragged` runs); rollouts agree with the
    all-`blocked` policy (the kernels sum the same products in another order)."""
    model = dataclasses.replace(FAMILIES["qwen3_moe"], moe_impl="blocked", moe_decode_impl="ragged")
    policy = init_policy(model, 0)
    tokens = jnp.arange(12).reshape(2, 6) + 4
    graphdef, state = nnx.split(policy)
    forward = lambda t: lambda s: nnx.merge(graphdef, s)(t).logits_BTV
    assert "ragged_dot" in str(jax.make_jaxpr(forward(tokens[:, :1]))(state))
    assert "ragged_dot" not in str(jax.make_jaxpr(jax.grad(lambda s: jnp.sum(forward(tokens)(s))))(state))
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20], [30, 31]]
    config = SamplingConfig(max_new_tokens=8, prompt_buckets=(8,))
    rollouts = []
    for decode_impl in ("ragged", ""):
        graphdef, state = nnx.split(init_policy(dataclasses.replace(model, moe_decode_impl=decode_impl), 0))
        rollouts.append(Sampler(graphdef, config, stop_ids=(3,), pad_id=0).generate(state, prompts, samples=2))
    np.testing.assert_array_equal(np.asarray(rollouts[0].tokens_BT), np.asarray(rollouts[1].tokens_BT))
    np.testing.assert_allclose(np.asarray(rollouts[0].logprobs_BN), np.asarray(rollouts[1].logprobs_BN), atol=1e-5)


def test_an_unknown_decode_kernel_is_refused_by_name():
    with pytest.raises(ValueError, match="moe_decode_impl"):
        dataclasses.replace(FAMILIES["qwen3_moe"], moe_decode_impl="dense")
