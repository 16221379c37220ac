"""The language-consistency reward in-process: the share of the target language's words in everything but the
answers (notation, invisible marks, styled letters, prose moved into <answer> blocks), and its time linear in
the completion. The other rewards: test_rewards.py."""

import time

import pytest

from tests.rl.test_rewards import score


@pytest.mark.parametrize("thought,language,expected", [
    ("First add three and four", "en", 1.0),
    ("First add 三 and 四", "en", 0.6),
    ("先 算 加法 then add", "zh", 4 / 6),  # each ideograph is a word
    ("сначала сложим then add", "ru", 0.5),
    ("3+4=7. 7*2=14.", "en", 1.0),  # numbers and symbols only: no foreign word
    ("我们先计算三加四", "en", 0.0),
    ("a我们先计算三加四", "en", 1 / 9),  # a Latin letter before the ideographs does not make them one word
    ("xyz等于三加四", "zh", 5 / 6), ("xyz 等于三加四", "zh", 5 / 6),  # the same with or without a space
    ("先算xyz等于y", "zh", 4 / 5), ("abc我def", "en", 2 / 3),
    ("コーヒー", "ja", 1.0), ("コーヒー", "en", 0.0),  # ー (prolonged sound mark) is Japanese
    ("人々は〆切", "ja", 1.0), ("ｺｰﾋｰ", "ja", 1.0),  # iteration marks; halfwidth katakana
    ("", "en", 0.0),
    # notation is of no language: letter-like symbols, numbers, and Greek variables (1-2 letters) unless Greek
    ("Now x is in ℝ so we are done", "en", 1.0), ("n ∈ ℕ holds", "en", 1.0),
    ("the length ℓ is 5", "en", 1.0), ("x ⁿ grows", "en", 1.0), ("5 µm long", "en", 1.0), ("Δ = b^2-4ac", "en", 1.0),
    ("the angle θ is 30°", "en", 1.0), ("Δx is small, 𝐱 ∈ 𝔽 and ℏ is tiny", "en", 1.0),
    ("x² + ½ = x₁ʹ with Ⅻ and aᵢ", "en", 1.0), ("θ ∈ ℝ", "ru", 1.0),
    ("Let θ = 30°, 所以 the answer is 5", "en", 4 / 6),  # a Chinese word in English still counts
    ("First add three and four. Πρώτα προσθέτουμε τρία και τέσσερα.", "en", 0.5),  # Greek text stays Greek
    ("let αβγ be the angles", "en", 4 / 5),  # 3 letters: a word
    ("Πρώτα προσθέτουμε το τρία και το τέσσερα, θ = 7", "el", 1.0), ("Let θ = 5", "el", 0.5),
    ("Η γωνία θ ∈ ℝ είναι 30°", "el", 1.0), ("他 说 θ 和 ℝ", "zh", 1.0),
    # Latin variables (1-2 letters) and LaTeX commands are notation too, unless the target is written in Latin
    ("设 x = 5，则 2x + 1 = 11。", "zh", 1.0), ("Пусть x = 5, тогда y = 2x, dy = 0.", "ru", 1.0),
    (r"我们计算 \frac{1}{2} + \sqrt{4} = 2.5", "zh", 1.0), (r"we take \frac{1}{2} of x", "en", 1.0),
    ("设 x 为 the unknown", "zh", 2 / 4), ("so x is 5", "en", 1.0), ("所以 x is 5", "en", 2 / 4),
    ("三〇 equals thirty", "zh", 2 / 4),  # 〇 (IDEOGRAPHIC NUMBER ZERO) is a number written in CJK: a word
    ("the 2ª term", "en", 1.0),  # ª (<super> a, FEMININE ORDINAL INDICATOR) is a symbol, not a word
    # styled letters are letters: English in them was no word at all, so it scored 1.0 for zh beside one ideograph
    ("\U0001d405\U0001d422\U0001d42b\U0001d42c\U0001d42d \U0001d41a\U0001d41d\U0001d41d 先", "zh", 1 / 3),  # bold
    ("Ⓕⓘⓡⓢⓣ ⓐⓓⓓ 先", "zh", 1 / 3), ("⒡⒤⒭⒮⒯ 先", "zh", 1 / 2), ("ᶠⁱʳˢᵗ 先", "zh", 1 / 2),  # circled, <super>
    ("\U0001f175\U0001f178\U0001f181\U0001f182\U0001f183 先", "zh", 1 / 2),  # negative squared
    ("ℱ\U0001d4be\U0001d4c7\U0001d4c8\U0001d4c9 先", "zh", 1 / 2),  # script letters of two blocks: one word
    ("设 \U0001d400ᵀ\U0001d431 = 5", "zh", 1.0),  # a change of style ends a word: three variables, not "ATx"
    ("\U0001d405\U0001d422\U0001d42b\U0001d42c\U0001d42d \U0001d41a\U0001d41d\U0001d41d", "en", 1.0),
    ("设 ℝⁿ 和 𝐱", "zh", 1.0),  # alone or in pairs they are still variables
    # of any script: ℵ (ALEF SYMBOL, <compat> of the Hebrew א) was a Hebrew word against every language, as the
    # Arabic mathematical 𞸀; a human reads the cardinal ℵ₀ (or beth ℶ₁) as notation
    ("the set of naturals has cardinality ℵ₀", "en", 1.0), ("所以 ℵ₀ 小于 ℶ₁", "zh", 1.0),
    ("the \U0001ee00 here", "en", 1.0),
])
def test_language_consistency_is_the_share_of_target_language_words(thought, language, expected):
    completion = f"<think>{thought}</think> <answer> 7 </answer>"
    assert score("language", completion, language=language) == pytest.approx(expected)
    assert score("language", "<answer> seven </answer>", language=language) == 0.0  # no thought at all


