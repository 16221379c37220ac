"""The KV-cache sampler against full forward passes, the trainer's log-probs (routing replay included),
EOS, seeds and sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.errors import UserError
from r1jax.model.factory import init_policy
from r1jax.rl.grpo.config import GRPOConfig
from r1jax.rl.grpo.step import grpo_micro_loss, reference_logprobs, rollout_batch
from r1jax.rl.sampler import Sampler, SamplingConfig, filter_logits, generate_padded, left_pad, sample_token
from r1jax.rl.update import UpdateConfig, split_policy
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import state_shardings
from r1jax.sharding.rules import Rules
from tests.model.tiny import FAMILIES

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20], [30, 31]]
CONFIG = SamplingConfig(max_new_tokens=10, prompt_buckets=(8, 16))
# G = 2 draws at T 0.7, top-p 0.9 (filtered): one program per family, shared by the tests that sample so
SAMPLED = dict(samples=2, temperature=0.7, top_p=0.9)
# greedy to the budget with the logits kept: one program per family, shared likewise
GREEDY = dict(temperature=0.0, ignore_eos=True, keep_logits=True)


def make(family, seed=0):
    graphdef, state = nnx.split(init_policy(FAMILIES[family], seed))
    return graphdef, state, Sampler(graphdef, CONFIG, stop_ids=(3,), pad_id=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_step_logits_equal_full_forward(family):
    graphdef, state, sampler = make(family)
    r = sampler.generate(state, PROMPTS, **GREEDY)
    policy = nnx.merge(graphdef, state)
    full = jax.jit(lambda t, p, v: policy(t, p, v).logits_BTV)(r.tokens_BT, r.positions_BT, r.valid_BT)
    expected_BNV = np.asarray(full)[:, r.prompt_length - 1: -1]
    np.testing.assert_allclose(np.asarray(r.logits_BNV), expected_BNV, atol=1e-5, rtol=0)
    assert np.array_equal(np.asarray(r.completion_BN), expected_BNV.argmax(-1))  # greedy = argmax
    logp = jax.nn.log_softmax(expected_BNV, axis=-1)
    chosen = np.take_along_axis(np.asarray(logp), np.asarray(r.completion_BN)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(r.logprobs_BN), chosen, atol=1e-5)  # T = 0: log-softmax


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sampler_logprobs_equal_trainer_logprobs(family):
    """The GRPO trainer's own path (rollout_batch, then the policy's log-probs as reference_logprobs scores
    them), with and without routing replay."""
    graphdef, state, sampler = make(family)
    r = sampler.generate(state, PROMPTS, **SAMPLED)
    graphdef, params, bias = split_policy(nnx.merge(graphdef, state))
    for with_replay in (False, True):
        batch = rollout_batch(r, jnp.zeros(len(r.tokens_BT)), GRPOConfig(), CONFIG.max_new_tokens, with_replay)
        logp = reference_logprobs(graphdef, (params, bias), batch, 0.7)
        mask = np.asarray(batch["mask"])
        assert mask.sum() == np.asarray(r.completion_mask_BN).sum() > 0
        np.testing.assert_allclose(np.asarray(logp)[mask], np.asarray(batch["sampler_logp"])[mask], atol=1e-5)


def test_routing_replay_reproduces_sampling_time_routes_after_the_router_changes():
    # DeepSeek's e_score_correction_bias steers which experts are chosen and nothing else (the combine
    # weights are the unbiased scores). Changing it after sampling makes the policy route differently; with
    # the sampler's routes replayed, the trainer must still get the sampler's log-probs, without them not.
    graphdef, state, sampler = make("deepseek_v3")
    r = sampler.generate(state, PROMPTS, **SAMPLED)
    split_graphdef, params, bias = split_policy(nnx.merge(graphdef, state))
    moved = jax.tree.map(lambda b: jax.random.normal(jax.random.key(7), b.shape), bias)  # scores are in (0, 1)
    mask = np.asarray(r.completion_mask_BN)
    logp = {}
    for with_replay in (True, False):  # the trainer's path: rollout_batch, then the policy's log-probs
        batch = rollout_batch(r, jnp.zeros(len(r.tokens_BT)), GRPOConfig(), CONFIG.max_new_tokens, with_replay)
        assert np.array_equal(np.asarray(batch["mask"]).sum(), mask.sum())
        target = np.asarray(batch["mask"])
        sampled = np.asarray(batch["sampler_logp"])[target]
        logp[with_replay] = np.asarray(reference_logprobs(split_graphdef, (params, moved), batch, 0.7))[target]
    # measured: 5e-7 apart replayed (float rounding), 0.035 apart unreplayed (91% of the routes moved); the
    # bounds 1e-5 and 1e-3 sit far from both
    np.testing.assert_allclose(logp[True], sampled, atol=1e-5)
    assert np.abs(logp[False] - sampled).max() > 1e-3

    # the GRPO step's loss replays the batch's routes too: its sampler/trainer mismatch vanishes
    cfg = GRPOConfig(group_size=2, kl_coef=0.0, temperature=0.7)  # the sampling temperature
    loss_fn = grpo_micro_loss(split_graphdef, cfg, UpdateConfig(routing_replay=True), micro_batches=1)
    adv = jnp.linspace(-1.0, 1.0, len(PROMPTS) * 2)
    for with_replay, low, high in ((True, 0.0, 1e-5), (False, 1e-3, np.inf)):
        batch = rollout_batch(r, adv, cfg, CONFIG.max_new_tokens, with_replay=with_replay)
        _, (stats, _) = loss_fn(params, moved, None, batch)
        assert low <= float(stats["sampler_logp_absdiff_max"]) <= high, with_replay


def test_eos_stops_a_row_and_pads_after_it():
    """Row 0's third greedy token made the stop token: the program test_a_row_stops_at_any_of_several_stop_ids
    runs with that id alone."""
    graphdef, state, sampler = make("qwen3_moe")
    free = sampler.generate(state, PROMPTS, **GREEDY)
    eos = int(free.completion_BN[0, 2])
    stopping = Sampler(graphdef, CONFIG, stop_ids=(eos,), pad_id=0)
    r = stopping.generate(state, PROMPTS, temperature=0.0)
    row = np.asarray(r.completion_BN[0])
    stop = int(np.argmax(row == eos))
    assert stop <= 2 and int(r.lengths_B[0]) == stop + 1
    assert np.all(row[stop + 1:] == 0) and not np.any(np.asarray(r.completion_mask_BN[0, stop + 1:]))
    assert np.all(np.asarray(r.logprobs_BN[0, stop + 1:]) == 0)
    for i in range(len(PROMPTS)):  # every row stops at its first EOS or runs to the budget
        hits = np.flatnonzero(np.asarray(r.completion_BN[i]) == eos)
        assert int(r.lengths_B[i]) == (hits[0] + 1 if hits.size else CONFIG.max_new_tokens)


def test_loop_exits_early_when_every_row_has_stopped():
    """Four copies of row 0's prompt (PROMPTS' shape) stopping on its third greedy token: the program
    test_eos_stops_a_row_and_pads_after_it runs; every row stops there, so the loop ends after 3 of 10 steps."""
    graphdef, state, sampler = make("qwen3_moe")
    free = sampler.generate(state, PROMPTS, **GREEDY)  # row 0: [5, 6, 7]'s greedy completion
    eos = int(free.completion_BN[0, 2])
    r = Sampler(graphdef, CONFIG, stop_ids=(eos,), pad_id=0).generate(state, [[5, 6, 7]] * 4, temperature=0.0)
    stop = int(np.argmax(np.asarray(free.completion_BN[0]) == eos))  # its first EOS (<= 2)
    assert np.all(np.asarray(r.lengths_B) == stop + 1)
    assert int(r.steps) == stop + 1 <= 3 < CONFIG.max_new_tokens


def test_same_seed_reproduces_and_another_seed_differs():
    graphdef, state, _ = make("deepseek_v3")  # every draw here runs the SAMPLED program
    a = Sampler(graphdef, CONFIG, (3,), 0, seed=1).generate(state, PROMPTS, **SAMPLED)
    b = Sampler(graphdef, CONFIG, (3,), 0, seed=1).generate(state, PROMPTS, **SAMPLED)
    c = Sampler(graphdef, CONFIG, (3,), 0, seed=2).generate(state, PROMPTS, **SAMPLED)
    assert np.array_equal(np.asarray(a.tokens_BT), np.asarray(b.tokens_BT))
    assert not np.array_equal(np.asarray(a.tokens_BT), np.asarray(c.tokens_BT))
    sampler = Sampler(graphdef, CONFIG, (3,), 0, seed=1)  # successive calls never reuse a key
    first, second = (sampler.generate(state, PROMPTS, **SAMPLED) for _ in range(2))
    assert not np.array_equal(np.asarray(first.tokens_BT), np.asarray(second.tokens_BT))


def numpy_filter(row: np.ndarray, k: int, p: float) -> np.ndarray:
    """Reference: keep the top k (ties with the k-th kept), then the smallest prefix of them, by
    probability renormalised over the kept ones, whose mass before it is below p (its ties kept)."""
    keep = np.ones(row.shape, bool) if k == 0 else row >= np.sort(row)[::-1][min(k, row.size) - 1]
    values = np.sort(row[keep])[::-1]
    probs = np.exp(values - values.max()) / np.exp(values - values.max()).sum()
    prefix = (np.cumsum(probs) - probs) < p
    return keep & (row >= values[prefix].min())


@pytest.mark.parametrize("top_k,top_p", [(5, 0.5), (0, 0.9), (3, 1.0), (0, 1.0), (1, 0.9), (40, 0.3), (0, 1e-6)])
def test_filter_logits_matches_numpy(top_k, top_p):
    logits = np.array(jax.random.normal(jax.random.key(0), (4, 20)))
    logits[3, :6] = 2.5  # a tie across the k-th value and inside the nucleus
    out = np.asarray(filter_logits(jnp.asarray(logits), jnp.int32(top_k), jnp.float32(top_p)))
    for row, kept in zip(logits, out):
        expected = numpy_filter(row, top_k, top_p)
        assert np.array_equal(np.isfinite(kept), expected)
        assert np.array_equal(kept[expected], row[expected])


EXACT_LOGITS = np.log(np.array([[4.0, 2.0, 1.0, 1.0], [1.0, 1.0, 2.0, 4.0]], np.float32))  # p: 1/2, 1/4, 1/8, 1/8


@pytest.mark.parametrize("top_p,kept", [(0.5, 1), (0.75, 2), (0.875, 4), (0.5000001, 2)])
def test_top_p_drops_a_token_whose_mass_before_it_equals_p(top_p, kept):
    """Exact float32 masses before each token (0, 0.5, 0.75, 0.875): a token whose prior mass equals top_p goes,
    as in transformers' TopPLogitsWarper and vLLM (0.875: the last two tie, so both stay)."""
    out = np.isfinite(np.asarray(filter_logits(jnp.asarray(EXACT_LOGITS), jnp.int32(0), jnp.float32(top_p))))
    for row, order in zip(out, np.argsort(-EXACT_LOGITS, axis=-1, kind="stable")):
        assert row.sum() == kept and row[order[:kept]].all(), row
    if top_p in (0.5, 0.75):
        import torch  # the test extra's, imported here only
        import transformers
        theirs = transformers.TopPLogitsWarper(top_p)(None, torch.tensor(EXACT_LOGITS)).numpy()
        assert np.array_equal(out, np.isfinite(theirs))


