"""Between tokens and text: the one sample-and-score path (rows prompt-major, texts cut at EOS, the items
submitted for scoring, rows cut off by the budget told from rows that stopped on its last token), and completion
instrumentation: reflection words per completion (R1's "aha")."""

import numpy as np
import pytest

from r1jax.model.tokenizer import THINK, apply_template
from r1jax.rl.evaluate import summarize
from r1jax.rl.rewards import ScoreResult
from r1jax.rl.sampler import Rollout
from r1jax.rl.train.rollouts import (
    completion_ids, group_rewards, length_metrics, merge_rollouts, reflection_rate, reward_metrics, sample_and_submit,
    score_items,
    stopped_rows,
)

TEXTS = ["Wait, let me verify: 2+2=4. Wait.", "x = 3, checked twice", "no reflection here",
         "However, actually re-examine: CHECK it"]


def test_reflection_words_are_counted_as_whole_words_in_any_case():
    # 3 (wait, verify, wait) + 0 ("checked" is not "check") + 0 + 4 (however, actually, re-examine, check)
    assert reflection_rate(TEXTS) == pytest.approx(7 / 4)
    assert reflection_rate([]) == 0.0
    assert reflection_rate(["Await it, then double-check: a precheck"]) == 1.0  # "check" alone, not in a word


def test_configured_words_replace_the_default_list():
    assert reflection_rate(TEXTS, ("checked", "twice")) == pytest.approx(2 / 4)
    assert reflection_rate(TEXTS, ("wait",)) == pytest.approx(2 / 4)


def test_evaluation_reports_the_configured_reflection_rate():
    problems = [{"prompt": "p", "answer": "4"}, {"prompt": "q", "answer": "3"}]
    results = [ScoreResult(status="ok", rewards={"accuracy": 1.0, "format": 1.0}, total=2.0) for _ in TEXTS]
    figures = summarize(problems, TEXTS, [5] * 4, results, k=2, reflection_words=("wait", "check"))
    assert figures["reflection_rate"] == pytest.approx((2 + 0 + 0 + 1) / 4)


