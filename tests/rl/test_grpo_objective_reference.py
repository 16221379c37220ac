"""The GRPO objective, rewards to loss AND its gradient in the log-probs, against a float64 NumPy reference
written from the papers' formulas (not from r1jax's code), in every variant the config offers:
  advantages  DeepSeekMath eq. 4 (population / sample std + eps), Dr.GRPO (no std), Lite PPO (batch std);
              a group of equal rewards gets 0 (it carries no signal);
  ratio       token pi / pi_old (PPO); sequence exp(mean_t log pi / pi_old) (GSPO eq. 7), whose GSPO-token
              gradient (eq. 13-14) is sg[s_i] * grad log pi(o_t) per token;
  surrogate   min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) (DAPO clip-higher), dual clip max(., c A) for A < 0;
  corrections min(pi_old / pi_sampler, C) (TIS), IcePop's token band, the geometric sequence band;
  KL          beta * k3 = beta * (pi_ref / pi - log(pi_ref / pi) - 1) (DeepSeekMath eq. 4);
  aggregation 1/B sum_i 1/|o_i| sum_t (GRPO), 1/sum|o_i| sum_i sum_t (DAPO), 1/(B L_max) sum_i sum_t (Dr.GRPO).
The reference gradient is analytic, and itself checked against a float64 finite difference of the reference
loss. Edge cases in the data: a group of equal rewards, rows of length 1 and 0, a full row, garbage padding,
far off-policy rows (log-ratio past max_logratio), negative advantages past the dual clip, a ratio exactly on a
clip bound (a kink: the gradient must lie between the one-sided derivatives)."""

import itertools
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl.grpo import GRPOConfig, compute_advantages, global_normalisers, grpo_loss, token_weights_BT

P, G, T, LMAX = 3, 3, 7, 9
B = P * G
LENGTHS = [5, 1, 7, 3, 0, 4, 2, 6, 1]  # a row of length 1, an empty row, a full row
REWARDS = [[1.0, 0.0, 0.5], [0.3, 0.3, 0.3], [2.0, -1.0, 0.0]]  # group 1: all equal
FAR_ROW = 7  # log pi - log pi_old = +25 on every token: past max_logratio = 20, a negative advantage
CORRECTIONS = {
    "none": {}, "tis": {"tis_cap": 1.3}, "token_mask": {"token_mask_low": 0.7, "token_mask_high": 1.4},
    "seq_mask_tis": {"seq_mask_low": 0.85, "seq_mask_high": 1.15, "tis_cap": 1.3},
}


