"""DAPO's dynamic sampling (Yu et al. 2025, §3.2): a group whose G rewards are all equal has zero advantage
and teaches nothing, so sample more prompts until the batch is made of informative groups.

`fill_informative(draw, prompts, group_size, rounds)` calls `draw()` for one scored round at a time, keeps
informative groups (rewards not all equal) in sampling order, and stops once `prompts` of them are in hand
or after `rounds` extra rounds; then it fills the batch up with uninformative groups, in sampling order
(which still count in the loss normalisers and so shrink the step's gradient: `fill_informative`).
Rows stay prompt-major (row = group * G + g), as the sampler returns them.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

from r1jax.rl.grpo.advantages import nonzero_std_mask_P
from r1jax.rl.rewards import ScoreResult
from r1jax.rl.sampler import Rollout
from r1jax.rl.train.rollouts import group_rewards, merge_rollouts, take_rows


class Round(NamedTuple):
    """One scored sampling round: `len(problems)` groups of G rows."""

    rollout: Rollout
    problems: list[dict]
    texts: list[str]
    results: list[ScoreResult]
    seconds: float  # time spent generating


class Filled(NamedTuple):
    round: Round  # the batch: `prompts` groups, informative first
    rounds: int  # sampling rounds drawn
    informative: int  # informative groups in the batch (round.seconds: generation time over all rounds)
    tokens: int  # tokens generated over all rounds
    drawn: list  # every round's scores (ScoreResult), in sampling order: what the policy got, unfiltered


def informative_groups(results: Sequence[ScoreResult], group_size: int) -> np.ndarray:
    return nonzero_std_mask_P(group_rewards(results, group_size))  # on the host: NumPy in, NumPy out


def fill_informative(draw: Callable[[], Round], prompts: int, group_size: int, rounds: int,
                     pad_id: int = 0) -> Filled:
    """The batch of `prompts` groups, informative ones first (module docstring).

    Filling with uninformative groups when the rounds run out is not free: their advantages are exactly 0
    (rl.grpo.advantages), so they add no policy-gradient term, but their rows and tokens still count in the
    whole batch's loss normalisers (rl.grpo.aggregation: token_mean's token count, seq_mean_token_mean's and
    constant's B). The step's policy gradient is therefore that of the informative groups shrunk by their
    share of the batch's completion tokens (token_mean) or rows (the others), as in a batch sampled without
    dynamic sampling, not renormalised to a batch of informative groups only; their KL term, when
    `kl_coef` > 0, still counts. `Filled.informative` (logged as `dynamic/informative_groups`, out of
    `prompts`) tells how many groups teach.
    """
    drawn: list[Round] = []
    informative, other = [], []  # (round index, group index)
    while True:
        part = draw()
        drawn.append(part)
        good = informative_groups(part.results, group_size)
        for group, keep in enumerate(good):
            (informative if keep else other).append((len(drawn) - 1, group))
        if len(informative) >= prompts or len(drawn) > rounds:
            break
    chosen = (informative + other)[:prompts]
    return Filled(_assemble(drawn, chosen, group_size, pad_id), len(drawn), min(len(informative), prompts),
                  sum(int(np.asarray(p.rollout.lengths_B).sum()) for p in drawn),
                  [result for p in drawn for result in p.results])


def _assemble(drawn: list[Round], chosen: list[tuple[int, int]], group_size: int, pad_id: int) -> Round:
    """The chosen groups as one round: rollouts merged, rows taken group by group."""
    offsets = np.cumsum([0] + [len(p.texts) for p in drawn])
    rows = [int(offsets[r]) + group * group_size + j for r, group in chosen for j in range(group_size)]
    rollout = drawn[0].rollout if len(drawn) == 1 else merge_rollouts([p.rollout for p in drawn], pad_id)
    texts = [t for p in drawn for t in p.texts]
    results = [x for p in drawn for x in p.results]
    return Round(take_rows(rollout, rows), [drawn[r].problems[group] for r, group in chosen],
                 [texts[i] for i in rows], [results[i] for i in rows], sum(p.seconds for p in drawn))