def test_top_p_one_beside_top_k_keeps_the_top_k_whole():
    """Probabilities 0.665, 0.245, 0.09, then ~1e-9: float32's running sum reached 1.0 at the fourth token, so
    top_p = 1 (off) beside top_k = 6 kept 3 (HF and vLLM skip the nucleus at p = 1)."""
    logits = jnp.asarray([[10.0, 9.0, 8.0, -10.0, -11.0, -12.0, -13.0]])
    kept = np.isfinite(np.asarray(filter_logits(logits, jnp.int32(6), jnp.float32(1.0))))
    assert kept.tolist() == [[True] * 6 + [False]]


def test_sample_token_skips_no_op_filters_and_draws_greedy_without_noise():
    logits = jax.random.normal(jax.random.key(1), (6, 50)) * 3
    key = jax.random.key(2)
    token, logp = sample_token(logits, key, jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0))
    assert np.array_equal(token, jax.random.categorical(key, logits, axis=-1))
    np.testing.assert_allclose(logp, jnp.take_along_axis(jax.nn.log_softmax(logits), token[:, None], -1)[:, 0],
                               rtol=1e-6)
    token, logp = sample_token(logits, key, jnp.float32(0.0), jnp.int32(0), jnp.float32(0.9))
    assert np.array_equal(token, jnp.argmax(logits, axis=-1))
    token, _ = sample_token(logits, key, jnp.float32(0.5), jnp.int32(2), jnp.float32(1.0))
    top2 = np.argsort(np.asarray(logits), axis=-1)[:, -2:]
    assert all(t in row for t, row in zip(np.asarray(token), top2))


