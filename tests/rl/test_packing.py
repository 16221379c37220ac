"""Packed update batches: the plan moves every real token once, attention stays within a segment, and the GRPO
loss, its statistics and its gradients equal the padded layout's for both model families."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax.errors import UserError
from r1jax.model.factory import init_policy
from r1jax.rl.grpo.config import GRPOConfig
from r1jax.rl.grpo.optimizer import skip_nonfinite
from r1jax.rl.grpo.packing import pack_batch, padding_fraction, plan_packing, sequence_spans
from r1jax.rl.grpo.step import make_grpo_step, reference_logprobs, rollout_batch
from r1jax.rl.sampler import Rollout
from r1jax.rl.update import UpdateConfig, init_train_state, split_policy
from tests.model.tiny import FAMILIES

PROMPT, NEW = 6, 8  # prompt bucket, token budget: rows of T = 14


def make_rollout(cfg, rows=8, seed=0):
    """A sampler-shaped Rollout: left-padded prompts of 1..PROMPT / 2 tokens, completions of 1..NEW / 2 tokens
    (short enough that two fit in a row)."""
    rng = np.random.default_rng(seed)
    t = PROMPT + NEW
    prompt_len = rng.integers(1, PROMPT // 2 + 1, rows)
    gen_len = rng.integers(1, NEW // 2 + 1, rows)
    cols = np.arange(t)
    valid = (cols >= PROMPT - prompt_len[:, None]) & (cols < PROMPT + gen_len[:, None])
    tokens = np.where(valid, rng.integers(1, cfg.vocab_size, (rows, t)), 0).astype(np.int32)
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    logprobs = np.where(valid[:, PROMPT:], -rng.exponential(2.0, (rows, NEW)), 0.0).astype(np.float32)
    moe_layers = sum(n for kind, n in cfg.layer_segments() if kind == "moe")
    experts = rng.integers(0, cfg.n_routed_experts, (moe_layers, rows, t, cfg.num_experts_per_tok)).astype(np.int32)
    return Rollout(jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(positions), jnp.asarray(logprobs),
                   jnp.asarray(gen_len, jnp.int32), jnp.asarray(experts), jnp.asarray(NEW, jnp.int32))


@pytest.mark.parametrize("micro,devices,row_length", [(1, 1, None), (2, 2, None), (4, 1, None), (2, 1, 40)])
def test_plan_moves_every_real_token_once_within_its_group(micro, devices, row_length):
    rows, t = 16, 14
    rng = np.random.default_rng(micro * 10 + devices)
    start, length = rng.integers(0, 7, rows), rng.integers(0, 8, rows)
    valid = (np.arange(t) >= start[:, None]) & (np.arange(t) < (start + length)[:, None])
    plan = plan_packing(valid, micro, devices, row_length)
    real = plan.segments_RT > 0
    assert plan.src_RT.shape[1] == (row_length or t)
    assert plan.rows <= rows and plan.rows % (micro * devices) == 0
    np.testing.assert_array_equal(np.sort(plan.src_RT[real]), np.flatnonzero(valid))  # each real token once
    b_of = plan.src_RT // t
    packed_rows = plan.rows // devices
    for r in range(plan.rows):
        for seg in np.unique(plan.segments_RT[r][real[r]]):
            members = np.unique(b_of[r][plan.segments_RT[r] == seg])
            assert len(members) == 1  # a segment is one sequence, in its micro-batch and on its device
            assert members[0] % micro == r % micro and members[0] // (rows // devices) == r // packed_rows
    assert padding_fraction(valid, plan.src_RT.size) <= padding_fraction(valid)


@pytest.mark.parametrize("shapes", [1, 2, 8, 64])
def test_packed_row_counts_take_at_most_pack_shapes_values(shapes):
    """Each packed row count is a compile of the update and the reference forward: `grpo.pack_shapes` bounds
    them (it was 8 fixed: up to 8 x prompt buckets full-model compiles each on a TPU)."""
    rows, t = 64, 16
    counts = set()
    for needed in range(1, rows + 1):  # `needed` sequences of 9 tokens: one per row (two do not fit in 16)
        valid = np.zeros((rows, t), bool)
        valid[:needed, :9] = True
        plan = plan_packing(valid, shapes=shapes)
        assert needed <= plan.rows <= rows  # room for every sequence, never more rows than padded
        counts.add(plan.rows)
    assert len(counts) == min(shapes, rows) and max(counts) == rows


def test_non_contiguous_rows_are_refused():
    with pytest.raises(ValueError, match="contiguous"):
        sequence_spans(np.array([[True, False, True]]))


def test_rows_that_do_not_split_into_the_groups_are_a_user_error():
    with pytest.raises(UserError, match="grpo.pack: a batch of 6 rows .* multiple of 4"):
        plan_packing(np.ones((6, 4), bool), micro_batches=2, devices=2)


def test_attention_stays_within_a_segment():
    """Changing one segment's tokens leaves the other segments' logits in the row bit for bit unchanged."""
    cfg = dataclasses.replace(FAMILIES["qwen3_moe"], num_hidden_layers=2)
    policy = init_policy(cfg, 0)
    tokens = jnp.asarray([[5, 6, 7, 8, 9, 10, 11, 0]])
    segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]])
    positions = jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0]])
    forward = jax.jit(lambda x: policy(x, positions, segments > 0, None, segments).logits_BTV)
    base, changed = forward(tokens), forward(tokens.at[0, :3].set(jnp.asarray([40, 41, 42])))
    np.testing.assert_array_equal(np.asarray(base)[0, 3:7], np.asarray(changed)[0, 3:7])
    assert not np.allclose(np.asarray(base)[0, :3], np.asarray(changed)[0, :3])


@pytest.mark.parametrize("family,row_length,packed_rows", [("qwen3_moe", None, 4), ("deepseek_v3", 28, 2)])
def test_packed_step_equals_padded(family, row_length, packed_rows):
    """The jitted GRPO step (SGD at lr 1: the parameters move by the gradient) on the packed and the padded
    batch, with 2 micro-batches, routing replay, TIS, the balance loss, the KL to a reference and mu > 1's old
    log-probs, those two computed ahead on each layout as the trainer computes them (`reference_logprobs`
    over the update's micro-batches): equal metrics and updates. Rows of T = 14 hold two of these sequences,
    rows of 28 a micro-batch's four."""
    cfg = dataclasses.replace(FAMILIES[family], num_hidden_layers=2)
    optimizer = skip_nonfinite(optax.sgd(1.0))
    graphdef, state = init_train_state(init_policy(cfg, 0), optimizer, with_ref=False)
    reference = split_policy(init_policy(cfg, 1))[1:]  # other weights: a KL far from 0
    grpo = GRPOConfig(group_size=4, kl_coef=0.05, temperature=0.7, tis_cap=2.0, num_iterations=2)
    update = UpdateConfig(micro_batches=2, aux_loss_coef=0.01, routing_replay=True)
    step = jax.jit(make_grpo_step(graphdef, optimizer, grpo, update, cfg, None, bias_rate=0.01))
    logp = jax.jit(functools.partial(reference_logprobs, micro_batches=2), static_argnums=(0, 3))
    rollout = make_rollout(cfg)
    padded = rollout_batch(rollout, jnp.linspace(-1.0, 1.0, 8), grpo, NEW, with_replay=True)
    plan = plan_packing(np.asarray(rollout.valid_BT), micro_batches=2, row_length=row_length)
    assert plan.rows == packed_rows
    packed = jax.tree.map(jnp.asarray, pack_batch(padded, plan))
    for batch in (padded, packed):
        batch["ref_logp"] = logp(graphdef, reference, batch, grpo.temperature)
        batch["old_logp"] = logp(graphdef, (state.params, state.bias), batch, grpo.temperature)
    # the micro-batch split leaves each row's log-probs as one forward over the whole padded batch has them
    whole = jax.jit(reference_logprobs, static_argnums=(0, 3))(graphdef, reference, padded, grpo.temperature)
    np.testing.assert_allclose(np.asarray(packed["ref_logp"]), np.asarray(whole), atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(padded["ref_logp"]), np.asarray(whole), atol=2e-5, rtol=0)
    a, metrics_a = step(state, padded)
    b, metrics_b = step(state, packed)
    assert float(metrics_a["kl"]) > 0.01  # (0.024 here: small random weights)
    for key in metrics_a:
        assert float(metrics_b[key]) == pytest.approx(float(metrics_a[key]), rel=1e-5, abs=1e-6), key
    for x, y in zip(jax.tree.leaves((a.params, a.bias)), jax.tree.leaves((b.params, b.bias))):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6, rtol=1e-5)


