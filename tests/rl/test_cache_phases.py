"""The fixed-batch sampler's decode loop in phases over a cache that grows (`sampling.cache_phases`)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.errors import UserError
from r1jax.model.factory import init_policy
from r1jax.rl.continuous import generate_continuous
from r1jax.rl.decoding import phase_ends
from r1jax.rl.sampler import Sampler, SamplingConfig, generate_padded, left_pad
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import state_shardings
from r1jax.sharding.rules import Rules
from tests.model.tiny import FAMILIES

PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20], [30, 31]]
ONE_LOOP = SamplingConfig(max_new_tokens=20, prompt_buckets=(8, 16))
PHASED = dataclasses.replace(ONE_LOOP, cache_phases=3)  # phases end at completion slots 8, 16, 20


def test_phase_ends_split_the_budget_evenly_rounded_up_to_eight_slots():
    assert phase_ends(128, 4) == (32, 64, 96, 128)
    assert phase_ends(100, 3) == (40, 72, 100)  # ceil(100 / 3) = 34 -> 40, ceil(200 / 3) = 67 -> 72
    assert phase_ends(20, 3) == (8, 16, 20)
    assert phase_ends(17, 2) == (16, 17)  # ceil(17 / 2) = 9 -> 16 (the floor, 8, would end the first phase early)
    assert phase_ends(10, 4) == (8, 10)  # 3 -> 8, 5 -> 8 (an empty phase, dropped), 8 -> 8, 10
    assert phase_ends(5, 4) == (5,)  # a budget under the alignment: one phase
    assert phase_ends(128, 1) == (128,)


def test_cache_phases_must_be_a_positive_integer():
    for bad in (0, -2, 1.5):
        with pytest.raises(UserError, match="sampling.cache_phases"):
            SamplingConfig(cache_phases=bad)


@functools.cache
def _policy(family):
    return nnx.split(init_policy(FAMILIES[family], 0))


def _rollouts(family, config, stop_ids=(), state=None, **kwargs):
    """`state`: the family's policy state placed elsewhere (a mesh's shards); None: on one device."""
    graphdef, one_device = _policy(family)
    sampler = Sampler(graphdef, config, stop_ids=stop_ids, pad_id=0)
    return sampler.generate(one_device if state is None else state, PROMPTS, key=jax.random.key(5),
                            keep_logits=True, **kwargs)


def _assert_same_rollout(got, want):
    for field in ("tokens_BT", "valid_BT", "positions_BT", "lengths_B", "steps"):
        assert np.array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field))), field
    valid = np.asarray(want.valid_BT)  # a padding position attends to no key: its route means nothing
    assert np.array_equal(np.asarray(got.experts_LBTK)[:, valid], np.asarray(want.experts_LBTK)[:, valid])
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(want.logprobs_BN), atol=1e-5, rtol=0)
    drawn = np.asarray(want.completion_mask_BN)  # the logits each token was drawn from
    np.testing.assert_allclose(np.asarray(got.logits_BNV)[drawn], np.asarray(want.logits_BNV)[drawn], atol=1e-4,
                               rtol=0)


CUT = [20, 3, 9, 17, 2, 12, 5, 20]  # per row (prompt-major, G = 2): one row inside the first phase


def _first_stop_lengths(completion_BN, stop_ids, cut):
    """Each row's length when it stops after its first id in `stop_ids` or after its cut, whichever comes first."""
    lengths = []
    for row, limit in zip(np.asarray(completion_BN), cut):
        hits = np.flatnonzero(np.isin(row[:limit], stop_ids))
        lengths.append(int(hits[0]) + 1 if hits.size else limit)
    return lengths


def _cut(rollout, lengths):
    """`rollout` (run to the budget) as a fixed batch that ended row r after lengths[r] tokens gives it: pads,
    invalid, position clamped and log-prob 0 after; the loop run to the longest row (test_sampler.py's stop
    tests check the fixed batch's stops so)."""
    lengths = np.asarray(lengths, np.int32)
    tokens, valid = np.asarray(rollout.tokens_BT), np.asarray(rollout.valid_BT)
    p = rollout.prompt_length
    kept_BN = np.arange(tokens.shape[1] - p)[None, :] < lengths[:, None]
    valid = np.concatenate([valid[:, :p], kept_BN], axis=1)
    return rollout._replace(
        tokens_BT=np.concatenate([tokens[:, :p], np.where(kept_BN, tokens[:, p:], 0)], axis=1), valid_BT=valid,
        positions_BT=np.maximum(np.cumsum(valid, axis=1) - 1, 0), lengths_B=lengths,
        logprobs_BN=np.where(kept_BN, np.asarray(rollout.logprobs_BN), 0.0), steps=lengths.max())


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def reference(request):
    """One family's one-loop rollouts (G = 2, a fixed key), sampled (temperature 0.7) and greedy (the same
    program), run to the budget; the ids row 0 drew at completion slot 11 in either (inside the second phase)
    as stop ids; and the rollouts stopped at those with rows cut by `CUT`, each to-the-budget rollout cut after
    each row's first stop id or its cut (`_cut`: an independent reference, no second program). The phased and
    continuous-batching tests compare against these."""
    family = request.param
    to_budget = {t: _rollouts(family, ONE_LOOP, samples=2, temperature=t, ignore_eos=True) for t in (0.7, 0.0)}
    stop_ids = tuple(sorted({int(np.asarray(r.completion_BN)[0, 11]) for r in to_budget.values()}))
    stopped = {}
    for t, rollout in to_budget.items():
        lengths = _first_stop_lengths(rollout.completion_BN, stop_ids, CUT)
        assert lengths[0] <= 12 and max(lengths) > 16  # row 0 stops in phase 2; a row runs into phase 3
        stopped[t] = _cut(rollout, lengths)
    return family, to_budget, stop_ids, stopped


