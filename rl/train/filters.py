"""Rejection sampling's rules (R1 §2.3.3: keep only correct samples, and of those only the readable ones: no
mixed languages, long paragraphs or code blocks in the chain of thought).

`rejection_reason` names the first rule a scored completion breaks: its score's status, an empty completion,
a wrong answer (`incorrect`: the correctness reward, `accuracy`, or `code` for code rows, below 1 when the
run scores it), a total reward below the threshold, then the configured readability filters in their order.
They run on the host in this process: string scans only, never a parser on model text.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from r1jax.rl.rewards.config import RewardsConfig
from r1jax.rl.rewards.extract import split_completion
from r1jax.rl.rewards.functions import ScoreItem, format_reward, language_consistency
from r1jax.rl.rewards.words import split_words, word_count
from r1jax.rl.train.config import MAX_PARAGRAPH_WORDS

NGRAM = 4  # repetition is measured over word 4-grams
FENCE = "```"  # a Markdown code fence, anywhere
# CommonMark's other fence: ~~~ opening a line indented by at most 3 spaces (a block in it passed the filter)
TILDE_FENCES = tuple(" " * indent + "~~~" for indent in range(4))
INDENTED_CODE_LINES = 2  # consecutive lines indented by 4+ spaces (or a tab) after a blank line: a code block
EPS = 1e-9  # a sum of weighted rewards: 0.6 + 0.3 is 0.8999999999999999


def repetition(text: str, n: int = NGRAM) -> float:
    """The share of a text's word n-grams that repeat an earlier one: 0 for none, near 1 for a loop (words as
    rl.rewards.words.split_words has them: a Chinese character is one)."""
    words = split_words(text)
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def correctness_reward(task: str, names: Sequence[str]) -> Optional[str]:
    """The reward that says whether a sample of `task` is correct (`code` for code rows, which `accuracy`
    scores 0; `accuracy` for every other task), or None when the run's rewards `names` lack it (a run of
    custom rewards: its threshold alone decides)."""
    name = "code" if task == "code" else "accuracy"
    return name if name in names else None


def thought(text: str) -> str:
    """The chain of thought of a completion ('' without one: the format filter's business)."""
    return split_completion(text)[0] or ""


def has_code_block(text: str) -> bool:
    """A fenced (```, or ~~~ opening a line) code block, or an indented one (Markdown's: `INDENTED_CODE_LINES` or
    more consecutive lines indented by 4+ spaces or a tab, after a blank line or at the start), in `text`."""
    if FENCE in text:
        return True
    run, after_blank = 0, True
    for line in text.split("\n"):
        if line.startswith(TILDE_FENCES):
            return True
        if not line.strip():
            run, after_blank = 0, True
            continue
        if (run or after_blank) and line.startswith(("    ", "\t")):
            run += 1
            if run >= INDENTED_CODE_LINES:
                return True
        else:
            run = 0
        after_blank = False
    return False


def longest_paragraph(text: str) -> int:
    """The words of the longest paragraph of `text`, paragraphs split on blank lines: whitespace-separated, but
    each Chinese or Japanese character a word (rl.rewards.words.word_count: the bound means about the same
    length of text in every script)."""
    longest = words = 0
    for line in text.split("\n"):
        words = words + word_count(line) if line.strip() else 0
        longest = max(longest, words)
    return longest


def rejection_reason(item: ScoreItem, total: float, status: str, *, scores: Mapping[str, float], threshold: float,
                     filters: Sequence[str], max_repetition: float, rewards: RewardsConfig,
                     max_paragraph_words: int = MAX_PARAGRAPH_WORDS, correct_only: bool = True) -> str | None:
    """None when the sample is kept, else why not (module docstring): status, empty, incorrect, reward, or the
    first failing filter. `scores`: the item's rewards by name, as the reward pool scored them; `correct_only`
    false leaves correctness to the threshold (a stage's `correct_only`)."""
    if status != "ok":
        return "status"
    if not item.completion.strip():
        return "empty"
    judge = correctness_reward(item.task, rewards.names) if correct_only else None
    if judge is not None and scores.get(judge, 0.0) < 1.0 - EPS:
        return "incorrect"  # R1 keeps correct samples only, whatever the other rewards add up to
    if total < threshold - EPS:
        return "reward"
    checks = {
        "format": lambda: format_reward(item, rewards) >= 1.0,
        "language": lambda: language_consistency(item, rewards) >= 1.0,
        "length": lambda: not item.truncated,  # not cut off by the budget
        "repetition": lambda: repetition(item.completion) <= max_repetition,
        # a code row's thought may sketch the program its answer gives: only other tasks' are refused one
        "code_block": lambda: item.task == "code" or not has_code_block(thought(item.completion)),
        "paragraph": lambda: longest_paragraph(thought(item.completion)) <= max_paragraph_words,
    }
    for name in filters:
        if not checks[name]():
            return name
    return None
