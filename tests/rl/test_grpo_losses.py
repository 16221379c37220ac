"""The GRPO loss against a loop-based NumPy reference, REINFORCE gradients, micro-batching, garbage safety."""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.errors import UserError
from r1jax.rl.grpo import (
    AGGREGATIONS, GRPOConfig, combine_stats, finalize_stats, global_normalisers, grpo_loss,
    token_logp_and_entropy, token_weights_BT,
)

B, T, L = 8, 9, 12  # rows, padded completion positions, Dr.GRPO's max completion length (> T)
GARBAGE = np.array([np.inf, -np.inf, np.nan, 1e30, -1e30], np.float32)


def make_batch(seed=0):
    """Ragged rows (prompt zeros on the left, padding on the right, one empty row), garbage outside the mask."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, 3, B)
    lengths = np.array([5, 1, 6, 0, 3, 4, 2, 6])
    mask = np.zeros((B, T), bool)
    for b in range(B):
        mask[b, starts[b]:starts[b] + lengths[b]] = True
    logp = -rng.exponential(1.0, (B, T)).astype(np.float32)
    old = (logp + rng.normal(0, 0.35, (B, T))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.5, (B, T))).astype(np.float32)
    sampler = (old + rng.normal(0, 0.5, (B, T))).astype(np.float32)
    entropy = rng.exponential(2.0, (B, T)).astype(np.float32)
    for x in (logp, old, ref, sampler, entropy):
        x[~mask] = rng.choice(GARBAGE, (~mask).sum())
    adv = rng.normal(0, 1, B).astype(np.float32)
    return dict(logp=logp, old=old, ref=ref, sampler=sampler, entropy=entropy, adv=adv, mask=mask)


def clamp(x, m):
    return min(max(x, -m), m)


def reference(d, cfg):
    """Loop-based float64 GRPO loss and token-mean metrics, straight from the papers' formulas."""
    lengths = d["mask"].sum(axis=1)
    loss, n, sums, maxes = 0.0, 0, {}, {"ratio": 0.0, "absdiff": 0.0}
    add = lambda k, v: sums.__setitem__(k, sums.get(k, 0.0) + v)
    for b in range(B):
        idx = [t for t in range(T) if d["mask"][b, t]]
        if not idx:
            continue
        a = float(d["adv"][b])
        seq_lr = sum(float(d["logp"][b, t]) - float(d["old"][b, t]) for t in idx) / len(idx)
        for t in idx:
            lp, old = float(d["logp"][b, t]), float(d["old"][b, t])
            if cfg.ratio_level == "token":
                r = math.exp(clamp(lp - old, cfg.max_logratio))
            else:
                r = math.exp(clamp(seq_lr, cfg.max_logratio))
            pg = max(-a * r, -a * min(max(r, 1 - cfg.clip_low), 1 + cfg.clip_high))
            if cfg.dual_clip is not None and a < 0:
                pg = min(pg, -a * cfg.dual_clip)
                add("dual_clip_frac", float(r > cfg.dual_clip))
            diff = old - float(d["sampler"][b, t])
            if cfg.tis_cap is not None:
                w = min(math.exp(clamp(diff, cfg.max_logratio)), cfg.tis_cap)
                pg *= w
                add("tis_weight", w)
                add("tis_capped_frac", float(w >= cfg.tis_cap))
            per_token = pg
            if cfg.kl_coef > 0:
                lr = min(float(d["ref"][b, t]) - lp, cfg.max_logratio)  # k3's exp overflows on this side only
                kl = {"k1": -lr, "k2": 0.5 * lr * lr, "k3": math.exp(lr) - lr - 1}[cfg.kl_estimator]
                per_token += cfg.kl_coef * kl
                add("kl", kl)
            if cfg.loss_aggregation == "seq_mean_token_mean":
                weight = 1.0 / (len(idx) * B)
            elif cfg.loss_aggregation == "token_mean":
                weight = 1.0 / lengths.sum()
            else:
                weight = 1.0 / (B * L)
            loss += weight * per_token
            n += 1
            add("ratio", r)
            add("clip_low_frac", float(a < 0 and r < 1 - cfg.clip_low))
            add("clip_high_frac", float(a > 0 and r > 1 + cfg.clip_high))
            add("sampler_logp_absdiff", abs(diff))
            add("entropy", float(d["entropy"][b, t]))
            maxes["ratio"] = max(maxes["ratio"], r)
            maxes["absdiff"] = max(maxes["absdiff"], abs(diff))
    means = {k: v / n for k, v in sums.items()}
    return loss, means, maxes


