"""Rejection-sampling filters and bookkeeping, and the config rules of pipeline stages."""

import time

import pytest

from r1jax.errors import UserError
from r1jax.rl.config import load_config, stage_config
from r1jax.rl.rewards.config import RewardsConfig
from r1jax.rl.rewards.functions import ScoreItem, combine, score_item
from r1jax.rl.rewards.words import split_words, word_count
from r1jax.rl.train.filters import has_code_block, rejection_reason, repetition
from r1jax.rl.train.stage_rejection import KeptSet

GOOD = "<think> 2+3=5. </think> <answer> 5 </answer>"


def item(text, length=10, truncated=False):
    return ScoreItem(prompt="Compute 2+3", completion=text, reference="5", task="arithmetic", length=length,
                     truncated=truncated)


def reason(text, total=2.0, status="ok", length=10, truncated=False,
           filters=("format", "language", "length", "repetition")):
    scored = item(text, length, truncated)
    return rejection_reason(scored, total, status, scores=score_item(scored, RewardsConfig()), threshold=2.0,
                            filters=filters, max_repetition=0.5, rewards=RewardsConfig())


def test_repetition_is_the_share_of_repeated_word_4grams():
    assert repetition("a b c d a b c d a b c d") == pytest.approx(1 - 4 / 9)  # 9 grams, 4 distinct
    assert repetition("one two three four five") == 0.0
    assert repetition("too short") == 0.0


def test_a_share_of_repetition_at_the_bound_is_kept():
    """stages[].max_repetition is the most a kept sample may repeat: at it kept, just above it refused."""
    text = "<think> " + "so 2+3=5 . " * 12 + "</think> <answer> 5 </answer>"
    scored, share = item(text), repetition(text)
    common = dict(scores=score_item(scored, RewardsConfig()), threshold=2.0, filters=("repetition",),
                  rewards=RewardsConfig())
    assert 0 < share < 1
    assert rejection_reason(scored, 2.0, "ok", max_repetition=share, **common) is None
    assert rejection_reason(scored, 2.0, "ok", max_repetition=share - 1e-9, **common) == "repetition"


def test_a_loop_in_a_script_without_spaces_is_repetition():
    # a Chinese line has no spaces: it was one word, so a thought repeating one sentence read 0.0
    assert repetition("我们算一算" * 3) == pytest.approx(1 - 5 / 12)  # 15 characters: 12 grams, 5 distinct
    assert repetition("我们先算出两个数的和，然后检查结果，最后写出答案。") == 0.0
    loop = think("我们计算一下这个数字。" * 8)
    assert judged(loop, ("accuracy", "format"), scores={"accuracy": 1.0, "format": 1.0},
                  filters=("repetition",)) == "repetition"


@pytest.mark.parametrize("text,kwargs,expected", [
    (GOOD, {}, None),
    (GOOD, {"total": 1.0}, "reward"),
    (GOOD, {"status": "timeout"}, "status"),
    ("   ", {"total": 5.0}, "empty"),
    ("<answer> 5 </answer>", {}, "format"),
    ("<think> 2+3 равно 5. </think> <answer> 5 </answer>", {}, "language"),
    (GOOD, {"length": 40, "truncated": True}, "length"),
    (GOOD, {"length": 40}, None),  # its stop id on the budget's last token: not cut off
    ("<think> " + "so 2+3=5 . " * 12 + "</think> <answer> 5 </answer>", {}, "repetition"),
    ("<answer> 5 </answer>", {"filters": ("repetition",)}, None),  # only the configured filters apply
])
def test_rejection_reason_names_the_first_failing_check(text, kwargs, expected):
    assert reason(text, **kwargs) == expected


def test_the_threshold_holds_for_a_weighted_sum_that_rounds_below_it():
    """Weights 0.6 and 0.3 on two perfect rewards total 0.8999999999999999: the threshold 0.9 keeps it."""
    total = 0.6 * 1.0 + 0.3 * 1.0
    assert total < 0.9
    correct = {"accuracy": 1.0, "format": 1.0}
    assert rejection_reason(item(GOOD), total, "ok", scores=correct, threshold=0.9, filters=(), max_repetition=0.5,
                            rewards=RewardsConfig()) is None
    assert rejection_reason(item(GOOD), 0.89, "ok", scores=correct, threshold=0.9, filters=(), max_repetition=0.5,
                            rewards=RewardsConfig()) == "reward"


