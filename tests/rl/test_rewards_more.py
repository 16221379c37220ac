"""More of the rule-based rewards (rl.rewards.functions): the edges of the language reward's words and of
its answers, and what score_item and check_names tell a user. Each case is counted by hand."""

import pytest

from r1jax.errors import UserError
from r1jax.rl.rewards import RewardsConfig, ScoreItem, extract_answer, score_item
from r1jax.rl.rewards.functions import check_names
from r1jax.rl.rewards.words import word_scripts


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


@pytest.mark.parametrize("text, target, expected", [
    ("a1b2c3d4", ("CJK",), []),  # a digit ends a word: four 1-letter variables, not the word "abcd"
    ("ab\u1d62", ("CJK",), []),  # ab and a subscript i (<sub>): two variables, not the 3-letter word "abi"
    ("ab\u24d2", ("CJK",), []),  # ab and a circled c: the style changes, two variables
    ("ab\U0001f152", ("CJK",), []),  # ... and a negative circled C (no decomposition: a style of its own)
    ("ab\u24d2\u24d3\u24d4", ("CJK",), ["LATIN"]),  # ... and 3 circled letters are a word
])
def test_where_a_word_ends(text, target, expected):
    assert word_scripts(text, target) == expected


@pytest.mark.parametrize("completion, lang, expected", [
    # fullwidth Latin (FULLWIDTH LATIN ...) is Latin: English in it is English; for zh 2 ideographs beside 2
    # words of 3+ letters (2/4: the 2-letter one is a variable)
    ("<think> \uff26\uff49\uff52\uff53\uff54 \uff57\uff45 \uff41\uff44\uff44 </think> <answer> 7 </answer>", "en", 1.0),
    ("<think> 我们 \uff26\uff49\uff52\uff53\uff54 \uff57\uff45 \uff41\uff44\uff44 </think> <answer> 7 </answer>", "zh",
     2 / 4),
    # circled letters are Latin letters: English in them is English
    ("<think> \u24d5\u24d8\u24e1\u24e2\u24e3 \u24e6\u24d4 \u24d0\u24d3\u24d3 </think> <answer> 7 </answer>", "en", 1.0),
    # the vertical kana repeat mark (VERTICAL KANA REPEAT MARK) is kana: い ろ 〱 are 3 Japanese words
    ("<think> いろ\u3031 </think> <answer> 7 </answer>", "ja", 1.0),
    # a starred environment is notation: \begin{align*} left "align" a Latin word against zh
    (r"<think> 我们 \begin{align*} x &= 1 \end{align*} </think> <answer> 7 </answer>", "zh", 1.0),
])
def test_letters_of_other_forms_count_as_their_script(completion, lang, expected):
    assert language(completion, lang) == pytest.approx(expected)


def test_answers_of_more_than_answer_value_words_together_are_prose():
    """5 ideographs of thought; the answers' 4 words (of 3+ letters, after \\text) are a value, 5 are prose (5/10),
    in one block or two."""
    head = "<think> 我们来计算 </think> "
    assert language(head + r"<answer> \text{one two three four} </answer>", "zh") == 1.0
    assert language(head + r"<answer> \text{one two three four five} </answer>", "zh") == pytest.approx(0.5)
    assert language(head + "<answer> one two </answer> <answer> three four five </answer>", "zh") == pytest.approx(0.5)


def test_answer_blocks_in_an_unclosed_thought_are_thought():
    # no </think>: all of it is thought, the <answer> block inside too (5 ideographs, 3 English words: 5/8)
    assert language("<think> 我们来计算 <answer> one two three </answer>", "zh") == pytest.approx(5 / 8)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_reward_that_returns_a_non_finite_value_is_refused(monkeypatch, value):
    from r1jax.rl.rewards.functions import REWARDS
    monkeypatch.setitem(REWARDS, "broken", lambda item, config: value)
    cfg = RewardsConfig(names=("broken",), weights=(1.0,))
    with pytest.raises(ValueError, match=r"non-finite value: \{'broken': "):
        score_item(ScoreItem("q", "<answer> 7 </answer>", "7"), cfg)


def test_an_unknown_reward_name_gets_the_likely_meant_one():
    with pytest.raises(UserError, match=r"unknown reward\(s\) \['acuracy'\]; did you mean 'accuracy' for 'acuracy'\?"):
        check_names(RewardsConfig(names=("acuracy",), weights=(1.0,)))


def test_rewards_config_defaults_are_r1_zeros():
    c = RewardsConfig()  # R1-Zero's accuracy + format; DAPO's L_max 1024 and L_cache 256 (README)
    assert (c.names, c.weights, c.language, c.max_length, c.overlong_buffer, c.answer_max_chars) == \
        (("accuracy", "format"), (1.0, 1.0), "en", 1024, 256, 256)


def test_negative_bounds_are_refused_naming_the_field():
    with pytest.raises(UserError, match=r"rewards.weights = \(1.0, -1001.0\): expected numbers in \[-1000, 1000\]"):
        RewardsConfig(weights=(1.0, -1001.0))
    with pytest.raises(UserError, match=r"rewards.overlong_buffer = -1: expected in \[0, max_length=1024\]"):
        RewardsConfig(overlong_buffer=-1)


def test_korean_counts_for_ko():
    assert language("<think> 둘 더하기 셋은 다섯 </think> <answer> 5 </answer>", "ko") == 1.0
    assert language("<think> 둘 더하기 셋은 다섯 </think> <answer> 5 </answer>", "zh") == 0.0


@pytest.mark.parametrize("completion, lang, expected", [
    ("<think> 我们来计算 </think><answer> seven </answer>", "zh", 1.0),  # an answer right after the thought: a value
    ("<think> 我们 </think> ab<answer> 7 </answer>cd", "zh", 1.0),  # ab, cd: two variables, not the word "abcd"
])
def test_what_an_answer_block_leaves_behind(completion, lang, expected):
    assert language(completion, lang) == pytest.approx(expected)


def test_an_unknown_task_is_named_not_a_traceback():
    cfg = RewardsConfig(names=("accuracy",), weights=(1.0,))
    with pytest.raises(UserError, match="nosuch"):
        score_item(ScoreItem("q", "<answer> 7 </answer>", "7", "nosuch"), cfg)


def test_a_reward_module_that_does_not_import_is_named():
    with pytest.raises(UserError, match=r"reward_pool.import_modules: cannot import 'r1jax_no_such_module'"):
        check_names(RewardsConfig(), ("r1jax_no_such_module",))


@pytest.mark.parametrize("completion, answer", [
    (r"\boxed{7} then \boxed 5", "7"),  # a \boxed with no brace is skipped for the one before it
    ("<answer>" + "1" * 256 + "</answer>", "1" * 256),  # K = 256 characters by default: kept whole
])
def test_extract_answer_edges(completion, answer):
    assert extract_answer(completion) == answer


def test_a_rejection_sampling_stage_the_overlong_penalty_cannot_reach_is_named():
    from r1jax.rl.config import load_config
    scored = ["rewards.names=[accuracy,format,overlong]", "rewards.weights=[1.0,1.0,1.0]"]
    with pytest.raises(UserError, match="but stage rs samples at most 8"):
        load_config("tiny", ["stages=[{name: rs, kind: rejection_sampling, max_new_tokens: 8}]", *scored])