def run(d, cfg, rows=slice(None), logp=None, full_mask=None):
    full_mask = d["mask"] if full_mask is None else full_mask
    norms = global_normalisers(full_mask, L)
    mask = d["mask"][rows]
    weights = token_weights_BT(mask, cfg.loss_aggregation, norms)
    return grpo_loss(
        d["logp"][rows] if logp is None else logp, d["adv"][rows], mask, weights, cfg,
        old_logp_BT=d["old"][rows], ref_logp_BT=d["ref"][rows], sampler_logp_BT=d["sampler"][rows],
        entropy_BT=d["entropy"][rows],
    )


VARIANTS = list(itertools.product(
    sorted(AGGREGATIONS), ["token", "sequence"], ["k1", "k2", "k3", None], [None, 1.5], [None, 1.2]))


@pytest.mark.parametrize("aggregation,ratio_level,kl,dual_clip,tis_cap", VARIANTS)
def test_loss_matches_numpy_reference(aggregation, ratio_level, kl, dual_clip, tis_cap):
    cfg = GRPOConfig(loss_aggregation=aggregation, ratio_level=ratio_level, kl_estimator=kl or "k3",
                     kl_coef=0.05 if kl else 0.0, dual_clip=dual_clip, tis_cap=tis_cap,
                     clip_low=0.2 if ratio_level == "token" else 0.05,
                     clip_high=0.28 if ratio_level == "token" else 0.06)
    d = make_batch()
    (loss, stats), grad = jax.value_and_grad(lambda lp: run(d, cfg, logp=lp), has_aux=True)(d["logp"])
    ref_loss, ref_means, ref_maxes = reference(d, cfg)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5, atol=1e-7)
    out = finalize_stats(stats)
    for k, v in ref_means.items():
        np.testing.assert_allclose(out[k], v, rtol=2e-5, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(out["ratio_max"], ref_maxes["ratio"], rtol=2e-5)
    np.testing.assert_allclose(out["sampler_logp_absdiff_max"], ref_maxes["absdiff"], rtol=2e-5)
    assert float(out["token_count"]) == d["mask"].sum()
    np.testing.assert_allclose(out["loss"], loss)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~d["mask"]] == 0.0)


def test_the_variants_actually_clip():
    """The reference data exercises every branch: both clips, the dual clip and the TIS cap bind somewhere."""
    d = make_batch()
    cfg = GRPOConfig(kl_coef=0.0, dual_clip=1.5, tis_cap=1.2)
    out = finalize_stats(run(d, cfg)[1])
    for k in ("clip_low_frac", "clip_high_frac", "dual_clip_frac", "tis_capped_frac"):
        assert 0.0 < float(out[k]) < 1.0, k


AGGREGATION_BY_RATIO_LEVEL = list(itertools.product(sorted(AGGREGATIONS), ["token", "sequence"]))


@pytest.mark.parametrize("aggregation,ratio_level", AGGREGATION_BY_RATIO_LEVEL)
def test_on_policy_gradient_is_reinforce_with_group_baseline(aggregation, ratio_level):
    """mu = 1, ratio 1: d loss / d logp_bt = -A_b * weight_bt (and exactly 0 on prompt/padding)."""
    cfg = GRPOConfig(loss_aggregation=aggregation, ratio_level=ratio_level, kl_coef=0.0)
    d = make_batch(1)
    weights = token_weights_BT(d["mask"], aggregation, global_normalisers(d["mask"], L))
    for old in (None, d["logp"]):
        grad = jax.grad(lambda lp: grpo_loss(lp, d["adv"], d["mask"], weights, cfg, old_logp_BT=old)[0])(d["logp"])
        expected = np.where(d["mask"], -d["adv"][:, None] * np.asarray(weights), 0.0)
        np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("aggregation,ratio_level", AGGREGATION_BY_RATIO_LEVEL)