WRONG = "<think> two plus three is six </think> <answer> 6 </answer>"
ALL_FILTERS = ("format", "language", "length", "repetition", "code_block", "paragraph")


def judged(text, names, task="arithmetic", scores=None, correct_only=True, filters=ALL_FILTERS):
    """The rejection reason of `text` scored by the rewards `names` (each weight 1) at R1's threshold 2.0."""
    rewards = RewardsConfig(names=names, weights=(1.0,) * len(names))
    scored = ScoreItem(prompt="Compute 2+3", completion=text, reference="5", task=task)
    scores = score_item(scored, rewards) if scores is None else scores
    return rejection_reason(scored, combine(scores, rewards), "ok", scores=scores, threshold=2.0, filters=filters,
                            max_repetition=0.5, rewards=rewards, correct_only=correct_only)


def test_a_wrong_answer_is_rejected_whatever_the_other_rewards_add_up_to():
    """accuracy + format + language at the README's threshold 2.0: a wrong answer in good English format scores
    0 + 1 + 1 = 2 and was kept; R1 keeps correct samples only."""
    names = ("accuracy", "format", "language")
    assert judged(WRONG, names) == "incorrect"
    assert judged(GOOD, names) is None
    assert judged(WRONG, names, correct_only=False) is None  # the stage's opt-out: the threshold alone decides
    # a run whose rewards hold no correctness reward (custom ones): the threshold alone decides
    assert judged(WRONG, ("format", "language")) is None


def test_code_rows_are_judged_by_the_code_reward():
    """`accuracy` scores a code row 0 and `code` scores every other row 0: each row by its own task's judge."""
    program = "<think> add them </think> <answer> def f(): return 5 </answer>"
    both = ("accuracy", "code", "format")
    assert judged(program, both, task="code", scores={"accuracy": 0.0, "code": 1.0, "format": 1.0}) is None
    assert judged(program, both, task="code", scores={"accuracy": 0.0, "code": 0.0, "format": 1.0}) == "incorrect"
    assert judged(GOOD, both, scores={"accuracy": 1.0, "code": 0.0, "format": 1.0}) is None
    assert judged(WRONG, both, scores={"accuracy": 0.0, "code": 1.0, "format": 1.0}) == "incorrect"
    assert judged(program, ("code", "format"), task="code", scores={"code": 0.5, "format": 1.0}) == "incorrect"


def think(body):
    return f"<think> {body} </think> <answer> 5 </answer>"


LONG_PARAGRAPH = " ".join(f"step{i} adds to the sum." for i in range(80))  # 320 words, no blank line


@pytest.mark.parametrize("text,task,expected", [
    (think("Let me code it:\n```python\nprint(2+3)\n```\nIt prints 5."), "arithmetic", "code_block"),
    (think("Let me code it:\n\n    x = 2 + 3\n    print(x)\n\nIt prints 5."), "arithmetic", "code_block"),
    (think("Steps:\n1. add\n    2 and 3\n    give 5"), "arithmetic", None),  # a list's continuation lines
    (think("a single\n\n    indented line\n\nis no block"), "arithmetic", None),
    ("<think> 2+3=5 </think> <answer> ```5``` </answer>", "arithmetic", None),  # only the thought is read
    (think("sketch:\n```python\ndef f(): return 5\n```"), "code", None),  # a code row may sketch code
    (think(LONG_PARAGRAPH), "arithmetic", "paragraph"),
    (think(LONG_PARAGRAPH.replace("step40 ", "\n\nstep40 ")), "arithmetic", None),  # two of 160 words
    (think(LONG_PARAGRAPH.replace("step40 ", "\n  \nstep40 ")), "arithmetic", None),  # a blank line of spaces
    (think(LONG_PARAGRAPH.replace("0 ", "0\n")), "arithmetic", "paragraph"),  # one paragraph over many lines
])
def test_code_blocks_and_long_paragraphs_in_the_thought_are_filtered(text, task, expected):
    scores = {"accuracy": 1.0, "code": 1.0, "format": 1.0}
    assert judged(text, ("accuracy", "code", "format"), task=task, scores=scores,
                  filters=("code_block", "paragraph")) == expected
    assert judged(text, ("accuracy", "code", "format"), task=task, scores=scores, filters=()) is None


