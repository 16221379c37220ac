"""The language reward reads notation as no language and a word by its scripts (rl.rewards.words.word_scripts,
_words): honest mathematics in a non-Latin language is not penalised, and no prose hides as notation."""

import time

import pytest

from r1jax.rl.rewards import RewardsConfig, ScoreItem, score_item
from r1jax.rl.rewards.words import word_scripts


def language(thought, target):
    cfg = RewardsConfig(names=("language",), weights=(1.0,), language=target)
    return score_item(ScoreItem("q", f"<think>{thought}</think> <answer> 7 </answer>", "7", "math"), cfg)["language"]


@pytest.mark.parametrize("thought, target, expected", [
    # a human reads each as Chinese (Russian) with formulas: operator names and indices are notation (0.15-0.67 before)
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
    """2 x 10^5 characters of each new path (operator names, unclosed or long groups, index letters): ~0.1-0.25 s
    each on the development CPU, where a quadratic path takes tens of seconds (10^5 'é' took 5 s in split_words)."""
    for text in ("sin " * 50_000, "x_{" * 66_666, "x_{a,b" + ",ab" * 66_666, "εᵢⱼₖ " * 40_000, "Rᵢ" * 100_000,
                 "_{" + "a" * 199_998):
        start = time.perf_counter()
        word_scripts(text, ("CJK",))
        assert time.perf_counter() - start < 2.0, text[:20]


@pytest.mark.parametrize("thought, target, expected", [
    # Russian written with Latin look-alikes (C c p e): a human reads five Russian words; each was a Latin word of
    # its first letter (0.4 for en, 0.6 for ru); a word of look-alike scripts is of its most letters' script
    ("Cначала cложим тpи и чeтыpe", "en", 0.0), ("Cначала cложим тpи и чeтыpe", "ru", 1.0),
    ("Hеllo world", "en", 1.0), ("wοrd thе 先", "zh", 1 / 3),  # English with a Cyrillic е or a Greek ο is English
    # a Korean particle on an English stem is Korean, the stem an English word (as '用 Python 调用 API' is for zh:
    # 3/5): a human reads three Korean words and two English names; the particles were Latin (1/3 for ko)
    ("Python으로 API를 호출합니다", "ko", 3 / 5), ("Python으로 API를 호출합니다", "en", 2 / 5),
    ("x를 구하면 y는 5", "ko", 1.0),  # a variable with its particle: the particle counts, the variable is notation
    ("선분 AB와 Δx를 구하면", "ko", 1.0),
    # ...but a token's Latin letters are one variable: English cut by syllables strewn in ('Fi가rs가t', 2 or fewer
    # letters a piece) scored 1.0 for ko once the script split the word; a human reads 5 English words (4/9 here)
    ("Fi가rs가t we가 ad가d", "ko", 4 / 9),
    ("コーヒーを飲む", "ja", 1.0), ("漢字とカタカナ", "ja", 1.0),  # kana and kanji: one language, as before
    ("café naïve l'équation don't", "en", 1.0), ("café naïve l'équation 先", "zh", 1 / 4),  # Latin with marks
    ("Let Δx be small 先", "zh", 1 / 3),  # Δx: a Greek-Latin pair of 2 letters, a variable as before
])
def test_a_word_is_read_by_its_scripts(thought, target, expected):
    assert language(thought, target) == pytest.approx(expected)


def test_words_of_several_scripts_are_read_in_linear_time():
    for text in ("Cн" * 100_000, "a으" * 100_000, "тpи" * 66_666):
        start = time.perf_counter()
        word_scripts(text, ("CJK",))
        assert time.perf_counter() - start < 2.0, text[:20]


def test_the_script_of_a_word_of_look_alike_scripts_is_its_most_letters():
    """Counted over the whole word, whichever script comes first or last: its letters with no twin in another
    script first (н, t), then all (a tie: the first letter's)."""
    assert word_scripts("Cнн") == ["CYRILLIC"] and word_scripts("CнCC") == ["CYRILLIC"]  # C has a twin, н none
    assert word_scripts("CннCtt") == ["LATIN"] and word_scripts("Cн") == ["CYRILLIC"]
    assert word_scripts("нCCнн") == ["CYRILLIC"] and word_scripts("нC") == ["CYRILLIC"]
    assert word_scripts("Ccс") == ["LATIN"] and word_scripts("Cсс") == ["CYRILLIC"] and word_scripts("Cс") == []


@pytest.mark.parametrize("thought, target, expected", [
    # English with half or more of its letters swapped for Cyrillic twins (ѕ е о ԁ): a human reads English, as
    # its letters with no twin (n, t, u, m) say; it was Russian by its most letters (1.0 for ru, 0.0 for en)
    ("ѕеcоnd thеn ѕum", "ru", 0.0), ("ѕеcоnd thеn ѕum", "en", 1.0),
    ("Cначала cложим тpи и чeтыpe", "ru", 1.0),  # Russian by н ч л ж м т и ы, whatever its twins
])
def test_a_word_of_look_alike_scripts_is_read_by_its_letters_without_twins(thought, target, expected):
    assert language(thought, target) == pytest.approx(expected)


def test_the_rejection_filter_keeps_mathematics_in_the_target_language():
    """R1's rejection sampling keeps only samples of one language: a Chinese thought with sin and x_{max} was refused
    as mixed ('language'), a Russian one written with Latin look-alikes kept for `en`; the filter reads the reward."""
    from r1jax.rl.train.filters import rejection_reason

    def reason(thought, target):
        cfg = RewardsConfig(names=("accuracy",), weights=(1.0,), language=target)
        item = ScoreItem("q", f"<think>{thought}</think><answer>7</answer>", "7", "math")
        return rejection_reason(item, 1.0, "ok", scores={"accuracy": 1.0}, threshold=0.0, filters=("language",),
                                max_repetition=1.0, rewards=cfg)
    assert reason("所以 sin x + cos x 且 x_{max} 为 7", "zh") is None
    assert reason("Cначала cложим тpи и чeтыpe", "ru") is None and reason("Cначала cложим тpи", "en") == "language"
    assert reason("所以 the sum is 7", "zh") == "language"


@pytest.mark.parametrize("thought, expected", [
    # an index holds at most 4 letters in a row: English glued into one index ('the sum of all') or written as
    # superscripts ('first') is a word a human reads (1/2 beside one ideograph); both scored 1.0 for zh
    ("先 x_{thesumofall}", 1 / 2), ("先 aᶠⁱʳˢᵗ", 1 / 2), ("先 a^{first} b^{we} c^{three}", 1 / 3),
    # real indices of up to 4 letters stay notation
    ("张量 R_{ijkl} 与 Rᵢⱼₖₗ", 1.0), ("初值 x_{init} 与 x^{test}", 1.0),
    ("所以 arccos x 与 argmax f 与 limsup", 1.0),  # operator names of 6 letters are no index
    # an upright index is an index (eff, kin were English words: 1/3), with the same bound
    (r"温度 T_{\mathrm{eff}} 与 E_{\text{kin}}", 1.0), (r"先 x_{\text{thesumofall}}", 1 / 2),
])
def test_an_index_holds_no_long_word(thought, expected):
    assert language(thought, "zh") == pytest.approx(expected)


def test_bounded_indices_are_read_in_linear_time():
    for text in ("x_{\\text{" * 25_000, "x_{\\mathrm{" + "a" * 199_988, "x_{abcde}" * 22_222, "aᶠⁱʳˢᵗ" * 33_333):
        start = time.perf_counter()
        word_scripts(text, ("CJK",))
        assert time.perf_counter() - start < 2.0, text[:20]