def test_prompts_in_one_bucket_share_one_compilation():
    graphdef, state, sampler = make("qwen3_moe")
    # both calls filter (top_p < 1: SamplingConfig.filters, a static argument), so whether another test in this
    # process compiled the other program first cannot change the count; temperature and top_k are traced (the
    # first call is the SAMPLED program)
    sampler.generate(state, PROMPTS, **SAMPLED)
    before = generate_padded._cache_size()
    other = [[1, 2, 3, 4, 5, 6, 7], [4], [1, 2, 3, 4, 5, 6, 7, 8], [9, 9]]  # same bucket (8)
    sampler.generate(state, other, **{**SAMPLED, "temperature": 0.5}, top_k=3)
    assert generate_padded._cache_size() == before
    tokens, valid = left_pad([[1, 2, 3], [4]], (8, 16), pad_id=0)
    assert tokens.shape == (2, 8) and valid.sum() == 4 and tokens[1, -1] == 4


def test_a_prompt_that_fills_a_bucket_exactly_takes_that_bucket():
    """A prompt of exactly a bucket's length fits it (not the next: twice the prefill), and one of the largest
    bucket's length is no error (SFT rows of exactly max_sequence_length take the same function)."""
    from r1jax.rl.sampler import bucket_length

    assert [bucket_length(n, (8, 16)) for n in (1, 8, 9, 16)] == [8, 8, 16, 16]
    assert left_pad([list(range(1, 9))], (8, 16), pad_id=0)[0].shape == (1, 8)
    with pytest.raises(UserError, match="longer than the largest prompt bucket"):
        bucket_length(17, (8, 16))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sharded_sampling_equals_unsharded(family):
    """4 prompts x G 2 = 8 rows: the batch splits over the 8 devices; unsharded, the SAMPLED program."""
    graphdef, state, sampler = make(family)
    key = jax.random.key(11)
    expected = sampler.generate(state, PROMPTS, key=key, **SAMPLED)
    mesh = build_mesh(ShardingConfig(data=2, fsdp=2, expert=2, tensor=1))
    rules = Rules.preset("fsdp_expert_tensor")
    sharded = jax.device_put(state, state_shardings(state, mesh, rules))
    with use_mesh(mesh, rules):
        got = sampler.generate(sharded, PROMPTS, key=key, **SAMPLED)
    assert got.tokens_BT.shape[0] == 8
    assert np.array_equal(np.asarray(got.tokens_BT), np.asarray(expected.tokens_BT))
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(expected.logprobs_BN), atol=1e-5)


