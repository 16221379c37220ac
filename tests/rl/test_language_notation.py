"""The language reward reads notation as no language and a word by its scripts (rl.rewards.functions.word_scripts,
_words): honest mathematics in a non-Latin language is not penalised, and no prose hides as notation."""

import time

import pytest

from r1jax.rl.rewards import RewardsConfig, ScoreItem, score_item
from r1jax.rl.rewards.functions import word_scripts


def language(thought, target):
    cfg = RewardsConfig(names=("language",), weights=(1.0,), language=target)
    return score_item(ScoreItem("q", f"<think>{thought}</think> <answer> 7 </answer>", "7", "math"), cfg)["language"]


@pytest.mark.parametrize("thought, target, expected", [
    # a human reads each as Chinese (Russian) with formulas: operator names and indices are notation (0.5 to 0.15 before)
    ("所以 sin x + cos x", "zh", 1.0), ("所以 log max min gcd lcm mod det exp lim arg ln tan", "zh", 1.0),
    (r"张量 \epsilon_{ijk}", "zh", 1.0), ("张量 x_{max} 与 R^{ij}_{kl}", "zh", 1.0), ("和 a_{n-1} 与 x_{i,j}", "zh", 1.0),
    ("张量 εᵢⱼₖ", "zh", 1.0), ("张量 Rᵢⱼₖₗ", "zh", 1.0), ("张量 xₘₐₓ", "zh", 1.0), (r"所以 \operatorname{lcm}(a,b)", "zh", 1.0),
    ("Пусть sin²x + cos²x = 1, gcd(a, b) = 1", "ru", 1.0), ("Αφού sinh x > 0", "el", 1.0), ("所以 x_max", "zh", 1.0),
    # prose stays prose: a word holding a name is no name, a group must be attached and one token, a lone
    # superscript word is styled text; human readings: one English word beside one or two ideographs
    ("Using sine 先", "zh", 1 / 3), ("先 _{the}", "zh", 1 / 2), ("先 x_{the sum of all}", "zh", 1 / 4),
    ("ᶠⁱʳˢᵗ 先", "zh", 1 / 2), ("maximal 先", "zh", 1 / 2), ("先 x_{total,words}", "zh", 1 / 3),
    # for a Latin target notation is English, as a Latin variable is: no en score moves ('max' is an English word)
    ("the max of x 我们", "en", 4 / 6), ("所以 max", "en", 1 / 3), ("x_{max} 我", "en", 2 / 3), ("xₘₐₓ 我", "en", 2 / 3),
    ("we take sin x and cos x", "en", 1.0), (r"the \epsilon_{ijk} tensor 张", "en", 3 / 4),
])
def test_mathematical_notation_is_of_no_language(thought, target, expected):
    assert language(thought, target) == pytest.approx(expected)


def test_notation_is_read_in_linear_time():
    """10^6 characters of each new path (operator names, unclosed or long groups, index letters) in well under 1 s."""
    for text in ("sin " * 250_000, "x_{" * 333_333, "x_{a,b" + ",ab" * 333_330, "εᵢⱼₖ " * 200_000, "Rᵢ" * 500_000,
                 "_{" + "a" * 999_998):
        start = time.perf_counter()
        word_scripts(text, ("CJK",))
        assert time.perf_counter() - start < 2.0, text[:20]
