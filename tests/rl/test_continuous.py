"""Continuous batching (sampling.slots > 0) against the fixed-batch sampler and one prompt at a time."""

import jax
import numpy as np
import pytest
from flax import nnx

from r1jax.model.factory import init_policy
from r1jax.rl.sampler import Sampler, SamplingConfig
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import state_shardings
from tests.model.tiny import FAMILIES

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20], [30, 31]]
CONFIG = SamplingConfig(max_new_tokens=8, prompt_buckets=(8,))
ROW_MAX_NEW = [8, 2, 5, 1, 3, 8, 2, 6]  # per row: rows stop at different steps, so slots are reused


def make(family):
    graphdef, state = nnx.split(init_policy(FAMILIES[family], seed=0))
    return state, Sampler(graphdef, CONFIG, stop_ids=(3,), pad_id=0)


def arrays(rollout):
    return {name: np.asarray(getattr(rollout, name))
            for name in ("tokens_BT", "valid_BT", "positions_BT", "logprobs_BN", "lengths_B", "experts_LBTK")}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_rollout_equals_the_fixed_batch_sampler_whatever_the_slot_count(family):
    state, sampler = make(family)
    fixed_rollout = sampler.generate(state, PROMPTS, samples=2, temperature=0.0, row_max_new=ROW_MAX_NEW,
                                     keep_logits=True)
    fixed = arrays(fixed_rollout)
    assert fixed["lengths_B"].tolist() == ROW_MAX_NEW  # the hook stops rows early
    for slots in (1, 3):
        rollout = sampler.generate(state, PROMPTS, samples=2, temperature=0.0, row_max_new=ROW_MAX_NEW,
                                   slots=slots, keep_logits=True)
        ours = arrays(rollout)
        completion = np.asarray(rollout.completion_mask_BN)
        np.testing.assert_allclose(np.asarray(rollout.logits_BNV)[completion],
                                   np.asarray(fixed_rollout.logits_BNV)[completion], atol=1e-5)
        for name in ("tokens_BT", "valid_BT", "positions_BT", "lengths_B"):
            assert np.array_equal(ours[name], fixed[name]), (slots, name)
        np.testing.assert_allclose(ours["logprobs_BN"], fixed["logprobs_BN"], atol=1e-5)
        real = np.broadcast_to(fixed["valid_BT"][None, :, :, None], fixed["experts_LBTK"].shape)
        assert np.array_equal(ours["experts_LBTK"][real], fixed["experts_LBTK"][real]), slots  # routes to replay


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_completions_equal_one_prompt_at_a_time(family):
    state, sampler = make(family)
    alone = [np.asarray(sampler.generate(state, [prompt], temperature=0.0).completion_BN)[0] for prompt in PROMPTS]
    together = sampler.generate(state, PROMPTS, temperature=0.0, slots=2)
    assert np.array_equal(np.asarray(together.completion_BN), np.stack(alone))


def test_sampled_completions_do_not_depend_on_the_slot_count():
    state, sampler = make("deepseek_v3")
    key = jax.random.key(3)
    one, five = (arrays(sampler.generate(state, PROMPTS, samples=3, key=key, temperature=1.0, slots=slots))
                 for slots in (1, 5))
    assert np.array_equal(five["tokens_BT"], one["tokens_BT"])
    np.testing.assert_allclose(five["logprobs_BN"], one["logprobs_BN"], atol=1e-5)
    completions = one["tokens_BT"][:, 8:]
    assert len({tuple(row) for row in completions}) > len(PROMPTS)  # the samples of a prompt differ
    other = sampler.generate(state, PROMPTS, samples=3, key=jax.random.key(4), temperature=1.0, slots=5)
    assert not np.array_equal(np.asarray(other.tokens_BT), one["tokens_BT"])


def test_a_stop_id_frees_the_slot_and_pads_after_it():
    state, sampler = make("qwen3_moe")
    greedy = sampler.generate(state, PROMPTS, temperature=0.0)
    first = int(np.asarray(greedy.completion_BN)[1, 2])  # make row 1's third token a stop id
    stopping = Sampler(sampler.graphdef, CONFIG, stop_ids=(first,), pad_id=0)
    fixed = arrays(stopping.generate(state, PROMPTS, temperature=0.0))
    ours = arrays(stopping.generate(state, PROMPTS, temperature=0.0, slots=2))
    assert fixed["lengths_B"][1] <= 3
    for name in ("tokens_BT", "lengths_B", "valid_BT"):
        assert np.array_equal(ours[name], fixed[name]), name


def test_sharded_continuous_batching_equals_unsharded():
    state, sampler = make("qwen3_moe")
    prompts, key = PROMPTS * 2, jax.random.key(5)  # 8 slots: they split over the 8 devices
    options = dict(samples=2, key=key, slots=8, kv_block=4, row_max_new=ROW_MAX_NEW * 2)
    expected = sampler.generate(state, prompts, **options)
    mesh = build_mesh(ShardingConfig(data=2, fsdp=2, expert=2, tensor=1))
    rules = ShardingConfig(preset="fsdp_expert_tensor").logical_rules()
    sharded = jax.device_put(state, state_shardings(state, mesh, rules))
    with use_mesh(mesh, rules):
        got = sampler.generate(sharded, prompts, **options)
    assert np.array_equal(np.asarray(got.tokens_BT), np.asarray(expected.tokens_BT))
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(expected.logprobs_BN), atol=1e-5)
