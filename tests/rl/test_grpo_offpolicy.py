"""Off-policy corrections against the sampler (IcePop token mask, geometric sequence mask) against a loop-based
NumPy reference; GSPO's clamp in the gradient; the advantage's std choice against NumPy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.errors import UserError
from r1jax.rl.grpo import (
    GRPOConfig, compute_advantages, finalize_stats, global_normalisers, grpo_loss, token_weights_BT,
)
from r1jax.rl.grpo.ratios import outside_band
from tests.rl.test_grpo_losses import B, L, T, make_batch

TOKEN_BAND, SEQ_BAND = (0.7, 1.4), (0.85, 1.15)


def reference(d, cfg):
    """float64 loss and masked fractions: per token pg = keep * tis * max(-A r, -A clip(r)), no KL."""
    loss, n, dropped = 0.0, 0, {"token_mask_frac": 0.0, "seq_mask_frac": 0.0}
    for b in range(B):
        idx = [t for t in range(T) if d["mask"][b, t]]
        if not idx:
            continue
        a = float(d["adv"][b])
        diffs = [float(d["old"][b, t]) - float(d["sampler"][b, t]) for t in idx]
        geo = math.exp(sum(diffs) / len(idx))
        keep_row = cfg.seq_mask_low is None or SEQ_BAND[0] <= geo <= SEQ_BAND[1]
        seq_lr = sum(float(d["logp"][b, t]) - float(d["old"][b, t]) for t in idx) / len(idx)
        for t, diff in zip(idx, diffs):
            lr = seq_lr if cfg.ratio_level == "sequence" else float(d["logp"][b, t]) - float(d["old"][b, t])
            r = math.exp(min(max(lr, -cfg.max_logratio), cfg.max_logratio))
            pg = max(-a * r, -a * min(max(r, 1 - cfg.clip_low), 1 + cfg.clip_high))
            if cfg.tis_cap is not None:
                pg *= min(math.exp(diff), cfg.tis_cap)
            keep_token = cfg.token_mask_low is None or TOKEN_BAND[0] <= math.exp(diff) <= TOKEN_BAND[1]
            dropped["token_mask_frac"] += not keep_token
            dropped["seq_mask_frac"] += not keep_row
            weight = 1.0 / (len(idx) * B)  # seq_mean_token_mean
            loss += weight * pg * keep_token * keep_row
            n += 1
    return loss, {k: v / n for k, v in dropped.items()}


COMBOS = [  # (ratio_level, token mask, sequence mask, tis_cap)
    ("token", True, False, None), ("token", False, True, None), ("token", True, True, 1.2),
    ("sequence", True, False, None), ("sequence", False, True, None), ("sequence", True, True, 1.2),
]


@pytest.mark.parametrize("ratio_level,token_mask,seq_mask,tis_cap", COMBOS)
def test_masks_match_numpy_reference(ratio_level, token_mask, seq_mask, tis_cap):
    cfg = GRPOConfig(kl_coef=0.0, ratio_level=ratio_level, tis_cap=tis_cap,
                     clip_low=0.2 if ratio_level == "token" else 0.05,
                     clip_high=0.28 if ratio_level == "token" else 0.06,
                     token_mask_low=TOKEN_BAND[0] if token_mask else None,
                     token_mask_high=TOKEN_BAND[1] if token_mask else None,
                     seq_mask_low=SEQ_BAND[0] if seq_mask else None, seq_mask_high=SEQ_BAND[1] if seq_mask else None)
    d = make_batch()
    weights = token_weights_BT(d["mask"], cfg.loss_aggregation, global_normalisers(d["mask"], L))
    loss_fn = lambda lp: grpo_loss(lp, d["adv"], d["mask"], weights, cfg, old_logp_BT=d["old"],
                                   sampler_logp_BT=d["sampler"])
    (loss, stats), grad = jax.value_and_grad(loss_fn, has_aux=True)(d["logp"])
    ref_loss, ref_fracs = reference(d, cfg)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=1e-7)
    out = finalize_stats(stats)
    for name, on in (("token_mask_frac", token_mask), ("seq_mask_frac", seq_mask)):
        assert (name in out) == on, name
        if on:  # the data drops some tokens and keeps others: the test exercises both sides of the band
            np.testing.assert_allclose(out[name], ref_fracs[name], rtol=1e-6, err_msg=name)
            assert 0.0 < ref_fracs[name] < 0.8, name
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~d["mask"]] == 0.0)


def test_a_dropped_row_has_no_gradient():
    """A row the sequence mask drops contributes neither loss nor gradient; other rows keep theirs."""
    one = np.ones((2, 3), np.float32)
    logp, old = -one, -one
    sampler = np.stack([old[0], old[1] - 1.0])  # row 1's geometric ratio is e, far outside the band
    cfg = GRPOConfig(kl_coef=0.0, seq_mask_low=0.9, seq_mask_high=1.1)
    grad = jax.grad(lambda lp: grpo_loss(lp, np.array([1.0, 1.0]), one, one, cfg, old_logp_BT=old,
                                         sampler_logp_BT=sampler)[0])(logp)
    np.testing.assert_array_equal(grad, [[-1.0] * 3, [0.0] * 3])


@pytest.mark.parametrize("mask", ["token", "sequence"])
def test_a_token_a_mask_drops_for_a_nan_sampler_logprob_leaves_the_gradient_finite(mask):
    """A NaN sampler log-prob on a valid token, with TIS on: the mask drops the token (row), and the loss and
    gradient are those of any sampler log-prob outside the band (the TIS weight, NaN there, times the
    surrogate made the gradient NaN through the select that zeroed it)."""
    bands = {"token": dict(token_mask_low=0.5, token_mask_high=2.0), "sequence": dict(seq_mask_low=0.5,
                                                                                       seq_mask_high=2.0)}
    cfg = GRPOConfig(kl_coef=0.0, tis_cap=2.0, **bands[mask])
    mask_BT = np.ones((2, 3), np.float32)
    logp = np.array([[-1.0, -2.0, -0.5], [-1.5, -0.7, -2.2]], np.float32)
    old = logp + 0.1
    far, nan = old.copy(), old.copy()
    far[0, 1], nan[0, 1] = old[0, 1] - 50.0, np.nan  # both outside the band (a NaN is outside every band)
    loss = lambda sampler: jax.value_and_grad(lambda lp: grpo_loss(lp, np.array([1.0, -0.5]), mask_BT, mask_BT,
                                                                   cfg, old_logp_BT=old, sampler_logp_BT=sampler)[0])
    (value_nan, grad_nan), (value_far, grad_far) = loss(nan)(logp), loss(far)(logp)
    assert np.all(np.isfinite(grad_nan)) and float(value_nan) == float(value_far)
    np.testing.assert_array_equal(grad_nan, grad_far)
    assert grad_nan[0, 1] == 0.0 and np.all(np.asarray(grad_nan)[1] != 0.0)


def test_sequence_clamp_stops_the_gradient():
    """GSPO with the mean log-ratio beyond max_logratio: the ratio is the clamp's constant, so the gradient is 0
    (it was sg[s] * weight = e^20 / 8 per token here, with A < 0 and no dual clip)."""
    cfg = GRPOConfig(kl_coef=0.0, ratio_level="sequence", max_logratio=20.0, dual_clip=None)
    mask = np.ones((2, 4), np.float32)
    old = np.full((2, 4), -30.0, np.float32)
    logp = np.stack([np.full(4, -5.0), np.full(4, -29.5)]).astype(np.float32)  # row 0: mean log-ratio 25 > 20
    weights = token_weights_BT(mask, cfg.loss_aggregation, global_normalisers(mask, 4))
    grad = np.asarray(jax.grad(lambda lp: grpo_loss(lp, np.array([-1.0, -1.0]), mask, weights, cfg,
                                                    old_logp_BT=old)[0])(logp))
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[0], 0.0)
    # an unclamped row keeps GSPO's gradient sg[s] * (-A) * weight: its ratio e^0.5 > 1 + clip_high, where
    # for A < 0 the unclipped term is the larger loss
    np.testing.assert_allclose(grad[1], math.exp(0.5) / 8, rtol=1e-6)


@pytest.mark.parametrize("field,value", [("token_mask_low", 1.5), ("token_mask_low", 0.0), ("token_mask_high", 0.9),
                                         ("seq_mask_low", -1.0), ("seq_mask_high", 1.0), ("adv_std", "unbiased")])
def test_bad_values_are_user_errors(field, value):
    with pytest.raises(UserError, match=f"grpo.{field}"):
        GRPOConfig(**{field: value})


def test_masks_need_sampler_logprobs():
    one = np.ones((1, 2), np.float32)
    with pytest.raises(ValueError, match="sampler_logp_BT"):
        grpo_loss(one, np.ones(1), one, one, GRPOConfig(kl_coef=0.0, token_mask_high=5.0))


@pytest.mark.parametrize("std,ddof", [("population", 0), ("sample", 1)])
@pytest.mark.parametrize("estimator", ["grpo", "batch_std"])
def test_advantage_std_matches_numpy(std, ddof, estimator):
    rewards_PG = np.random.default_rng(0).integers(0, 3, (4, 16)).astype(np.float32) / 2
    eps = 1e-6
    adv_PG, _ = compute_advantages(rewards_PG, estimator, eps, std)
    r = rewards_PG.astype(np.float64)
    scale = r.std(axis=1, ddof=ddof, keepdims=True) if estimator == "grpo" else r.std(ddof=ddof)
    expected = (r - r.mean(axis=1, keepdims=True)) / (scale + eps)
    expected[r.max(axis=1) == r.min(axis=1)] = 0.0
    np.testing.assert_allclose(adv_PG, expected, rtol=1e-5, atol=1e-6)


def test_the_mask_band_is_closed_and_nan_lies_outside_it():
    """outside_band: exp(log_ratio) outside [low, high] (a ratio exactly at a bound is kept) or NaN."""
    at_low, at_high = np.float32(math.log(0.5)), np.float32(math.log(2.0))
    x = jnp.array([at_low, at_high, 0.0, np.nextafter(at_low, np.float32(-1)), np.nextafter(at_high, np.float32(9)),
                   np.nan], jnp.float32)
    assert np.asarray(outside_band(x, 0.5, 2.0)).tolist() == [False, False, False, True, True, True]
    assert np.asarray(outside_band(x, None, None)).tolist() == [False] * 5 + [True]
    assert np.asarray(outside_band(x, 0.5, None)).tolist() == [False, False, False, True, False, True]