CHINESE_PARAGRAPH = "我们先把两个数相加，得到结果。" * 25  # 13 characters (words) a sentence: 325 words, no space
JAPANESE_PARAGRAPH = "まず二つの数を足します。" * 30  # 11 characters a sentence: 330 words


@pytest.mark.parametrize("paragraph", [CHINESE_PARAGRAPH, JAPANESE_PARAGRAPH], ids=["chinese", "japanese"])
def test_the_paragraph_bound_counts_each_chinese_or_japanese_character_as_a_word(paragraph):
    """Words were whitespace-separated: 325 Chinese characters without a space were one word, so the default
    bound of 300 words let any paragraph of Chinese or Japanese through."""
    scores = {"accuracy": 1.0, "format": 1.0}
    assert judged(think(paragraph), ("accuracy", "format"), scores=scores, filters=("paragraph",)) == "paragraph"
    half = len(paragraph) // 2
    halves = paragraph[:half] + "\n\n" + paragraph[half:]  # two paragraphs of about 165 words
    assert judged(think(halves), ("accuracy", "format"), scores=scores, filters=("paragraph",)) is None


def test_a_long_token_without_spaces_is_split_in_linear_time():
    """The trainer's filters split every kept sample's words: a token of 100,000 letters outside ASCII took 5 s
    (grown a character at a time: 10^6 took 8 min), now milliseconds."""
    start = time.perf_counter()
    bold, accent = "\U0001d41a" * 100_000, "é" * 100_000
    assert split_words(bold + "我" + accent) == [bold, "我", accent]
    assert time.perf_counter() - start < 1  # ~0.05 s


def test_what_shows_nothing_is_no_part_of_a_word_for_the_filters():
    """A reader sees the same loop with zero-width spaces strewn in, and nothing for Hangul fillers (the language
    reward's words have neither): the spaces made each repeated 4-gram new (0.86 where the loop reads 0.98), and
    20 fillers were 20 words of a paragraph."""
    loop = "we add the numbers again and " * 50
    strewn = " ".join(word + "\u200b" * (i % 7) + "\u200d" * (i % 3) for i, word in enumerate(loop.split()))
    assert repetition(strewn) == pytest.approx(repetition(loop)) == pytest.approx(1 - 6 / 297)
    assert word_count("\u3164 " * 20 + "one\u00adtwo") == 1
    assert split_words("我\u200b们 a\ufe0fb") == ["我", "们", "ab"]


def test_a_word_of_a_script_without_spaces_is_a_character_and_punctuation_no_word():
    assert word_count("Add 2 and 3, then check.") == 6  # whitespace-separated, as before
    assert word_count("用3个苹果") == 5  # 用 3 个 苹 果: the digits between characters are a word
    assert word_count("我们，你们。") == 4  # fullwidth and ideographic punctuation are none
    assert word_count("これはペンです") == 7  # kana and kanji alike
    assert word_count("a我们 apples") == 4
    assert word_count("안녕하세요 세계") == 2  # Korean is written with spaces between its words


def test_the_paragraph_bound_is_a_stage_setting():
    text = think("one two three four five six")
    rewards = RewardsConfig()
    scores = {"accuracy": 1.0, "format": 1.0}
    for words, expected in ((5, "paragraph"), (6, None)):
        assert rejection_reason(item(text), 2.0, "ok", scores=scores, threshold=2.0, filters=("paragraph",),
                                max_repetition=0.5, rewards=rewards, max_paragraph_words=words) == expected
    config = load_config("tiny", [stages("{name: rs, kind: rejection_sampling, max_paragraph_words: 50}")])
    assert config.stages[0].max_paragraph_words == 50 and config.stages[0].correct_only
    assert set(config.stages[0].filters) >= {"code_block", "paragraph"}  # on by default, as every filter


