"""The sampler (fixed batch and continuous batching) against independent references: a one-prompt-at-a-time
greedy loop over the model's plain forward pass (no cache, no left padding), NumPy's top-k / top-p /
temperature, the trainer's recomputed log-probs; and the bad inputs the library refuses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.errors import UserError
from r1jax.model.factory import init_policy
from r1jax.rl.decoding import sample_token
from r1jax.rl.grpo.config import GRPOConfig
from r1jax.rl.grpo.step import reference_logprobs, rollout_batch
from r1jax.rl.sampler import Sampler, SamplingConfig
from r1jax.rl.update import split_policy
from tests.model.tiny import QWEN

BUDGET, BUCKET = 6, 8
# very different lengths: one token, one that fills the bucket exactly, three
PROMPTS = [[20], [9, 10, 11, 12, 13, 14, 15, 16], [5, 6, 7]]
# 7: more slots than rows (G 2 alone: 6 rows; G 1's 3 rows in 7 slots are the same case). Two slots and a tail of
# one: test_block_wise_cache_reads_give_the_uncached_loops_rows (read block-wise; read whole, the tail loops equal
# the fixed batch in tests/rl/test_continuous.py)
SLOTS = [{}, dict(slots=1), dict(slots=7)]


@functools.lru_cache(maxsize=None)
def _policy():
    graphdef, state = nnx.split(init_policy(QWEN, seed=0))
    policy = nnx.merge(graphdef, state)
    width = BUCKET + BUDGET
    forward = jax.jit(lambda t, v: policy(t, jnp.arange(width)[None], v).logits_BTV[0])

    def reference(prompt, stop_ids):
        """Greedy, one prompt alone, right-padded (causal: pads after a token change nothing before it):
        (tokens, log-probs under log_softmax(logits)), stopping at a stop id or the budget."""
        tokens, logps = list(prompt), []
        while len(logps) < BUDGET:
            padded = np.zeros((1, width), np.int32)
            padded[0, :len(tokens)] = tokens
            valid = np.arange(width)[None] < len(tokens)
            logits = np.asarray(forward(padded, valid), np.float64)[len(tokens) - 1]
            token = int(np.argmax(logits))
            logps.append(logits[token] - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max())
            tokens.append(token)
            if token in stop_ids:
                break
        return tokens[len(prompt):], logps
    return graphdef, state, reference


def _sampler(stop_ids, **config):
    graphdef, state, _ = _policy()
    config = dict(dict(max_new_tokens=BUDGET, prompt_buckets=(BUCKET,)), **config)
    return Sampler(graphdef, SamplingConfig(**config), stop_ids=stop_ids, pad_id=0), state


def _stop_ids():
    """Prompt 0's first greedy token (an EOS as the first generated token) and prompt 2's third (a second id):
    each row must stop on either."""
    _, _, reference = _policy()
    first, third = reference(PROMPTS[0], ())[0][0], reference(PROMPTS[2], ())[0][2]
    return (first, third)


@pytest.mark.parametrize("slots", SLOTS)
def test_greedy_rows_equal_an_uncached_loop_one_prompt_at_a_time(slots):
    _check_greedy_rows(slots)


@pytest.mark.parametrize("options", [dict(kv_block=4), dict(slots=2, tail_slots=(1,), kv_block=4)])
def test_block_wise_cache_reads_give_the_uncached_loops_rows(options):
    """A 14-slot cache read in blocks of 4 (past model.kv_cache's two-block dense read; cache phases need a
    budget past 8 slots: tests/rl/test_cache_phases.py)."""
    _check_greedy_rows(options)


def _check_greedy_rows(slots):
    _, _, reference = _policy()
    stop_ids = _stop_ids()
    sampler, state = _sampler(stop_ids)
    for samples in (2,) if slots.get("slots") == 7 else (1, 2):
        r = sampler.generate(state, PROMPTS, samples=samples, temperature=0.0, **slots)
        tokens, lengths = np.asarray(r.completion_BN), np.asarray(r.lengths_B)
        logps, mask = np.asarray(r.logprobs_BN), np.asarray(r.completion_mask_BN)
        assert r.prompt_length == BUCKET and tokens.shape == (len(PROMPTS) * samples, BUDGET)
        for p, prompt in enumerate(PROMPTS):
            expected, expected_logp = reference(prompt, stop_ids)
            for row in range(p * samples, (p + 1) * samples):  # prompt-major
                n = len(expected)
                assert lengths[row] == n and tokens[row, :n].tolist() == expected, (slots, samples, row)
                assert np.all(tokens[row, n:] == 0) and mask[row].tolist() == [True] * n + [False] * (BUDGET - n)
                np.testing.assert_allclose(logps[row, :n], expected_logp, atol=2e-5)
                assert np.all(logps[row, n:] == 0)
        assert lengths[0] == 1 and tokens[0, 0] == stop_ids[0]  # an EOS first
        assert lengths[-1] == 3 and tokens[-1, 2] == stop_ids[1]  # the other stop id
        assert BUDGET in lengths.tolist()  # a row stopped exactly at the budget
        valid = np.asarray(r.valid_BT)
        assert valid[samples, :BUCKET].all()  # the bucket-filling prompt: every slot real
        assert np.array_equal(np.asarray(r.positions_BT), np.maximum(np.cumsum(valid, 1) - 1, 0))


def _nucleus(logits, temperature, top_k, top_p):
    """NumPy: the ids top-k then top-p keep of softmax(logits / T)."""
    scaled = np.asarray(logits, np.float64) / temperature
    order = np.argsort(-scaled, kind="stable")
    keep = order[:top_k] if top_k else order
    probs = np.exp(scaled[keep] - scaled[keep].max())
    probs /= probs.sum()
    before = np.cumsum(probs) - probs
    return set(keep[(before < top_p) | (top_p >= 1)].tolist())


@pytest.mark.parametrize("top_k,top_p", [(0, 0.6), (3, 1.0), (5, 0.8)])
def test_sampled_tokens_lie_in_numpys_nucleus_with_log_probs_of_the_unfiltered_softmax(top_k, top_p):
    sampler, state = _sampler(())
    t, continuous = 1.3, []
    for slots in ({}, dict(slots=1), dict(slots=5, tail_slots=(2,))):
        r = sampler.generate(state, PROMPTS, samples=3, key=jax.random.key(1), temperature=t, top_k=top_k,
                             top_p=top_p, keep_logits=True, **slots)
        logits, tokens = np.asarray(r.logits_BNV, np.float64), np.asarray(r.completion_BN)
        logps = np.asarray(r.logprobs_BN)
        for row in range(tokens.shape[0]):
            for n in range(BUDGET):
                assert tokens[row, n] in _nucleus(logits[row, n], t, top_k, top_p), (slots, row, n)
                scaled = logits[row, n] / t
                expected = scaled[tokens[row, n]] - np.log(np.sum(np.exp(scaled - scaled.max()))) - scaled.max()
                assert abs(logps[row, n] - expected) < 2e-5, (slots, row, n)
        if slots:
            continuous.append(tokens)
    assert np.array_equal(continuous[0], continuous[1])  # seeded rows whatever the slot count
    assert len({tuple(row) for row in continuous[0]}) > len(PROMPTS)  # a prompt's samples differ


def test_a_draw_follows_numpys_filtered_distribution():
    """4,000 draws from one row: the frequencies of the ids top-k 4 / top-p 0.85 at T 0.7 keep (by hand: 0, 1, 2;
    id 6 holds 0.111 after 0.888) are NumPy's renormalised probabilities (each within 4 standard errors), and no
    other id is drawn."""
    logits = np.array([2.0, 1.5, 1.4, 0.3, 0.2, -1.0, 1.0, 0.0], np.float32)
    t, top_k, top_p, draws = 0.7, 4, 0.85, 4000
    keys = jax.random.split(jax.random.key(0), draws)
    tokens, _ = jax.jit(jax.vmap(lambda key: sample_token(jnp.asarray(logits)[None], key, jnp.float32(t),
                                                          jnp.int32(top_k), jnp.float32(top_p))))(keys)
    counts = np.bincount(np.asarray(tokens)[:, 0], minlength=len(logits)) / draws
    kept = sorted(_nucleus(logits, t, top_k, top_p))
    probs = np.zeros(len(logits))
    probs[kept] = np.exp(logits[kept] / t - np.max(logits[kept] / t))
    probs /= probs.sum()
    assert kept == [0, 1, 2] and np.all(counts[probs == 0] == 0)
    np.testing.assert_array_less(np.abs(counts - probs), 4 * np.sqrt(probs * (1 - probs) / draws) + 1e-9)


@pytest.mark.parametrize("slots", [{}, dict(slots=5, tail_slots=(2,))])
def test_top_k_one_tiny_top_p_and_tiny_temperature_draw_the_greedy_tokens(slots):
    """Every call keeps the logits (an output only: the draws are the same) with 3 samples: the filtered draws
    run the very programs test_sampled_tokens_... compiles (same slots, samples, stop ids, filters on), the
    unfiltered ones (T 0 and T 0.001) one more program per slot count."""
    policy = init_policy(QWEN, seed=0)
    policy.lm_head[...] = policy.lm_head[...] * 100  # the tiny model's top two logits lie 0.002 apart
    graphdef, state = nnx.split(policy)
    sampler = Sampler(graphdef, SamplingConfig(max_new_tokens=BUDGET, prompt_buckets=(BUCKET,)), (), pad_id=0)
    greedy = sampler.generate(state, PROMPTS, samples=3, temperature=0.0, keep_logits=True, **slots)
    expected = np.asarray(greedy.tokens_BT)
    logits = np.asarray(greedy.logits_BNV, np.float64)
    top2 = -np.sort(-logits, axis=-1)[..., :2]
    assert np.min(top2[..., 0] - top2[..., 1]) > 0.05  # T 0.001: a gap of > 50 for Gumbel noise
    for options in (dict(top_k=1), dict(top_p=1e-6), dict(temperature=0.001)):
        sampled = sampler.generate(state, PROMPTS, samples=3, key=jax.random.key(2), keep_logits=True,
                                   **{"temperature": 1.0, **options}, **slots)
        assert np.array_equal(np.asarray(sampled.tokens_BT), expected), options
    tiny = sampled  # the T 0.001 draw
    # T 0: log-probs of softmax(logits); T 0.001: of softmax(logits / 0.001), the greedy token's ~0
    chosen = np.take_along_axis(logits, np.asarray(greedy.completion_BN)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(greedy.logprobs_BN),
                               chosen - np.log(np.sum(np.exp(logits), -1)), atol=2e-5)
    # ~0 to float32 rounding of logits / T near 1e5 (log-probs a hair above 0 included)
    np.testing.assert_allclose(np.asarray(tiny.logprobs_BN), 0.0, atol=5e-3)


def test_continuous_batching_log_probs_equal_the_trainers_recomputed_ones():
    """Sampled by the program test_sampled_tokens_... compiles (5 slots, a tail of 2, 3 samples, kept logits:
    an output rollout_batch does not read)."""
    graphdef, _, _ = _policy()
    sampler, state = _sampler(())
    r = sampler.generate(state, PROMPTS, samples=3, temperature=0.7, top_k=5, top_p=0.9, slots=5,
                         tail_slots=(2,), keep_logits=True)
    graphdef, params, bias = split_policy(nnx.merge(graphdef, state))
    for with_replay in (False, True):
        batch = rollout_batch(r, jnp.zeros(len(r.tokens_BT)), GRPOConfig(), BUDGET, with_replay)
        logp = np.asarray(reference_logprobs(graphdef, (params, bias), batch, 0.7))
        mask = np.asarray(batch["mask"])
        assert mask.sum() == np.asarray(r.lengths_B).sum() > 0
        np.testing.assert_allclose(logp[mask], np.asarray(batch["sampler_logp"])[mask], atol=1e-5)


@pytest.mark.parametrize("prompts,samples,options,match", [
    ([[5] * (BUCKET + 1)], 1, {}, "longer than the largest prompt bucket"),
    ([[5]], 1, dict(max_new_tokens=0), "sampling.max_new_tokens=0"),
    ([[5]], 1, dict(top_p=0.0), "sampling.top_p=0.0"),
    ([[5]], 1, dict(slots=-1), "sampling.slots=-1"),
    ([[5]], 1, dict(temperature=-0.5), "sampling.temperature=-0.5"),
    ([], 1, {}, "at least one token"),
    ([[5], []], 1, {}, "at least one token"),  # an empty prompt among others
    ([[5]], 0, {}, "samples=0"),  # was a TypeError from inside the jitted gather
    ([[5]], 0, dict(slots=2), "samples=0"),
])
def test_bad_input_is_one_user_error_naming_the_option(prompts, samples, options, match):
    sampler, state = _sampler(())
    with pytest.raises(UserError, match=match) as err:
        sampler.generate(state, prompts, samples, **{"temperature": 0.0, **options})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("vocab_size,prompt,match", [
    (50, [3, 50], "prompt 1: token id 50 is outside the vocabulary \\(ids 0 to 49\\)"),  # read row 0 before
    (None, [3, -1], "prompt 1: token id -1 is outside the vocabulary"),  # wrapped around to the last id
    (None, [3, 2**40], "prompt 1: token id 1099511627776 is outside"),  # an OverflowError in the padding
    (None, [3, 1.5], "prompt 1: token ids must be integers, not float64"),  # truncated to 1
])
def test_a_prompt_id_that_is_no_token_is_one_user_error(vocab_size, prompt, match):
    graphdef, state, _ = _policy()
    sampler = Sampler(graphdef, SamplingConfig(max_new_tokens=BUDGET, prompt_buckets=(BUCKET,)), stop_ids=(),
                      pad_id=0, vocab_size=vocab_size)
    with pytest.raises(UserError, match=match):
        sampler.generate(state, [[5], prompt], 1, temperature=0.0)
    # valid ids still sample (3 prompts x G 3, logits kept: without a vocab_size, the greedy program of
    # test_top_k_one_tiny_top_p_and_tiny_temperature_draw_the_greedy_tokens)
    ok = sampler.generate(state, [[5], [3, 49], [20]], 3, temperature=0.0, keep_logits=True)
    assert ok.lengths_B.shape == (9,)
