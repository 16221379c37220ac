"""Readability filters for rejection sampling (R1 §2.3.3: keep correct samples that are also readable).

Each filter takes one scored completion and says whether it passes; `rejection_reason` names the first
check that fails. They run on the host in this process: string scans only, never a parser on model text.
"""

from __future__ import annotations

from typing import Sequence

from r1jax.rl.rewards.config import RewardsConfig
from r1jax.rl.rewards.functions import ScoreItem, format_reward, language_consistency

NGRAM = 4  # repetition is measured over word 4-grams


def repetition(text: str, n: int = NGRAM) -> float:
    """The share of a text's word n-grams that repeat an earlier one: 0 for none, near 1 for a loop."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def rejection_reason(item: ScoreItem, total: float, status: str, *, threshold: float, filters: Sequence[str],
                     max_repetition: float, rewards: RewardsConfig) -> str | None:
    """None when the sample is kept, else why not: status, empty, reward, or the first failing filter."""
    if status != "ok":
        return "status"
    if not item.completion.strip():
        return "empty"
    if total < threshold - 1e-9:  # a sum of weighted rewards: 0.6 + 0.3 is 0.8999999999999999
        return "reward"
    checks = {
        "format": lambda: format_reward(item, rewards) >= 1.0,
        "language": lambda: language_consistency(item, rewards) >= 1.0,
        "length": lambda: not item.truncated,  # not cut off by the budget
        "repetition": lambda: repetition(item.completion) <= max_repetition,
    }
    for name in filters:
        if not checks[name]():
            return name
    return None