def test_kept_set_keeps_duplicates_once_and_counts_by_task_and_difficulty():
    kept = KeptSet()
    problem = {"task": "arithmetic", "prompt": "Compute 2+3", "answer": "5", "difficulty": 1}
    other = {"task": "algebra", "prompt": "Solve x+1=2", "answer": "1", "difficulty": 2}
    assert kept.add(problem, GOOD, 2.0, None)
    assert not kept.add(problem, GOOD + "  ", 2.0, None)  # the same solution once stripped
    assert not kept.add(other, "x", 0.0, "reward")
    assert kept.add(other, "<think> x=1 </think> <answer> 1 </answer>", 2.0, None)
    stats = kept.stats()
    assert (stats["candidates"], stats["kept"], stats["kept_rate"]) == (4, 2, 0.5)
    assert stats["rejected"] == {"duplicate": 1, "reward": 1}
    assert stats["by_task"]["arithmetic"] == {"candidates": 2, "kept": 1, "kept_rate": 0.5}
    assert stats["by_difficulty"]["2"] == {"candidates": 2, "kept": 1, "kept_rate": 0.5}
    assert [r["solution"] for r in kept.rows] == [GOOD, "<think> x=1 </think> <answer> 1 </answer>"]
    # another correct solution of the same problem is a row of its own (R1 keeps every correct sample), stripped
    assert kept.add(problem, "\n<think> 3+2=5. </think> <answer> 5 </answer> \n", 2.0, None)
    assert kept.rows[-1]["solution"] == "<think> 3+2=5. </think> <answer> 5 </answer>"
    assert kept.stats()["kept"] == 3


def stages(*entries):
    return "stages=[" + ", ".join(entries) + "]"


def test_kept_samples_fit_the_shortest_reader():
    from r1jax.rl.train.config import DEFAULT_MAX_SEQUENCE_LENGTH
    from r1jax.rl.train.stage_rejection import kept_length

    config = load_config("tiny", [stages("{name: rs, kind: rejection_sampling}",
                                         "{name: a, kind: sft, data_path: rs, max_sequence_length: 2048}",
                                         "{name: b, kind: distill, teacher: rs, max_sequence_length: 512}",
                                         "{name: g, kind: grpo}",
                                         "{name: c, kind: sft, max_sequence_length: 256}",
                                         "{name: rs2, kind: rejection_sampling}",
                                         "{name: e, kind: distill, teacher: rs2, max_sequence_length: 128}")])
    # stage c trains on data.path and stage e on rs2's samples, not on rs's
    assert kept_length(config.stages, "rs") == 512 and kept_length(config.stages, "rs2") == 128
    alone = load_config("tiny", [stages("{name: rs, kind: rejection_sampling}", "{name: g, kind: grpo}")])
    assert kept_length(alone.stages, "rs") == DEFAULT_MAX_SEQUENCE_LENGTH


def test_distill_stage_swaps_the_model_from_its_position_on():
    config = load_config("tiny", [stages("{name: rs, kind: rejection_sampling}",
                                         "{name: d, kind: distill, teacher: rs, student_overrides: [hidden_size=64]}",
                                         "{name: g, kind: grpo}")])
    teacher = config.model.hidden_size
    assert teacher != 64
    assert [stage_config(config, i).model.hidden_size for i in range(3)] == [teacher, 64, 64]


@pytest.mark.parametrize("entries,message", [
    (["{name: d, kind: distill}"], r"stages\[d\].teacher: a distill stage needs"),
    (["{name: g, kind: grpo}", "{name: d, kind: distill, teacher: g}"], "earlier rejection_sampling stage"),
    (["{name: d, kind: distill, teacher: rs}", "{name: rs, kind: rejection_sampling}"], "earlier rejection_sampl"),
    (["{name: s, kind: sft, data_path: s}"], r"stages\[s\].data_path='s'"),
    (["{name: rs, kind: rejection_sampling}", "{name: d, kind: distill, teacher: rs, student_overrides: [hiden=3]}"],
     r"stages\[d\].student_overrides: 'hiden=3': key 'hiden'"),
    (["{name: rs, kind: rejection_sampling}", "{name: d, kind: distill, teacher: rs, student_overrides: [wide]}"],
     r"stages\[d\].student_overrides: 'wide' is not of the form key=value"),
    (["{name: s, kind: sft, student_overrides: [hidden_size=64]}"], "only a distill stage changes the model"),
    (["{name: rs, kind: rejection_sampling, filters: [format, vibes]}"], r"filters: unknown \['vibes'\]"),
    (["{name: rs, kind: rejection_sampling, max_paragraph_words: 0}"], r"stages\[rs\].max_paragraph_words=0"),
    (["{name: rs, kind: rejection_sampling, correct_only: 1}"], "stages.0.correct_only = 1: expected true or false"),
])
def test_bad_pipeline_stages_are_refused_naming_the_field(entries, message):
    with pytest.raises(UserError, match=message):
        load_config("tiny", [stages(*entries)])