class FakeTokenizer:
    """Characters as ids (ord), EOS 1, pad 0."""

    eos_id, pad_id = 1, 0
    eos_ids = (1,)

    def encode(self, text, add_bos=False):
        return [2] * add_bos + [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


class FakeSampler:
    """Returns completions "<prompt index><sample>" + EOS (row 0 hits no EOS: it fills the budget)."""

    def __init__(self):
        self.calls = []

    def generate(self, policy, prompts, samples, **overrides):
        self.calls.append((policy, prompts, samples, overrides))
        rows = [f"{p}{g}" for p in range(len(prompts)) for g in range(samples)]
        width = 3
        completion = np.array([[ord(c) for c in r] + ([1] if i else [ord("x")]) for i, r in enumerate(rows)], np.int32)
        prompt = np.full((len(rows), 4), 5, np.int32)
        lengths = np.array([width] * len(rows), np.int32)
        tokens = np.concatenate([prompt, completion], axis=1)
        return Rollout(tokens, np.ones_like(tokens, bool), np.zeros_like(tokens), np.zeros((len(rows), width)),
                       lengths, np.zeros((1, len(rows), tokens.shape[1], 2), np.int32), np.int32(width))


class FakePool:
    def __init__(self):
        self.submitted = []

    def submit(self, items):
        self.submitted.append(items)
        return f"handle-{len(self.submitted)}"


def test_sample_and_submit_keeps_rows_prompt_major_and_submits_what_it_returns():
    sampler, pool = FakeSampler(), FakePool()
    problems = [{"prompt": "a", "answer": 1, "task": "t"}, {"prompt": "b", "answer": "2", "task": "u"}]
    sampled = sample_and_submit(sampler, "policy", FakeTokenizer(), "r1_zero", problems, pool, 2,
                                temperature=0.5, max_new_tokens=3)
    (policy, prompts, samples, overrides), = sampler.calls
    assert (policy, samples, overrides) == ("policy", 2, {"temperature": 0.5, "max_new_tokens": 3})
    assert prompts[1] == [2] + [ord(c) for c in apply_template("r1_zero", "b")]
    assert sampled.texts == ["00x", "01", "10", "11"]  # up to and excluding EOS
    assert [(i.prompt, i.reference, i.task, i.completion, i.length) for i in sampled.items] == [
        ("a", "1", "t", "00x", 3), ("a", "1", "t", "01", 3), ("b", "2", "u", "10", 3), ("b", "2", "u", "11", 3)]
    assert pool.submitted == [sampled.items] and sampled.pending == "handle-1"
    assert sampled.problems is problems and sampled.seconds >= 0
    # every row fills the 3-token budget; rows 1-3 end with EOS there, so only row 0 was cut off by it (the
    # rejection filter "length" and `truncation_rate` read this)
    assert [i.truncated for i in sampled.items] == [True, False, False, False]
    figures = length_metrics(sampled.rollout, 3, FakeTokenizer.eos_ids)
    assert figures["truncation_rate"] == 0.25 and figures["response_length/max"] == 3


def test_merged_rollouts_route_the_extra_left_padding_to_k_distinct_experts():
    """Rounds whose prompts were padded to 2 and 5 columns (DAPO's dynamic sampling merges them): the narrow
    one's 3 extra columns record K distinct experts (`padding_routes`; a replayed forward routes them, and
    one expert K times broke model.dispatch's ragged path); its own columns and the wide one's stay."""
    def rollout(width, rows=2, n=3, k=4, layers=2):
        rng = np.random.default_rng(width)
        tokens = rng.integers(1, 50, (rows, width + n)).astype(np.int32)
        experts = np.argsort(rng.random((layers, rows, width + n, 8)), axis=-1)[..., :k].astype(np.int32)
        return Rollout(tokens, np.ones_like(tokens, bool), np.zeros_like(tokens), np.zeros((rows, n), np.float32),
                       np.full((rows,), n, np.int32), experts, np.int32(n))
    narrow, wide = rollout(2), rollout(5)
    merged = merge_rollouts([narrow, wide], pad_id=0)
    experts = np.asarray(merged.experts_LBTK)
    assert experts.shape == (2, 4, 8, 4) and np.asarray(merged.tokens_BT)[:2, :3].tolist() == [[0] * 3] * 2
    assert np.all(np.diff(np.sort(experts, axis=-1), axis=-1) != 0)
    assert np.array_equal(experts[:, :2, 3:], narrow.experts_LBTK) and np.array_equal(experts[:, 2:], wide.experts_LBTK)
    assert not np.asarray(merged.valid_BT)[:2, :3].any()


def test_a_prompt_that_opens_a_thought_gives_its_own_rows_a_think_and_no_other_rows():
    """Template "none": the first problem's prompt ends in <think>, the second's does not; each row's response
    reads its own prompt."""
    problems = [{"prompt": "a" + THINK, "answer": "1", "task": "t"}, {"prompt": "b", "answer": "2", "task": "t"}]
    sampled = sample_and_submit(FakeSampler(), "policy", FakeTokenizer(), "none", problems, FakePool(), 2)
    assert sampled.texts == [THINK + "00x", THINK + "01", "10", "11"]


def test_score_items_carry_each_code_problems_tests_and_entry_point():
    problems = [{"prompt": "p", "answer": "", "task": "code", "tests": '["assert f(1) == 2"]', "entry_point": "f"},
                {"prompt": "q", "answer": 3, "task": "arithmetic"}]
    items = score_items(problems, ["x", "y", "z", "w"], [1, 2, 3, 4], samples=2)
    assert [(i.tests, i.entry_point) for i in items] == [('["assert f(1) == 2"]', "f")] * 2 + [(None, None)] * 2
    assert [i.truncated for i in items] == [False] * 4 and [i.length for i in items] == [1, 2, 3, 4]


def test_a_row_that_generated_nothing_has_not_stopped_even_where_padding_is_an_eos_id():
    """Rows of a 3-token budget after a 1-token prompt: EOS (1) on the budget's last token, EOS mid-way, no EOS,
    and an empty row whose padding is the EOS id (a tokenizer with pad == eos)."""
    tokens = np.array([[5, 7, 8, 1], [5, 7, 1, 1], [5, 7, 8, 9], [5, 1, 1, 1]], np.int32)
    lengths = np.array([3, 2, 3, 0], np.int32)
    rollout = Rollout(tokens, np.ones_like(tokens, bool), np.zeros_like(tokens), np.zeros((4, 3), np.float32),
                      lengths, np.zeros((1, 4, 4, 2), np.int32), np.int32(3))
    assert stopped_rows(rollout, [1]).tolist() == [True, True, False, False]
    assert completion_ids(rollout, [1]) == [[7, 8], [7], [7, 8, 9], []]
    # only the row that ran to the budget without a stop was cut off by it: not the one that generated nothing
    assert length_metrics(rollout, 3, [1]) == {"response_length/mean": 2.0, "response_length/max": 3,
                                               "truncation_rate": 0.25, "generated_tokens": 8,
                                               "completion_columns": 3}


def test_merged_rollouts_ran_as_many_decode_steps_as_the_longest():
    def rollout(steps):
        tokens = np.ones((1, 4), np.int32)
        return Rollout(tokens, np.ones_like(tokens, bool), np.zeros_like(tokens), np.zeros((1, 3), np.float32),
                       np.array([steps], np.int32), np.zeros((1, 1, 4, 2), np.int32), np.int32(steps))
    assert int(merge_rollouts([rollout(2), rollout(3), rollout(1)], pad_id=0).steps) == 3


def test_reward_metrics_average_every_row_and_count_each_status():
    results = [ScoreResult({"accuracy": 1.0, "format": 0.0}, 1.0, "ok"),
               ScoreResult({"accuracy": 0.0}, 0.0, "ok", code_status="passed"),
               ScoreResult({"accuracy": 1.0, "format": 1.0}, 2.0, "timeout")]
    assert reward_metrics(results, ["accuracy", "format"]) == {
        "reward/total": 1.0, "reward/accuracy": pytest.approx(2 / 3), "reward/format": pytest.approx(1 / 3),
        "pool/ok": 2, "pool/timeout": 1, "code/passed": 1}


def test_reward_metrics_of_a_batch_without_one_scored_row_report_none_ok():
    """Totals 0.5, 0 and 0.25 average to 0.25 (not the first row's 0.5); no row scored "ok": `pool/ok` is 0, not
    missing (a dashboard plots it on every step)."""
    results = [ScoreResult({"accuracy": 0.5}, 0.5, "timeout"), ScoreResult({}, 0.0, "error"),
               ScoreResult({"accuracy": 0.25}, 0.25, "timeout")]
    assert reward_metrics(results, ["accuracy"]) == {
        "reward/total": 0.25, "reward/accuracy": 0.25, "pool/ok": 0, "pool/timeout": 2, "pool/error": 1}


def test_group_rewards_gather_each_prompts_consecutive_rows():
    """Rows are prompt-major: with G = 3, rows 0-2 are prompt 0's samples and rows 3-5 prompt 1's (a transposed
    read would group rows 0, 2, 4 and 1, 3, 5, each group mixing both prompts' samples)."""
    results = [ScoreResult({}, total, "ok") for total in (1.0, 0.0, 0.5, 2.0, 2.0, 3.0)]
    assert group_rewards(results, 3).tolist() == [[1.0, 0.0, 0.5], [2.0, 2.0, 3.0]]
    assert group_rewards(results, 2).tolist() == [[1.0, 0.0], [0.5, 2.0], [2.0, 3.0]]
