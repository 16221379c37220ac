"""Completion text instrumentation: reflection words per completion (R1's "aha" signal)."""

import pytest

from r1jax.rl.evaluate import summarize
from r1jax.rl.rewards import ScoreResult
from r1jax.rl.train.rollouts import reflection_rate

TEXTS = ["Wait, let me verify: 2+2=4. Wait.", "x = 3, checked twice", "no reflection here",
         "However, actually re-examine: CHECK it"]


def test_reflection_words_are_counted_as_whole_words_in_any_case():
    # 3 (wait, verify, wait) + 0 ("checked" is not "check") + 0 + 4 (however, actually, re-examine, check)
    assert reflection_rate(TEXTS) == pytest.approx(7 / 4)
    assert reflection_rate([]) == 0.0


def test_configured_words_replace_the_default_list():
    assert reflection_rate(TEXTS, ("checked", "twice")) == pytest.approx(2 / 4)
    assert reflection_rate(TEXTS, ("wait",)) == pytest.approx(2 / 4)


def test_evaluation_reports_the_configured_reflection_rate():
    problems = [{"prompt": "p", "answer": "4"}, {"prompt": "q", "answer": "3"}]
    results = [ScoreResult(status="ok", rewards={"accuracy": 1.0, "format": 1.0}, total=2.0) for _ in TEXTS]
    figures = summarize(problems, TEXTS, [5] * 4, results, k=2, reflection_words=("wait", "check"))
    assert figures["reflection_rate"] == pytest.approx((2 + 0 + 0 + 1) / 4)