def test_sampling_fewer_rows_than_devices_in_the_training_layout_equals_unsharded():
    """3 rows (prefill 3 x 8 tokens, decode steps of 3) do not divide data x fsdp x expert: the dispatch pads
    them to a multiple (model.dispatch._pad_tokens), where the FSDP-split experts failed to trace."""
    graphdef, state, sampler = make("qwen3_moe")
    prompts, key = PROMPTS[:3], jax.random.key(11)
    expected = sampler.generate(state, prompts, key=key, ignore_eos=True)
    mesh = build_mesh(ShardingConfig(data=1, fsdp=2, expert=2, tensor=2))
    rules = Rules.preset("fsdp_expert_tensor")
    with use_mesh(mesh, rules):
        got = sampler.generate(jax.device_put(state, state_shardings(state, mesh, rules)), prompts, key=key,
                               ignore_eos=True)
    assert np.array_equal(np.asarray(got.tokens_BT), np.asarray(expected.tokens_BT))
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(expected.logprobs_BN), atol=1e-5)


def test_a_row_stops_at_any_of_several_stop_ids():
    """Two stop ids (Qwen3's <|im_end|> and <|endoftext|>): each row stops at the first of either."""
    graphdef, state, sampler = make("qwen3_moe")
    free = np.asarray(sampler.generate(state, PROMPTS, **GREEDY).completion_BN)
    first, second = int(free[0, 2]), int(free[1, 4])  # row 0 meets `first`, row 1 meets `second`
    r = Sampler(graphdef, CONFIG, stop_ids=(first, second), pad_id=0).generate(state, PROMPTS, temperature=0.0)
    for i, row in enumerate(free):
        hits = np.flatnonzero(np.isin(row, (first, second)))
        expected = hits[0] + 1 if hits.size else CONFIG.max_new_tokens
        assert int(r.lengths_B[i]) == expected
        assert np.array_equal(np.asarray(r.completion_BN[i, :expected]), row[:expected])
    assert int(r.lengths_B[0]) <= 3 and int(r.lengths_B[1]) <= 5
    alone = Sampler(graphdef, CONFIG, stop_ids=(first,), pad_id=0).generate(state, PROMPTS, temperature=0.0)
    assert int(alone.lengths_B[1]) > int(r.lengths_B[1])  # the second id is what stopped row 1