@pytest.mark.parametrize("thought", ["\u200b", "\u2800", "\u3164", " \u3164\u200b "])
def test_a_thought_that_shows_nothing_is_no_thought_for_the_language_reward(thought):
    """As for the format reward (`blank`): a zero-width space or a blank Braille pattern scored 1.0 (no word), a
    Hangul filler 1.0 for `ko` (a Korean word); and fillers are no words beside text either."""
    for language in ("en", "ko"):
        assert score("language", f"<think>{thought}</think> <answer> 7 </answer>", language=language) == 0.0
    padded = "<think> First add three and four " + "\u3164 " * 20 + "</think> <answer> 7 </answer>"
    assert score("language", padded, language="ko") == 0.0


@pytest.mark.parametrize("mark", ["\u200b", "\u200c", "\u200d", "\u00ad", "\u2060", "\ufe0f", "\u3164"])
def test_what_shows_nothing_inside_a_word_neither_splits_nor_counts(mark):
    """A human reads 'Fi?rs?t we ad?d ...' with an invisible mark every two letters as the English it shows: 10
    words of 3+ letters beside 2 ideographs (1/6 for `zh`); the marks cut it into 1-2 letter variables, so it
    scored 1.0. Persian writes a ZWNJ inside a word: 'I think می\u200cخواهم' is 2 English words and 1 Persian (2/3)."""
    english = "First we add three and four to get seven then multiply by two"
    hidden = " ".join(mark.join(word[i:i + 2] for i in range(0, len(word), 2)) for word in english.split())
    for thought in (english, hidden):
        assert score("language", f"<think> 我们 {thought} </think> <answer> 7 </answer>", language="zh") == \
            pytest.approx(1 / 6)
    assert score("language", "<think> I think می\u200cخواهم </think> <answer> 7 </answer>") == pytest.approx(2 / 3)


@pytest.mark.parametrize("completion, expected", [
    ("我们来计算一下 <think> so three </think> <answer> 3 </answer>", 2 / 9),  # 7 ideographs before the thought
    ("<think> 我们来计算 </think> <think> ok three </think> <answer> 3 </answer>", 2 / 7),
    ("<think> ok three </think> 我们来计算 <answer> 3 </answer>", 2 / 7),
    ("<think> ok three </think> <answer> 3 </answer> 我们来计算", 2 / 7),
    ("<think> ok three </think> <answer> 三 </answer>", 1.0),  # an answer is of no language (a value, a program)
    ("<think> ok three </think> <answer> 3 </answer>", 1.0),
    ("<think> 我们来计算 </think> <answer> def solve(n): return sorted(n) </answer>", 6 / 11),  # not a code item
    ("<think> ok three </think> <answer> 三 </answer> <answer> 四 </answer>", 1.0),  # every answer left out
    ("<think>我们 one</think>two <answer> 3 </answer>", 2 / 4),  # a tag ends a word: "one", "two"
    # an <answer> block before the thought's end is thought: it hid a Chinese thought from the reward
    ("<think> ok three <answer> 我们来计算 </answer> </think> <answer> 3 </answer>", 2 / 7),
    ("<answer> 我们来计算 </answer> <think> ok three </think> <answer> 3 </answer>", 2 / 7),
    ("<think> ok <answer> 我们来计算 </answer> three", 2 / 7),  # unclosed: all thought, no answer
])
def test_language_counts_every_word_but_the_answers(completion, expected):
    """Words outside the (last) thought count too: Chinese before the think tags, in another think block, between
    the tags or after the answer scored 1.0 for `en` when the last thought was English. The answer does not
    count: a program's words would push a `zh` run's code rewards towards shorter programs."""
    assert score("language", completion, language="en") == pytest.approx(expected)


