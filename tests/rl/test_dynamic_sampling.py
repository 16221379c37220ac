"""DAPO dynamic sampling: informative groups (rewards not all equal) fill the batch first, in sampling order,
from as many rounds as allowed; rows, prompts, texts and rewards stay aligned across rounds whose prompts
were padded to different widths."""

import numpy as np

from r1jax.rl.rewards import ScoreResult
from r1jax.rl.sampler import Rollout
from r1jax.rl.train.dynamic_sampling import Round, fill_informative

G = 2  # samples per prompt
N = 3  # generated tokens per row


def make_round(name: str, rewards_PG: list[list[float]], prompt_width: int) -> Round:
    """A fake scored round whose every token names its round, group and sample (100*round + 10*group + g)."""
    rows = [(p, g) for p in range(len(rewards_PG)) for g in range(G)]
    base = 100 * (ord(name) - ord("a") + 1)
    tokens = np.array([[base + 10 * p + g] * (prompt_width + N) for p, g in rows], np.int32)
    rollout = Rollout(tokens_BT=tokens, valid_BT=np.ones_like(tokens, bool),
                      positions_BT=np.tile(np.arange(prompt_width + N, dtype=np.int32), (len(rows), 1)),
                      logprobs_BN=np.full((len(rows), N), -0.5, np.float32),
                      lengths_B=np.full((len(rows),), N, np.int32),
                      experts_LBTK=np.repeat(tokens[None, :, :, None], 2, axis=3), steps=np.int32(N))
    problems = [{"prompt": f"{name}{p}", "answer": "1", "task": "arithmetic"} for p in range(len(rewards_PG))]
    texts = [f"{name}{p}.{g}" for p, g in rows]
    results = [ScoreResult(rewards={"accuracy": r}, total=r, status="ok") for group in rewards_PG for r in group]
    return Round(rollout, problems, texts, results, seconds=1.0)


def drawer(*rounds):
    queue = list(rounds)
    calls = []

    def draw():
        calls.append(1)
        return queue.pop(0)
    return draw, calls


def test_informative_groups_of_later_rounds_replace_uninformative_ones_and_rows_stay_aligned():
    first = make_round("a", [[1, 0], [0, 0], [1, 1], [0, 1]], prompt_width=2)  # a0 and a3 informative
    second = make_round("b", [[1, 1], [0, 1], [1, 0], [0, 1]], prompt_width=4)  # b1, b2, b3 informative
    draw, calls = drawer(first, second)
    filled = fill_informative(draw, prompts=4, group_size=G, rounds=3, pad_id=0)
    assert len(calls) == 2 and filled.rounds == 2 and filled.informative == 4
    assert filled.round.seconds == 2.0 and filled.tokens == 2 * 8 * N
    batch = filled.round
    assert [p["prompt"] for p in batch.problems] == ["a0", "a3", "b1", "b2"]
    assert batch.texts == ["a0.0", "a0.1", "a3.0", "a3.1", "b1.0", "b1.1", "b2.0", "b2.1"]
    assert [r.total for r in batch.results] == [1, 0, 0, 1, 0, 1, 1, 0]
    tokens = np.asarray(batch.rollout.tokens_BT)
    assert tokens.shape == (8, 4 + N)  # the narrower round is left-padded to the wider prompt
    assert tokens[:4, :2].tolist() == [[0, 0]] * 4 and not np.asarray(batch.rollout.valid_BT)[:4, :2].any()
    assert tokens[:, -1].tolist() == [100, 101, 130, 131, 210, 211, 220, 221]
    experts = np.asarray(batch.rollout.experts_LBTK)
    assert experts.shape == (1, 8, 4 + N, 2)  # each row's routing record travels with its row
    assert experts[0, :, -1, 0].tolist() == [100, 101, 130, 131, 210, 211, 220, 221]
    # what the policy scored over everything it drew (9 of 16 correct), not the filtered batch's 4 of 8
    assert [r.total for r in filled.drawn] == [1, 0, 0, 0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 0, 1]
    from r1jax.rl.train.rollouts import reward_metrics
    assert reward_metrics(filled.drawn, ["accuracy"])["reward/accuracy"] == 9 / 16


def test_when_rounds_run_out_uninformative_groups_fill_the_batch_in_sampling_order():
    first = make_round("a", [[0, 0], [1, 0], [1, 1]], prompt_width=3)
    second = make_round("b", [[0, 0], [1, 1], [0, 0]], prompt_width=3)
    draw, calls = drawer(first, second, make_round("c", [[1, 0]] * 3, 3))
    filled = fill_informative(draw, prompts=3, group_size=G, rounds=1)
    assert len(calls) == 2 and filled.rounds == 2 and filled.informative == 1
    assert [p["prompt"] for p in filled.round.problems] == ["a1", "a0", "a2"]


def test_a_fully_informative_first_round_is_used_as_drawn():
    first = make_round("a", [[1, 0], [0, 1]], prompt_width=2)
    draw, calls = drawer(first)
    filled = fill_informative(draw, prompts=2, group_size=G, rounds=3)
    assert len(calls) == 1 and filled.informative == 2
    assert filled.round.texts == first.texts
    assert np.asarray(filled.round.rollout.tokens_BT).tolist() == first.rollout.tokens_BT.tolist()
