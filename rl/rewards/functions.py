"""Rule-based rewards: pure functions (item, config) -> float, registered by name, combined by weight.

An item is what the trainer knows about one completion: its prompt, the completion text, the reference
answer, the task that verifies it and (optionally) the completion length in tokens. Every reward is a
pure function of the item and the RewardsConfig, so scoring in a worker process equals scoring here.

Built in (DeepSeek-R1 and DAPO):
- accuracy: 1 when the final answer (see `extract.py`) verifies against the reference with the item's
  task verifier (`math`: math-verify; `arithmetic`, `countdown`, `algebra`: their own exact verifiers).
- format: 1 for exactly `<think> T </think> <answer> A </answer>` with non-empty T and A (A of at most
  `answer_max_chars` characters, the longest answer `extract.py` reads), else 0.
- language: the share of chain-of-thought words written in the target language's script (R1's
  language-consistency reward, 'Reasoning-oriented Reinforcement Learning');
  0 without a chain of thought, 1 for one made only of numbers and symbols.
- overlong: DAPO's soft overlong punishment, 0 below L_max - L_cache, a linear ramp to -1 at L_max, -1
  beyond (DAPO §3.4, soft overlong punishment). Length in tokens when the item has it, else in characters.
- code (rl.rewards.code): the completion's program run against the item's tests in the sandbox; 0 for
  items without tests. `accuracy` scores code items 0 (the code task's verifier never runs a program).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import unicodedata
from typing import Callable, Optional

from r1jax.errors import UserError
from r1jax.rl.rewards.config import LANGUAGE_SCRIPTS, RewardsConfig
from r1jax.rl.tasks import TASKS, get_task
from r1jax.rl.rewards.extract import ANSWER, END_ANSWER, END_THINK, THINK, extract_answer, split_completion


@dataclasses.dataclass(frozen=True)
class ScoreItem:
    prompt: str
    completion: str
    reference: str
    task: str = "math"
    length: Optional[int] = None  # completion length in tokens, for the overlong penalty
    tests: Optional[str] = None  # code items: the tests as JSON (rl.rewards.code); None for every other task
    entry_point: Optional[str] = None  # code items: the function assertion tests call (optional)
    truncated: bool = False  # cut off by the token budget: it ran to the budget and ended with no stop token


RewardFn = Callable[[ScoreItem, RewardsConfig], float]
REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str):
    """Decorator: make `fn(item, config) -> float` available as a reward named `name` in configs."""
    def decorate(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn
    return decorate


def check_names(config: RewardsConfig) -> None:
    unknown = [n for n in config.names if n not in REWARDS]
    if unknown:
        raise UserError(f"rewards.names: unknown reward(s) {unknown}; registered: {', '.join(sorted(REWARDS))}"
                        " (custom rewards need their module in reward_pool.import_modules)")


@functools.lru_cache(maxsize=64)
def _task(name: str):
    if name not in TASKS:
        return get_task(name)  # the UserError naming the known tasks
    return get_task(name, min(TASKS[name].levels))  # verifiers do not depend on the difficulty


@register_reward("accuracy")
def accuracy(item: ScoreItem, config: RewardsConfig) -> float:
    answer = extract_answer(item.completion, config.answer_max_chars)
    if answer is None:
        return 0.0
    return float(_task(item.task).verify(answer, item.reference, item.prompt))


@register_reward("format")
def format_reward(item: ScoreItem, config: RewardsConfig) -> float:
    text = item.completion.strip()
    if not (text.startswith(THINK) and text.endswith(END_ANSWER)):
        return 0.0
    if any(text.count(tag) != 1 for tag in (THINK, END_THINK, ANSWER, END_ANSWER)):
        return 0.0
    think_end, answer_start = text.index(END_THINK), text.index(ANSWER)
    if answer_start < think_end or text[think_end + len(END_THINK):answer_start].strip():
        return 0.0  # the answer must follow the thought, with only whitespace between
    thought = text[len(THINK):think_end]
    answer = text[answer_start + len(ANSWER):-len(END_ANSWER)].strip()
    return float(bool(thought.strip()) and 0 < len(answer) <= config.answer_max_chars)  # as extract_answer


_WORD = re.compile(r"[^\W\d_]+")  # runs of letters: numbers and symbols are neither language
_IDEOGRAPHIC = ("CJK", "HIRAGANA", "KATAKANA")  # scripts written without spaces: each character is a word
_FORMS = ("HALFWIDTH ", "FULLWIDTH ", "VERTICAL ")  # presentation forms: the script is the next word
# Japanese marks whose names start with no script: ー (KATAKANA-HIRAGANA PROLONGED SOUND MARK), the kana
# repeat marks 〱-〵, and 々 〆 〇 〻 (IDEOGRAPHIC ITERATION MARK, ...).
_SCRIPT_ALIASES = {"KATAKANA-HIRAGANA": "KATAKANA", "KANA": "KATAKANA", "IDEOGRAPHIC": "CJK"}


@functools.lru_cache(maxsize=8192)
def _script(char: str) -> str:
    name = unicodedata.name(char, "UNKNOWN")
    for prefix in _FORMS:
        name = name.removeprefix(prefix)
    script = name.split(" ")[0]
    return _SCRIPT_ALIASES.get(script, script)


def word_scripts(text: str) -> list[str]:
    """The script of each word: every CJK, hiragana or katakana character is a word wherever it stands
    ("a我们" is three words), and each run of other letters between them is one word, of its first letter."""
    scripts = []
    for run in _WORD.findall(text):
        in_word = False  # inside a word of a script written with spaces
        for char in run:
            script = _script(char)
            if script in _IDEOGRAPHIC:
                scripts.append(script)
                in_word = False
            elif not in_word:
                scripts.append(script)
                in_word = True
    return scripts


@register_reward("language")
def language_consistency(item: ScoreItem, config: RewardsConfig) -> float:
    thought, _ = split_completion(item.completion)
    if thought is None or not thought.strip():
        return 0.0
    scripts = word_scripts(thought)
    if not scripts:
        return 1.0  # only numbers and symbols ("3+4=7."): no word in another language
    target = LANGUAGE_SCRIPTS[config.language]
    return sum(s in target for s in scripts) / len(scripts)


@register_reward("overlong")
def overlong_penalty(item: ScoreItem, config: RewardsConfig) -> float:
    length = item.length if item.length is not None else len(item.completion)
    safe = config.max_length - config.overlong_buffer
    if length <= safe:
        return 0.0
    if length > config.max_length:
        return -1.0
    return (safe - length) / config.overlong_buffer


def score_item(item: ScoreItem, config: RewardsConfig) -> dict[str, float]:
    """Every configured reward of one item, by name (the total is `combine`)."""
    check_names(config)
    rewards = {name: float(REWARDS[name](item, config)) for name in config.names}
    bad = {name: value for name, value in rewards.items() if not math.isfinite(value)}
    if bad:  # NaN passed every threshold and filter as "ok"; inf made a group's advantages NaN
        raise ValueError(f"reward(s) returned a non-finite value: {bad}")
    return rewards


def combine(rewards: dict[str, float], config: RewardsConfig) -> float:
    return sum(weight * rewards.get(name, 0.0) for name, weight in zip(config.names, config.weights))