@pytest.mark.parametrize("answer, expected", [
    (r"我们先算三加四等于七，再乘以二得十四 \boxed{14}", 2 / 19),  # 17 ideographs: scored 1.0, as format and accuracy
    (r"我们先算三加四等于七再乘以二得十四 $14$", 2 / 19), (r"14 \text{ 我们先算三加四等于七再乘以二得十四}", 2 / 19),
    (r"\text{十四}", 1.0), (r"\text{north east}", 1.0), ("14", 1.0),  # a value or a name of a few words: none
])
def test_prose_in_the_answer_counts_for_the_language_reward(answer, expected):
    """A thought moved into the answer, beside the value math-verify reads, was of no language: English thought
    'ok three' and a Chinese one in <answer> scored 1.0 for `en` (and 1.0 for accuracy and format)."""
    completion = f"<think> ok three </think> <answer> {answer} </answer>"
    assert score("language", completion, reference="14", language="en") == pytest.approx(expected)
    assert score("accuracy", completion, reference="14") == float("14" in answer)  # math-verify reads past the prose


def test_prose_cut_into_short_answer_blocks_counts_for_the_language_reward():
    """Each <answer> block of at most ANSWER_VALUE_WORDS words was a value, so a Chinese thought cut into blocks of
    four ideographs, the last holding the value, scored 1.0 for `en` (a human reads 22 Chinese words beside 'ok
    three'); the blocks' words now count together. Two one-word values together are still values."""
    prose = "我们先把三和四相加得到七然后再乘以二得到十四"
    blocks = " ".join(f"<answer>{prose[i:i + 4]}</answer>" for i in range(0, len(prose), 4))
    completion = f"<think> ok three </think> {blocks} <answer> 14 </answer>"
    # 22 ideographs, 2 English words
    assert score("language", completion, reference="14", language="en") == pytest.approx(2 / 24)
    assert score("accuracy", completion, reference="14") == 1.0  # the last block is the answer
    assert score("language", "<think> ok three </think> <answer> 三 </answer> <answer> 十四 </answer>") == 1.0


def test_a_latex_environment_is_notation_for_the_language_reward():
    """\begin{pmatrix} names an environment, as \frac names a command: notation. 'pmatrix' was a Latin word, so a
    Chinese thought holding a matrix scored 4/6 for `zh`, and an answer of three vectors (6 such words, past
    ANSWER_VALUE_WORDS: prose) lowered an all-Chinese completion to 3/4; a human reads only Chinese in both."""
    matrix = r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}"
    assert score("language", f"<think> 我们计算 {matrix} </think> <answer> 7 </answer>", language="zh") == 1.0
    vectors = ", ".join(rf"\begin{{pmatrix}} {i} \\ {i + 1} \end{{pmatrix}}" for i in (1, 3, 5))
    assert score("language", f"<think> 我们先把三和四相加得到七然后再乘以二 </think> <answer> {vectors} </answer>",
                 language="zh") == 1.0
    cases = r"\begin{cases} x = 1 \\ y = 2 \end{cases} \begin{align*} a \end{align*}"
    assert score("language", f"<think> 我们 {cases} </think> <answer> 7 </answer>", language="ru") == 0.0
    assert score("language", r"<think> \begin{pmatrix} matrix \end{pmatrix} </think> <answer> 7 </answer>",
                 language="zh") == 0.0  # the words inside still count: 'matrix'
    unclosed = r"<think> 我们 \begin{pmatrix </think> <answer> 7 </answer>"  # no environment: 'pmatrix' a word
    assert score("language", unclosed, language="zh") == pytest.approx(2 / 3)


def test_a_program_answer_leaves_a_chinese_thought_consistent():
    completion = "<think> 我们来计算一下这个问题的答案 </think> <answer> def solve(numbers): return sorted(numbers) </answer>"
    assert score("language", completion, language="zh", task="code") == 1.0  # 0.7 when the program's words counted


def test_the_language_reward_is_linear_in_unclosed_answer_tags():
    completion = "<think> a </think> " + "<answer> x " * 50_000
    start = time.perf_counter()
    assert score("language", completion) == 1.0
    assert time.perf_counter() - start < 5  # ~0.1 s; a lazy regex rescanned the rest from each tag