def test_micro_batches_sum_to_the_full_batch(aggregation, ratio_level):
    cfg = GRPOConfig(loss_aggregation=aggregation, ratio_level=ratio_level, kl_coef=0.05, tis_cap=1.2)
    d = make_batch(2)
    loss_and_grad = jax.value_and_grad(lambda lp, rows: run(d, cfg, rows, logp=lp), has_aux=True)
    (full_loss, full_stats), full_grad = loss_and_grad(d["logp"], slice(None))
    total, stats, grads = 0.0, None, []
    for i in range(4):
        rows = slice(2 * i, 2 * i + 2)
        (loss, s), g = loss_and_grad(d["logp"][rows], rows)
        total, stats = total + loss, combine_stats(stats, s) if stats else s
        grads.append(g)
    assert abs(float(total) - float(full_loss)) <= 1e-6
    np.testing.assert_allclose(np.concatenate(grads), full_grad, rtol=1e-6, atol=1e-9)
    for k, v in finalize_stats(full_stats).items():
        np.testing.assert_allclose(finalize_stats(stats)[k], v, rtol=1e-6, atol=1e-7, err_msg=k)


def test_precomputed_global_weights_sliced_equal_per_micro_batch_weights():
    d = make_batch(3)
    norms = global_normalisers(d["mask"], L)
    for name in AGGREGATIONS:
        full = token_weights_BT(d["mask"], name, norms)
        np.testing.assert_array_equal(full[2:4], token_weights_BT(d["mask"][2:4], name, norms))


def test_dual_clip_bounds_negative_advantage_loss():
    cfg = GRPOConfig(kl_coef=0.0, dual_clip=3.0, max_logratio=20.0)
    one = np.ones((1, 1), np.float32)
    logp, old = 5.0 * one, 0.0 * one
    loss, _ = grpo_loss(logp, np.array([-2.0]), one, one, cfg, old_logp_BT=old)
    assert float(loss) == pytest.approx(3.0 * 2.0)  # -A * ratio = 2 e^5 without the dual clip
    loss, _ = grpo_loss(logp, np.array([2.0]), one, one, cfg, old_logp_BT=old)
    assert float(loss) == pytest.approx(-2.0 * 1.28)  # positive advantages: the ordinary upper clip


def test_shape_mismatch_raises():
    one = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="adv_B"):
        grpo_loss(one, np.ones(4), one, one, GRPOConfig(kl_coef=0.0))


@pytest.mark.parametrize("name", ["mask_BT", "weight_BT", "old_logp_BT", "ref_logp_BT", "sampler_logp_BT",
                                  "entropy_BT"])
def test_a_per_token_input_that_would_broadcast_is_refused_by_name(name):
    """A [1, T] array broadcasts against [B, T] logp without complaint: it must be refused, named."""
    one, row = np.ones((2, 3), np.float32), np.ones((1, 3), np.float32)
    kw = dict(old_logp_BT=one, ref_logp_BT=one, sampler_logp_BT=one, entropy_BT=one)
    args = {"mask_BT": one, "weight_BT": one}
    (args if name in args else kw)[name] = row
    with pytest.raises(ValueError, match=f"{name} has shape \\(1, 3\\), expected \\(2, 3\\)"):
        grpo_loss(one, np.ones(2), args["mask_BT"], args["weight_BT"], GRPOConfig(kl_coef=0.1), **kw)