def make_data(seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((B, T), bool)
    for b, n in enumerate(LENGTHS):
        s = rng.integers(0, T - n + 1)
        mask[b, s:s + n] = True
    lp = -rng.exponential(1.0, (B, T))
    old = lp + rng.normal(0, 0.3, (B, T))
    old[FAR_ROW] = lp[FAR_ROW] - 25.0
    old[8] = lp[8] + 0.5  # ratio e^-0.5 < 1 - eps_low on a one-token row of negative advantage
    ref = lp + rng.normal(0, 0.5, (B, T))
    sampler = old + rng.normal(0, 0.3, (B, T))
    f32 = lambda x: np.where(mask, x, rng.choice([np.nan, np.inf, -1e30], (B, T))).astype(np.float32)
    return dict(mask=mask, lp=f32(lp), old=f32(old), ref=f32(ref), sampler=f32(sampler))


def ref_advantages(rewards, estimator, std, eps):
    """One advantage per row, prompt-major, from the formulas with Python's statistics module."""
    spread = statistics.pstdev if std == "population" else statistics.stdev
    flat = [r for group in rewards for r in group]
    out = []
    for group in rewards:
        mean = sum(group) / len(group)
        for r in group:
            if max(group) == min(group):
                out.append(0.0)
            elif estimator == "grpo":
                out.append((r - mean) / (spread(group) + eps))
            elif estimator == "dr_grpo":
                out.append(r - mean)
            else:
                out.append((r - mean) / (spread(flat) + eps))
    return np.array(out)


def surrogate(r, a, cfg):
    """(per-token loss, its derivative in r) of the clipped (dual-clipped) PPO objective, negated."""
    lo, hi = 1 - cfg.clip_low, 1 + cfg.clip_high
    clipped = min(max(r, lo), hi)
    loss, d = (-a * r, -a) if -a * r >= -a * clipped else (-a * clipped, 0.0)
    if cfg.dual_clip is not None and a < 0 and -a * cfg.dual_clip < loss:
        loss, d = -a * cfg.dual_clip, 0.0
    return loss, d


def ref_objective(d, adv, cfg, lp=None):
    """float64 (loss, d loss / d log pi) from the formulas; lp overrides d['lp'] (finite differences)."""
    lp = np.asarray(d["lp"] if lp is None else lp, np.float64)
    m = cfg.max_logratio
    n_tokens = int(d["mask"].sum())
    loss, grad = 0.0, np.zeros((B, T))
    for b in range(B):
        idx = np.flatnonzero(d["mask"][b])
        if not len(idx):
            continue
        w = {"seq_mean_token_mean": 1 / (B * len(idx)), "token_mean": 1 / n_tokens,
             "constant": 1 / (B * LMAX)}[cfg.loss_aggregation]
        old, samp, ref = (d[k][b, idx].astype(np.float64) for k in ("old", "sampler", "ref"))
        seq_lr = np.mean(lp[b, idx] - old)
        geo = math.exp(np.mean(old - samp))
        keep_row = ((cfg.seq_mask_low is None or geo >= cfg.seq_mask_low)
                    and (cfg.seq_mask_high is None or geo <= cfg.seq_mask_high))
        for k, t in enumerate(idx):
            lr = seq_lr if cfg.ratio_level == "sequence" else lp[b, t] - old[k]
            r = math.exp(min(max(lr, -m), m))
            pg, dpg_dr = surrogate(r, adv[b], cfg)
            dr = r if abs(lr) <= m else 0.0  # d r / d log pi(o_t); GSPO-token: sg[s] * pi / sg[pi]
            iw = math.exp(old[k] - samp[k])
            keep = keep_row and ((cfg.token_mask_low is None or iw >= cfg.token_mask_low)
                                 and (cfg.token_mask_high is None or iw <= cfg.token_mask_high))
            tis = 1.0 if cfg.tis_cap is None else min(iw, cfg.tis_cap)
            loss += w * keep * tis * pg
            grad[b, t] += w * keep * tis * dpg_dr * dr
            if cfg.kl_coef:
                x = ref[k] - lp[b, t]  # log(pi_ref / pi)
                loss += w * cfg.kl_coef * (math.exp(x) - x - 1)
                grad[b, t] += w * cfg.kl_coef * (1 - math.exp(x))
    return loss, grad


def r1jax_objective(d, adv, cfg):
    norms = global_normalisers(d["mask"], LMAX)
    weights = token_weights_BT(d["mask"], cfg.loss_aggregation, norms)
    fn = lambda lp: grpo_loss(lp, adv.astype(np.float32), d["mask"], weights, cfg, old_logp_BT=d["old"],
                              ref_logp_BT=d["ref"], sampler_logp_BT=d["sampler"])[0]
    return jax.value_and_grad(fn)(jnp.asarray(d["lp"]))


def config(aggregation, ratio_level, correction, dual_clip, kl_coef, **kw):
    clip = (0.2, 0.28) if ratio_level == "token" else (0.05, 0.06)
    return GRPOConfig(loss_aggregation=aggregation, ratio_level=ratio_level, dual_clip=dual_clip, kl_coef=kl_coef,
                      clip_low=clip[0], clip_high=clip[1], **CORRECTIONS[correction], **kw)


@pytest.mark.parametrize("aggregation,ratio_level,correction", list(itertools.product(
    ["seq_mean_token_mean", "token_mean", "constant"], ["token", "sequence"], sorted(CORRECTIONS))))
def test_rewards_to_loss_and_gradient_match_the_papers(aggregation, ratio_level, correction):
    d = make_data()
    for (dual_clip, kl_coef), (estimator, std) in zip(
            itertools.product([None, 1.5], [0.0, 0.05]),
            [("grpo", "population"), ("grpo", "sample"), ("dr_grpo", "population"), ("batch_std", "sample")]):
        cfg = config(aggregation, ratio_level, correction, dual_clip, kl_coef, advantage_estimator=estimator,
                     adv_std=std)
        adv, _ = compute_advantages(np.array(REWARDS), estimator, cfg.adv_eps, std)
        want_adv = ref_advantages(REWARDS, estimator, std, cfg.adv_eps)
        np.testing.assert_allclose(adv.reshape(-1), want_adv, rtol=1e-6, atol=1e-7)
        loss, grad = r1jax_objective(d, adv.reshape(-1), cfg)
        want_loss, want_grad = ref_objective(d, want_adv, cfg)
        msg = f"dual_clip={dual_clip} kl={kl_coef} {estimator}/{std}"
        np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-7, err_msg=msg)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7, err_msg=msg)