def test_a_model_vocabulary_padded_past_the_tokenizer_never_samples_a_padded_id():
    """Ids >= the tokenizer's vocab_size get -inf before the draw, even when their logits are huge; the
    log-probs stay those of the whole vocabulary (the trainer's). Unmasked, with stop id 3, the draws run the
    programs test_a_tokenizer_filling_the_vocabulary_compiles_no_mask and SAMPLED run."""
    graphdef, state, _ = make("qwen3_moe")
    limit = 100  # a tokenizer of 100 tokens on a model of 128 rows
    pure = nnx.to_pure_dict(state)
    pure["lm_head"] = pure["lm_head"].at[:, limit:].multiply(1000.0)  # padded rows: logits of +-1000s
    nnx.replace_by_pure_dict(state, pure)
    for kwargs in ({"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 1.0, "top_k": 5, "top_p": 0.9}):
        unmasked = Sampler(graphdef, CONFIG, (3,), 0, seed=3).generate(state, PROMPTS, samples=2, **kwargs)
        assert np.any(np.asarray(unmasked.completion_BN) >= limit), kwargs  # without the mask they win
        masked = Sampler(graphdef, CONFIG, (), 0, seed=3, vocab_size=limit).generate(
            state, PROMPTS, samples=2, keep_logits=True, **kwargs)
        completion = np.asarray(masked.completion_BN)
        assert completion.max() < limit, kwargs
        logits = np.asarray(masked.logits_BNV) / (kwargs["temperature"] or 1.0)
        expected = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), completion[..., None], -1)[..., 0]
        np.testing.assert_allclose(np.asarray(masked.logprobs_BN), expected, atol=1e-4)


def test_a_tokenizer_filling_the_vocabulary_compiles_no_mask():
    """vocab_size == the model's: the same program and samples as no limit (the default run's case)."""
    graphdef, state, _ = make("qwen3_moe")
    plain = Sampler(graphdef, CONFIG, (3,), 0, seed=4).generate(state, PROMPTS, samples=2)
    full = Sampler(graphdef, CONFIG, (3,), 0, seed=4, vocab_size=FAMILIES["qwen3_moe"].vocab_size)
    same = full.generate(state, PROMPTS, samples=2)
    assert np.array_equal(np.asarray(plain.tokens_BT), np.asarray(same.tokens_BT))
    assert np.array_equal(np.asarray(plain.logprobs_BN), np.asarray(same.logprobs_BN))
    args = (jnp.zeros((2, 128)), jax.random.key(0), jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0))
    assert str(jax.make_jaxpr(sample_token)(*args)) == str(
        jax.make_jaxpr(lambda *a: sample_token(*a, vocab_size=128))(*args))