def _spans(lengths, t):
    """Rows of `t` slots whose first `lengths[b]` tokens are real."""
    return np.arange(t) < np.asarray(lengths)[:, None]


def test_sequences_go_longest_first_into_the_first_row_with_room():
    """Lengths 3, 3, 7, 7 in rows of 10: first-fit decreasing fills two rows exactly (7 + 3 each); smallest
    first would take three (3 + 3, 7, 7), and a row with exactly the room left must still take a sequence."""
    plan = plan_packing(_spans([3, 3, 7, 7], 10))
    assert plan.rows == 2
    np.testing.assert_array_equal(plan.segments_RT > 0, np.ones((2, 10), bool))  # no padding left
    np.testing.assert_array_equal(plan.segments_RT[:, :7], 1)  # the 7 first, then the 3
    np.testing.assert_array_equal(plan.segments_RT[:, 7:], 2)


def test_a_row_length_shorter_than_the_padded_rows_is_raised_to_theirs():
    """`grpo.pack_length` below a step's padded row length T is raised to T: a full row still fits."""
    valid = _spans([14, 5, 9, 2], 14)
    plan = plan_packing(valid, row_length=4)
    assert plan.src_RT.shape[1] == 14
    np.testing.assert_array_equal(np.sort(plan.src_RT[plan.segments_RT > 0]), np.flatnonzero(valid))


def test_rounded_row_counts_never_exceed_the_padded_rows():
    """10 rows, 3 shapes: row counts are multiples of ceil(10 / 3) = 4, capped at the 10 padded rows; a batch
    with no real token still gets one row per group."""
    for needed, expected in [(1, 4), (4, 4), (5, 8), (8, 8), (9, 10), (10, 10)]:
        plan = plan_packing(_spans([9] * needed + [0] * (10 - needed), 16), shapes=3)
        assert plan.rows == expected, needed
    assert plan_packing(np.zeros((4, 6), bool), micro_batches=2).rows == 2


def test_padding_fraction_of_a_packed_layout_counts_its_own_slots():
    valid = _spans([3, 1, 0, 4], 5)  # 8 real tokens in 20 padded slots
    assert padding_fraction(valid) == pytest.approx(1 - 8 / 20)
    assert padding_fraction(valid, slots=10) == pytest.approx(1 - 8 / 10)  # 2 packed rows of 5
