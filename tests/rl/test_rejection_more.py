"""More of rejection sampling's filters (rl.train.filters): the edges of each rule, counted by hand."""

from r1jax.rl.rewards.config import RewardsConfig
from r1jax.rl.rewards.functions import ScoreItem
from r1jax.rl.train.filters import has_code_block, longest_paragraph, rejection_reason

NAMES = ("accuracy", "format", "language")


def judged(text, scores, filters=("format", "language")):
    rewards = RewardsConfig(names=NAMES, weights=(1.0,) * len(NAMES))
    scored = ScoreItem(prompt="Compute 2+3", completion=text, reference="5", task="arithmetic")
    return rejection_reason(scored, sum(scores.values()), "ok", scores=scores, threshold=0.0, filters=filters,
                            max_repetition=0.5, rewards=rewards)


def test_the_language_filter_keeps_only_a_thought_all_in_the_target_language():
    # 4 English words and 1 Russian (language 0.8): mixed, refused, however small the share of the other language
    assert judged("<think> two plus three равно five </think> <answer> 5 </answer>", {"accuracy": 1.0}) == "language"
    assert judged("<think> two plus three makes five </think> <answer> 5 </answer>", {"accuracy": 1.0}) is None


def test_a_sample_without_its_correctness_score_is_incorrect():
    # accuracy is among the rewards but not in the sample's scores: not shown correct, so not kept
    assert judged("<think> two plus three makes five </think> <answer> 5 </answer>", {"format": 1.0}) == "incorrect"


def test_the_longest_paragraph_is_the_longest_not_the_last():
    assert longest_paragraph("one two three\nfour five\n\nsix") == 5
    assert longest_paragraph("one\n\ntwo three\n\n") == 2


def test_an_indented_block_is_consecutive_indented_lines():
    # a prose line between two indented lines ends the first: each is one indented line, no block
    assert not has_code_block("Let me see:\n\n    x = 1\nthen\n    y = 2\nso")
    assert has_code_block("Let me see:\n\n    x = 1\n    y = 2\nso")


def test_a_tilde_fence_is_a_code_block():
    """CommonMark fences code with ~~~ as with ```: a thought holding a ~~~ block passed the code_block filter.
    A fence opens a line, indented by at most 3 spaces; ~~~ inside a line is no fence."""
    assert has_code_block("Let me code it:\n~~~python\nprint(2 + 3)\n~~~\nIt prints 5.")
    assert has_code_block("Let me code it:\n   ~~~\nprint(2 + 3)\n   ~~~")
    assert not has_code_block("x ~~~ y: about equal")
    assert judged("<think> Let me code it:\n~~~\nprint(2 + 3)\n~~~\nIt prints 5. </think> <answer> 5 </answer>",
                  {"accuracy": 1.0}, filters=("code_block",)) == "code_block"
