"""More of the rule-based rewards (rl.rewards.functions): the edges of the language reward's words and of
its answers, and what score_item and check_names tell a user. Each case is counted by hand."""

import pytest

from r1jax.errors import UserError
from r1jax.rl.rewards import RewardsConfig, ScoreItem, score_item
from r1jax.rl.rewards.functions import check_names, word_scripts


def language(completion, lang="en", task="math"):
    cfg = RewardsConfig(names=("language",), weights=(1.0,), language=lang)
    return score_item(ScoreItem("q", completion, "7", task), cfg)["language"]


@pytest.mark.parametrize("mark", ["\u0301", "\u0332", "\u20d7", "\u0308"])
def test_a_combining_mark_inside_a_word_neither_splits_nor_counts(mark):
    """English with an accent (or an underline, an arrow) on every second letter reads as the English it is:
    10 words of 3+ letters beside 2 ideographs, 1/6 for `zh`; the marks cut it into 1-2 letter variables
    that scored 1.0. A French word in decomposed form (NFD: 'e' + U+0301) stays one word."""
    english = "First we add three and four to get seven then multiply by two"
    marked = " ".join("".join(c + (mark if i % 2 else "") for i, c in enumerate(w)) for w in english.split())
    for thought in (english, marked):
        assert language(f"<think> 我们 {thought} </think> <answer> 7 </answer>", "zh") == pytest.approx(1 / 6)
    assert word_scripts("cre\u0301e\u0301 \u03b1\u0301\u03b2", ("LATIN",)) == ["LATIN"]  # créé; ά β: variable