def test_the_data_reaches_every_edge_case():
    """Both clips, the dual clip, the log-ratio clamp, the TIS cap and both masks act somewhere in the data."""
    d = make_data()
    adv = ref_advantages(REWARDS, "grpo", "population", 1e-6)
    hit = set()
    for b in range(B):
        idx = np.flatnonzero(d["mask"][b])
        for t in idx:
            lr = float(d["lp"][b, t]) - float(d["old"][b, t])
            iw = math.exp(float(d["old"][b, t]) - float(d["sampler"][b, t]))
            r = math.exp(min(lr, 20.0))
            hit |= {"clamp"} if lr > 20 else set()
            hit |= {"low"} if adv[b] < 0 and r < 0.8 else set()
            hit |= {"high"} if adv[b] > 0 and 1.28 < r < 1.5 else set()
            hit |= {"dual"} if adv[b] < 0 and r > 1.5 else set()
            hit |= {"tis"} if iw > 1.3 else set()
            hit |= {"token_mask"} if not 0.7 <= iw <= 1.4 else set()
        if len(idx) and not 0.85 <= math.exp(np.mean(d["old"][b, idx] - d["sampler"][b, idx])) <= 1.15:
            hit.add("seq_mask")
    assert hit == {"clamp", "low", "high", "dual", "tis", "token_mask", "seq_mask"}


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "constant"])
def test_the_reference_gradient_is_the_finite_difference_of_the_reference_loss(aggregation):
    """Where the GSPO-token gradient is the derivative of the sequence objective (no per-token weights), the
    analytic gradient is checked against central differences of the float64 reference loss."""
    d, adv = make_data(1), ref_advantages(REWARDS, "grpo", "population", 1e-6)
    for ratio_level, kl in (("token", 0.05), ("sequence", 0.05), ("token", 0.0)):
        cfg = config(aggregation, ratio_level, "none", 1.5, kl)
        _, grad = ref_objective(d, adv, cfg)
        lp, h = d["lp"].astype(np.float64), 1e-6
        for b, t in zip(*np.nonzero(d["mask"])):
            up, down = lp.copy(), lp.copy()
            up[b, t] += h
            down[b, t] -= h
            fd = (ref_objective(d, adv, cfg, up)[0] - ref_objective(d, adv, cfg, down)[0]) / (2 * h)
            assert abs(fd - grad[b, t]) < 1e-6, (ratio_level, b, t)


@pytest.mark.parametrize("bound", ["low", "high", "dual"])
def test_a_ratio_exactly_on_a_clip_bound_has_a_subgradient(bound):
    """At a kink of the surrogate the loss is the formula's, and the gradient lies between the one-sided
    derivatives (0 on the clipped side, -A r on the other)."""
    cfg = GRPOConfig(kl_coef=0.0, dual_clip=1.5)
    target, a = {"low": (0.8, -1.0), "high": (1.28, 1.0), "dual": (1.5, -1.0)}[bound]
    lr = np.float32(math.log(target))
    for _ in range(64):  # the float32 log-ratio whose float32 exp is the bound itself
        r = float(jnp.exp(lr))
        if r == float(np.float32(target)):
            break
        lr = np.nextafter(lr, np.float32(np.inf if r < np.float32(target) else -np.inf))
    assert float(jnp.exp(lr)) == float(np.float32(target))
    lp, old, mask = np.array([[lr]], np.float32), np.zeros((1, 1), np.float32), np.ones((1, 1), bool)
    weights = token_weights_BT(mask, cfg.loss_aggregation, global_normalisers(mask, 1))
    fn = lambda x: grpo_loss(x, np.array([a], np.float32), mask, weights, cfg, old_logp_BT=old)[0]
    loss, grad = jax.value_and_grad(fn)(lp)
    np.testing.assert_allclose(loss, -a * np.float32(target), rtol=1e-6)
    full = -a * float(np.float32(target))
    assert min(0.0, full) <= float(grad[0, 0]) <= max(0.0, full)


# -- the packed layout: the loss reads log-probs unpacked from packed rows; every variant equals the padded one --
PACK_LENGTHS = [12, 1, 5, 3, 1, 7, 2, 9]  # sequences (prompt + completion): one fills a row of T_P = 12 exactly,
PROMPTS = [4, 1, 2, 1, 1, 3, 1, 4]  # two are one token (no targets), the rest of different lengths
T_P, MICRO = 12, 2


