"""Group-relative advantages: baselines, scales, zero-variance groups, DAPO's keep mask."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from r1jax.rl.grpo import ADVANTAGE_ESTIMATORS, compute_advantages, nonzero_std_mask_P

REWARDS_PG = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]], np.float32)


@pytest.mark.parametrize("estimator", sorted(ADVANTAGE_ESTIMATORS))
@settings(max_examples=15, deadline=None)
@given(rewards=st.lists(st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0, -1.0]), min_size=4, max_size=4),
                        min_size=1, max_size=3))
def test_advantages_sum_to_zero_per_group(estimator, rewards):
    adv_PG, _ = compute_advantages(np.array(rewards, np.float32), estimator)
    np.testing.assert_allclose(np.asarray(adv_PG).sum(axis=1), 0.0, atol=1e-5)


def test_grpo_hand_computed():
    adv_PG, metrics = compute_advantages(REWARDS_PG, "grpo", eps=0.0)
    s = math.sqrt(3) / 4  # population std of (0, 0, 0, 1)
    expected = [[1, -1, -1, 1], [0, 0, 0, 0], [-0.25 / s, -0.25 / s, -0.25 / s, 0.75 / s]]
    np.testing.assert_allclose(adv_PG, expected, rtol=1e-6)
    assert float(metrics["frac_reward_zero_std"]) == pytest.approx(1 / 3)


def test_grpo_eps_is_added_to_std():
    adv_PG, _ = compute_advantages(REWARDS_PG[:1], "grpo", eps=0.5)
    np.testing.assert_allclose(adv_PG, [[0.5, -0.5, -0.5, 0.5]], rtol=1e-6)


@pytest.mark.parametrize("estimator", sorted(ADVANTAGE_ESTIMATORS))
def test_zero_std_groups_get_exactly_zero(estimator):
    rewards_PG = np.array([[0.1] * 5, [0.3, 0.7, 0.1, 0.1, 0.2], [-2.0] * 5, [0.1] * 5], np.float32)
    adv_PG, metrics = compute_advantages(rewards_PG, estimator, eps=1e-6)
    assert np.all(np.asarray(adv_PG)[[0, 2, 3]] == 0.0)
    assert np.any(np.asarray(adv_PG)[1] != 0.0)
    assert float(metrics["frac_reward_zero_std"]) == pytest.approx(0.75)


def test_dr_grpo_has_no_std_division():
    rewards_PG = np.array([[0.0, 4.0], [1.0, 2.0]], np.float32)
    adv_PG, _ = compute_advantages(rewards_PG, "dr_grpo")
    np.testing.assert_allclose(adv_PG, [[-2.0, 2.0], [-0.5, 0.5]], rtol=1e-6)


def test_batch_std_divides_by_the_std_of_the_whole_batch():
    rewards_PG = np.array([[0.0, 4.0], [1.0, 2.0]], np.float32)
    adv_PG, _ = compute_advantages(rewards_PG, "batch_std", eps=0.0)
    batch_std = np.std([0.0, 4.0, 1.0, 2.0])
    np.testing.assert_allclose(adv_PG, np.array([[-2.0, 2.0], [-0.5, 0.5]]) / batch_std, rtol=1e-6)


def test_nonzero_std_mask_for_dynamic_sampling():
    np.testing.assert_array_equal(nonzero_std_mask_P(REWARDS_PG), [True, False, True])


def test_logged_reward_std_is_the_population_std_whatever_the_advantage_std():
    rewards_PG = np.array([[0.0, 1.0, 1.0], [1.0, 1.0, 0.5]], np.float32)
    for std in ("population", "sample"):
        _, metrics = compute_advantages(rewards_PG, "grpo", 1e-6, std)
        assert metrics["reward_std"] == pytest.approx(float(np.std(rewards_PG.astype(np.float64))), rel=1e-6)
        assert metrics["reward_mean"] == pytest.approx(4.5 / 6, rel=1e-6)