def test_log_ratio_is_clamped():
    cfg = GRPOConfig(kl_coef=0.0, max_logratio=2.0, clip_high=100.0)
    loss, stats = grpo_loss(np.array([[50.0]]), np.array([1.0]), np.ones((1, 1)), np.ones((1, 1)), cfg,
                            old_logp_BT=np.zeros((1, 1)))
    np.testing.assert_allclose(stats["ratio_max"], math.exp(2.0), rtol=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_a_token_far_likelier_than_under_the_reference_keeps_the_kl_gradient(estimator):
    """log pi - log pi_ref = 30 > max_logratio (20): the penalty's derivative in log pi, by hand, is 1 for k1,
    log pi - log pi_ref = 30 for k2 and 1 - pi_ref / pi = 1 - e^-30 for k3 (a clamp on that side made it 0:
    the penalty stopped pulling where the policy had run furthest from the reference). The other side, where
    k3's exp would overflow, is still clamped: finite, and the clamp's constant there."""
    cfg = GRPOConfig(kl_coef=1.0, kl_estimator=estimator, max_logratio=20.0)
    one = np.ones((1, 2), np.float32)
    logp, ref = np.array([[-1.0, -90.0]], np.float32), np.array([[-31.0, -1.0]], np.float32)
    kl = lambda lp: grpo_loss(lp, np.zeros(1), one, one, cfg, old_logp_BT=lp, ref_logp_BT=ref)[1]["kl_loss"]
    grad = np.asarray(jax.grad(lambda lp: grpo_loss(lp, np.zeros(1), one, one, cfg, old_logp_BT=logp,
                                                    ref_logp_BT=ref)[0])(logp))
    np.testing.assert_allclose(grad[0, 0], {"k1": 1.0, "k2": 30.0, "k3": 1.0 - math.exp(-30.0)}[estimator],
                               rtol=1e-6)
    assert grad[0, 1] == 0.0 and np.isfinite(float(kl(logp)))


def test_zero_kl_coef_never_reads_the_reference():
    d = make_batch()
    cfg = GRPOConfig(kl_coef=0.0)
    weights = token_weights_BT(d["mask"], cfg.loss_aggregation, global_normalisers(d["mask"], L))
    a, sa = grpo_loss(d["logp"], d["adv"], d["mask"], weights, cfg, old_logp_BT=d["old"])
    b, sb = grpo_loss(d["logp"], d["adv"], d["mask"], weights, cfg, old_logp_BT=d["old"],
                      ref_logp_BT=np.full((B, T), np.nan, np.float32))
    assert float(a) == float(b) and "kl_sum" not in sa and "kl_sum" not in sb


def test_missing_inputs_raise():
    d = make_batch()
    w = np.ones((B, T), np.float32)
    with pytest.raises(ValueError, match="ref_logp_BT"):
        grpo_loss(d["logp"], d["adv"], d["mask"], w, GRPOConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="sampler_logp_BT"):
        grpo_loss(d["logp"], d["adv"], d["mask"], w, GRPOConfig(kl_coef=0.0, tis_cap=2.0))


def test_token_logp_and_entropy_match_numpy_and_ignore_garbage():
    rng = np.random.default_rng(4)
    V, temperature = 11, 0.7
    logits = rng.normal(0, 3, (2, 5, V)).astype(np.float32)
    targets = rng.integers(0, V, (2, 5))
    mask = np.array([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
    logits[~mask] = np.nan
    logits[0, 0, 3] = np.inf
    targets[~mask] = -7  # out of range
    logp, ent = map(np.asarray, token_logp_and_entropy(logits, targets, mask, temperature))
    for b, t in zip(*np.nonzero(mask)):
        x = logits[b, t].astype(np.float64) / temperature
        logq = x - np.log(np.sum(np.exp(x - x.max()))) - x.max()
        np.testing.assert_allclose(logp[b, t], logq[targets[b, t]], rtol=1e-5)
        np.testing.assert_allclose(ent[b, t], -np.sum(np.exp(logq) * logq), rtol=1e-5)
    assert np.all(logp[~mask] == 0) and np.all(ent[~mask] == 0)
    grad = jax.grad(lambda z: jnp.sum(token_logp_and_entropy(z, targets, mask, temperature)[0]))(logits)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~mask] == 0)


@pytest.mark.parametrize("field,value", [
    ("clip_low", -0.1), ("clip_high", -0.2), ("kl_estimator", "k4"), ("advantage_estimator", "ppo"),
    ("loss_aggregation", "sum"), ("ratio_level", "tokens"), ("group_size", 1), ("temperature", 0.0),
    ("kl_coef", -1.0), ("dual_clip", 0.5), ("tis_cap", 0.0), ("tis_cap", 0.5), ("num_iterations", 0),
    ("max_logratio", 0.0), ("clip_low", 0.0), ("clip_low", 1.0), ("dual_clip", 1.0),
])
def test_bad_grpo_config_names_the_field(field, value):
    with pytest.raises(UserError, match=rf"grpo\.{field}\b"):
        GRPOConfig(**{field: value})


def test_grpo_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GRPOConfig().kl_coef = 0.1


def test_a_sequence_level_ratio_with_token_level_clips_is_said_to_hardly_clip():
    # GSPO's ratio is the geometric mean of a sequence's token ratios: per-token log-ratios of +-0.05 over 200
    # tokens leave it within 1 +- 0.01, where the token-level defaults (0.2 / 0.28) clip nothing
    rng = np.random.default_rng(0)
    seq_ratio = np.exp(rng.normal(0, 0.05, (1000, 200)).mean(axis=1))
    assert np.abs(seq_ratio - 1).max() < 0.02
    (note,) = GRPOConfig(ratio_level="sequence").notes()
    assert "clip_low=0.2, clip_high=0.28" in note and "grpo.clip_low=3e-4 grpo.clip_high=4e-4" in note
    assert GRPOConfig(ratio_level="sequence", clip_low=3e-4, clip_high=4e-4).notes() == []
    assert GRPOConfig().notes() == []  # token level: the defaults are PPO's / DAPO's own


def test_a_pack_length_without_packing_is_said_to_pack_nothing():
    assert GRPOConfig(pack_length=64).notes() == [
        "grpo.pack_length=64 with grpo.pack=false: nothing is packed (grpo.pack=true packs)"]
    assert GRPOConfig(pack=True, pack_length=64).notes() == []
    assert len(GRPOConfig(ratio_level="sequence", pack_length=64).notes()) == 2


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
def test_ratio_max_reads_only_valid_tokens(ratio_level):
    """Every valid token moved down by 0.5 nats since the rollout: ratio_max is exp(-0.5), not the ratio of 1
    that masked-off positions hold."""
    cfg = GRPOConfig(kl_coef=0.0, ratio_level=ratio_level)
    mask = np.array([[True, True, False]])
    old = np.array([[-1.0, -2.0, 0.0]], np.float32)
    _, stats = grpo_loss(old - 0.5, np.ones(1), mask, np.ones((1, 3)), cfg, old_logp_BT=old)
    np.testing.assert_allclose(float(stats["ratio_max"]), math.exp(-0.5), rtol=1e-6)


def test_stats_of_no_valid_token_finalize_to_zero_not_nan():
    """A batch (or host's share) with no valid token: `*_sum` / max(count, 1) is 0, not 0 / 0; a count of 1
    divides by 1."""
    out = finalize_stats({"token_count": jnp.float32(0.0), "ratio_sum": jnp.float32(0.0), "loss": jnp.float32(0.0)})
    assert float(out["ratio"]) == 0.0 and float(out["loss"]) == 0.0
    assert float(finalize_stats({"token_count": jnp.float32(1.0), "kl_sum": jnp.float32(0.3)})["kl"]) \
        == pytest.approx(0.3)


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "constant"])
def test_weights_of_empty_rows_and_of_an_all_empty_batch_are_exactly_zero(aggregation):
    mask_BT = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]], bool)
    w = np.asarray(token_weights_BT(mask_BT, aggregation, global_normalisers(mask_BT, 4)))
    expected = {"seq_mean_token_mean": [[1 / 6, 1 / 6, 0], [0, 0, 0], [1 / 3, 0, 0]],
                "token_mean": [[1 / 3, 1 / 3, 0], [0, 0, 0], [1 / 3, 0, 0]],
                "constant": [[1 / 12, 1 / 12, 0], [0, 0, 0], [1 / 12, 0, 0]]}[aggregation]
    np.testing.assert_allclose(w, expected, rtol=1e-6, atol=0)
    empty_BT = np.zeros((2, 3), bool)
    w = np.asarray(token_weights_BT(empty_BT, aggregation, global_normalisers(empty_BT, 4)))
    assert np.array_equal(w, np.zeros((2, 3), np.float32))  # not NaN (0 / 0)