def packed_case(seed=0):
    """Padded valid [B, T_P] (left-padded prompts), completion targets [B, T_P - 1], random padded log-probs and
    the plan, for 2 strided micro-batches."""
    from r1jax.rl.grpo.packing import plan_packing
    rng = np.random.default_rng(seed)
    n = len(PACK_LENGTHS)
    start = np.array([rng.integers(0, T_P - k + 1) for k in PACK_LENGTHS])
    cols = np.arange(T_P)
    valid = (cols >= start[:, None]) & (cols < (start + PACK_LENGTHS)[:, None])
    # target t predicts token t + 1: a completion token is one past the prompt, still inside the sequence
    tcols = cols[:-1]
    mask = (tcols >= (start + np.array(PROMPTS))[:, None] - 1) & (tcols < (start + PACK_LENGTHS)[:, None] - 1)
    data = {k: np.where(mask, -rng.exponential(1.0, (n, T_P - 1)), np.nan).astype(np.float32)
            for k in ("lp", "old", "ref", "sampler")}
    data["old"] = np.where(mask, data["lp"] + rng.normal(0, 0.3, mask.shape), np.nan).astype(np.float32)
    data["sampler"] = np.where(mask, data["old"] + rng.normal(0, 0.3, mask.shape), np.nan).astype(np.float32)
    return valid, mask, data, plan_packing(valid, micro_batches=MICRO)


def packed_logp(plan, lp_BT):
    """The packed rows' per-target log-probs written from the plan's source indices alone: packed target (r, j)
    predicts packed token j + 1, padded target (b, t) when both tokens are of one segment."""
    x = np.zeros((plan.rows, plan.src_RT.shape[1] - 1), np.float32)
    seg = plan.segments_RT
    for r, j in zip(*np.nonzero((seg[:, :-1] > 0) & (seg[:, :-1] == seg[:, 1:]))):
        b, t = divmod(int(plan.src_RT[r, j]), T_P)
        x[r, j] = lp_BT[b, t]
    return x


@pytest.mark.parametrize("aggregation,ratio_level", list(itertools.product(
    ["seq_mean_token_mean", "token_mean", "constant"], ["token", "sequence"])))
def test_the_packed_layout_gives_the_padded_loss_and_gradient(aggregation, ratio_level):
    from r1jax.rl.grpo.packing import unpack_targets
    valid, mask, data, plan = packed_case()
    assert plan.rows < len(PACK_LENGTHS) and (plan.segments_RT[:, -1] > 0).any()  # something packs; a full row
    adv = np.linspace(-1.5, 1.5, len(PACK_LENGTHS)).astype(np.float32)
    weights = token_weights_BT(mask, aggregation, global_normalisers(mask, T_P))
    x_RT = packed_logp(plan, np.nan_to_num(data["lp"]))
    for correction, dual_clip, kl_coef in itertools.product(sorted(CORRECTIONS), [None, 1.5], [0.0, 0.05]):
        cfg = config(aggregation, ratio_level, correction, dual_clip, kl_coef)

        def micro(i, lp_BT, unpack):
            rows = slice(i, None, MICRO)
            logp = unpack_targets(lp_BT, plan.unpack_BT[rows], mask[rows]) if unpack else lp_BT
            return grpo_loss(logp, adv[rows], mask[rows], weights[rows], cfg, old_logp_BT=data["old"][rows],
                             ref_logp_BT=data["ref"][rows], sampler_logp_BT=data["sampler"][rows])[0]

        padded = lambda lp: sum(micro(i, lp[i::MICRO], False) for i in range(MICRO))
        packed = lambda x: sum(micro(i, x[i::MICRO], True) for i in range(MICRO))
        loss, grad = jax.value_and_grad(padded)(jnp.asarray(np.where(mask, data["lp"], 0.0)))
        loss_p, grad_p = jax.value_and_grad(packed)(jnp.asarray(x_RT))
        msg = f"{correction} dual_clip={dual_clip} kl={kl_coef}"
        np.testing.assert_allclose(loss_p, loss, rtol=1e-6, atol=1e-8, err_msg=msg)
        np.testing.assert_allclose(grad_p, packed_logp(plan, np.asarray(grad)), rtol=1e-6, atol=1e-8, err_msg=msg)
        assert np.abs(np.asarray(grad)).sum() > 0


def test_unpacked_log_probs_are_the_packed_ones_on_the_mask_and_exactly_zero_off_it():
    """unpack_targets per micro-batch: each completion target's packed value, 0 on prompt and padding (index 0
    of the packed rows holds a real, non-zero value: a plain gather would put it there)."""
    from r1jax.rl.grpo.packing import unpack_targets
    _, mask, data, plan = packed_case(1)
    x_RT = packed_logp(plan, np.where(mask, data["lp"], 0.0)) + 7.0  # non-zero in every packed slot
    for i in range(MICRO):
        got = np.asarray(unpack_targets(jnp.asarray(x_RT[i::MICRO]), plan.unpack_BT[i::MICRO], mask[i::MICRO]))
        want = np.where(mask[i::MICRO], data["lp"][i::MICRO] + 7.0, 0.0)
        np.testing.assert_array_equal(got, want)