def test_tab_indented_lines_after_a_blank_line_are_a_code_block():
    assert has_code_block("Let me code it:\n\n\tx = 2 + 3\n\tprint(x)\n\nIt prints 5.")
    assert has_code_block("\tx = 1\n\ty = 2")  # at the start counts as after a blank line
    assert not has_code_block("Let me code it:\n\n\tx = 2 + 3\n\nIt prints 5.")  # one line is no block
    assert not has_code_block("Steps:\n\tadd\n\tthem")  # no blank line before: a continuation


def test_the_code_block_filter_refuses_a_tab_indented_block_in_the_thought():
    text = "<think> Let me code it:\n\n\tx = 2 + 3\n\tprint(x)\n\nIt prints 5. </think> <answer> 5 </answer>"
    row = ScoreItem(prompt="Compute 2+3", completion=text, reference="5", task="arithmetic", length=10)
    rewards = RewardsConfig(names=("accuracy", "format"), weights=(1.0, 1.0))
    why = rejection_reason(row, 2.0, "ok", scores={"accuracy": 1.0, "format": 1.0}, threshold=2.0,
                              filters=("code_block",), max_repetition=0.5, rewards=rewards)
    assert why == "code_block"


def test_a_rejected_repeat_of_a_kept_sample_is_counted_under_its_own_reason():
    kept = KeptSet()
    problem = {"task": "arithmetic", "prompt": "Compute 2+3", "answer": "5", "difficulty": 1}
    assert kept.add(problem, GOOD, 2.0, None)
    assert not kept.add(problem, GOOD, 0.5, "reward")  # the same text, scored below the threshold this time
    assert not kept.add(problem, GOOD, 2.0, None)
    assert kept.stats()["rejected"] == {"reward": 1, "duplicate": 1}
    # the same text for another prompt is no duplicate
    assert kept.add({"task": "arithmetic", "prompt": "Compute 1+4", "answer": "5"}, GOOD, 2.0, None)


def test_a_kept_dataset_is_a_jsonl_beside_the_statistics_rejection_sampling_writes(tmp_path):
    from r1jax.rl.train.stage_rejection import is_kept_dataset

    samples = tmp_path / "rs.jsonl"
    samples.write_text('{"prompt": "p", "solution": "s"}\n')
    assert not is_kept_dataset(samples)  # a user's file: no statistics beside it
    (tmp_path / "rs.stats.json").write_text('{"candidates": 4}')
    assert not is_kept_dataset(samples)  # statistics of something else
    (tmp_path / "rs.stats.json").write_text("not json")
    assert not is_kept_dataset(samples)
    (tmp_path / "rs.stats.json").write_text('{"candidates": 4, "kept": 2}')
    assert is_kept_dataset(samples) and is_kept_dataset(str(samples))
    assert not is_kept_dataset(tmp_path / "rs.parquet") and not is_kept_dataset(None)
    assert not is_kept_dataset(tmp_path / "rs.jsonx")  # beside the same statistics, but no JSONL


def test_a_kept_row_holds_the_answer_as_text_and_a_code_problems_tests():
    kept = KeptSet()
    code = {"task": "code", "prompt": "Write f", "answer": 0, "tests": '["assert f() == 1"]', "entry_point": "f"}
    assert kept.add(code, " <think> t </think> <answer> def f(): return 1 </answer> ", 1.0, None)
    assert kept.rows == [{"task": "code", "prompt": "Write f", "answer": "0",
                          "solution": "<think> t </think> <answer> def f(): return 1 </answer>", "difficulty": 0,
                          "reward": 1.0, "tests": '["assert f() == 1"]', "entry_point": "f"}]
    assert kept.stats()["by_difficulty"] == {"0": {"candidates": 1, "kept": 1, "kept_rate": 1.0}}