def test_garbage_weights_off_the_mask_reach_neither_the_loss_nor_its_gradient():
    """grpo_loss's contract: every input may hold garbage on prompt and padding tokens, the weights included."""
    mask_BT = np.array([[1, 1, 0], [0, 1, 1]], bool)
    logp_BT = np.array([[-0.5, -1.0, 0.0], [0.0, -2.0, -0.25]], np.float32)
    adv_B = np.array([1.0, -0.5], np.float32)
    weight_BT = np.where(mask_BT, 0.25, 0.0).astype(np.float32)
    bad_BT = np.where(mask_BT, weight_BT, np.array([[0, 0, np.nan], [np.inf, 0, 0]], np.float32))
    cfg = GRPOConfig(kl_coef=0.1)
    ref_BT = logp_BT - 0.3

    def loss(w, lp):
        return grpo_loss(lp, adv_B, mask_BT, w, cfg, ref_logp_BT=ref_BT)[0]
    (good, g_good), (bad, g_bad) = (jax.value_and_grad(loss, argnums=1)(w, logp_BT) for w in (weight_BT, bad_BT))
    # on-policy: pg = -A per token (ratio 1), k3 at log r = -0.3: e^-0.3 + 0.3 - 1
    k3 = np.exp(-0.3) + 0.3 - 1
    expected = 0.25 * (2 * (-1.0) + 2 * 0.5) + 0.1 * 0.25 * 4 * k3
    assert float(good) == pytest.approx(expected, rel=1e-5)
    assert float(bad) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_array_equal(np.asarray(g_bad), np.asarray(g_good))