def test_phased_decoding_gives_the_one_loop_rollout(reference):
    """Sampled and greedy, running to the budget; then rows that stop at an id in different phases and rows cut
    by `row_max_new`, one of them inside the first phase."""
    family, to_budget, stop_ids, stopped = reference
    for t in (0.7, 0.0):
        _assert_same_rollout(_rollouts(family, PHASED, samples=2, temperature=t, ignore_eos=True), to_budget[t])
        _assert_same_rollout(_rollouts(family, PHASED, stop_ids=stop_ids, samples=2, temperature=t,
                                       row_max_new=CUT), stopped[t])


def test_continuous_batching_in_phases_gives_the_one_loop_fixed_batch_rollout(reference):
    """3 slots, then 1 in the tail, over rows of 2 to 20 tokens, greedy: long rows cross the phases' ends (8, 16)
    while short ones are admitted behind them, so a phase ends on the longest live row, not on the loop's step.
    (Sampled, continuous batching keys its draws by row and position, the fixed batch by step; that its
    completions do not depend on the slot count is tests/rl/test_continuous.py's.)"""
    family, _, stop_ids, stopped = reference
    greedy = _rollouts(family, PHASED, temperature=0.0, stop_ids=stop_ids, samples=2, row_max_new=CUT, slots=3,
                       tail_slots=(1,))
    _assert_same_rollout(greedy._replace(steps=stopped[0.0].steps), stopped[0.0])  # it runs more steps


def _traced_sampler(generate, name, **options):
    """The jitted program of sampler `generate` (named `name`): Qwen3-MoE, 4 prompts in a bucket of 8, 20
    new tokens, G = 2."""
    graphdef, state = _policy("qwen3_moe")
    tokens, valid = left_pad(PROMPTS, (8,), 0)
    jaxpr = jax.make_jaxpr(lambda s, t, v: generate(
        graphdef, s, t, v, jax.random.key(0), jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0), max_new=20,
        samples=2, stop_ids=(3,), pad_id=0, ignore_eos=False, **options))(state, tokens, valid)
    inner, = [e.params["jaxpr"].jaxpr for e in jaxpr.eqns if e.params.get("name") == name]
    return inner


def _decode_loop_slots(generate, name, rows, **options):
    """The cache slots of each top-level loop of the traced sampler `generate` (named `name`), read from its
    valid-slot mask ([rows, slots]) and checked against its K and V caches."""
    decode_slots = []
    for eqn in _traced_sampler(generate, name, **options).eqns:
        if eqn.primitive.name == "while":
            masks = [v.aval.shape[1] for v in eqn.outvars if v.aval.dtype == jnp.bool_ and v.aval.ndim == 2
                     and v.aval.shape[0] in rows]
            caches = {v.aval.shape for v in eqn.outvars if v.aval.ndim == 5}  # K [1, B, kv, H, S], V [1, B, kv, S, H]
            assert len(masks) == 1 and caches
            assert all(masks[0] in shape[3:] for shape in caches)
            decode_slots.append(masks[0])
    return decode_slots


def test_each_phase_decodes_over_a_cache_as_long_as_its_last_slot():
    """The traced programs: one decode loop per phase, each carrying the valid-slot mask (and caches) of
    prompt bucket + the phase's end, so a step reads no slot its phase cannot fill; continuous batching's
    tail loops (1 slot here) read the whole budget's cache."""
    assert _decode_loop_slots(generate_padded, "generate_padded", (8,), cache_phases=3) == [8 + 8, 8 + 16, 8 + 20]
    assert _decode_loop_slots(generate_padded, "generate_padded", (8,)) == [8 + 20]
    assert _decode_loop_slots(generate_continuous, "generate_continuous", (3, 1), slots=3, tail_slots=(1,),
                              cache_phases=3) == [8 + 8, 8 + 16, 8 + 20, 8 + 20]


def test_continuous_batching_prefills_its_prompts_into_caches_of_their_slots_only():
    """Prefill (outside the loops) runs over the 4 prompts' 8 slots: a cache of the whole budget (8 + 20) there
    would attend and write 3.5x the slots, which admission never copies."""
    inner = _traced_sampler(generate_continuous, "generate_continuous", slots=3)
    prompt_caches = {v.aval.shape for eqn in inner.eqns if eqn.primitive.name != "while" for v in eqn.outvars
                     if v.aval.ndim == 5 and v.aval.shape[1] == len(PROMPTS)}  # K and V, [1, prompts, ...]
    assert prompt_caches and all(8 in shape[3:] and 28 not in shape[3:] for shape in prompt_caches)


def test_phased_decoding_on_a_mesh_equals_one_device():
    """G = 2: 8 rows over the data and fsdp axes, sampled (temperature 0.7) to the budget; the one-device
    one-loop rollout is the `reference` fixture's (the same program)."""
    options = dict(samples=2, temperature=0.7, ignore_eos=True)
    expected = _rollouts("deepseek_v3", ONE_LOOP, **options)
    mesh = build_mesh(ShardingConfig(data=2, fsdp=2, expert=2, tensor=1))
    rules = Rules.preset("fsdp_expert_tensor")
    _, state = _policy("deepseek_v3")
    sharded = jax.device_put(state, state_shardings(state, mesh, rules))
    with use_mesh(mesh, rules):
        got = _rollouts("deepseek_v3", PHASED, state=sharded, **options)
    assert np.array_equal(np.asarray(got.tokens_BT), np.asarray(expected.tokens_BT))
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(expected.logprobs_BN), atol=1e-5)
