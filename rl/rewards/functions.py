"""Rule-based rewards: pure functions (item, config) -> float, registered by name, combined by weight.

An item is what the trainer knows about one completion: its prompt, the completion text, the reference
answer, the task that verifies it and (optionally) the completion length in tokens. Every reward is a
pure function of the item and the RewardsConfig, so scoring in a worker process equals scoring here.

Built in (DeepSeek-R1 and DAPO):
- accuracy: 1 when the final answer (see `extract.py`) verifies against the reference with the item's
  task verifier (`math`: math-verify; `arithmetic`, `countdown`, `algebra`: their own exact verifiers).
- format: 1 for exactly `<think> T </think> <answer> A </answer>` with T and A that show something (not only
  whitespace or zero-width characters; A of at most
  `answer_max_chars` characters, the longest answer `extract.py` reads, except for `code` items: a program's
  length is the code reward's business, `rewards.code.max_program_chars`), else 0.
- language: the share of chain-of-thought words written in the target language's script (R1's
  language-consistency reward, 'Reasoning-oriented Reinforcement Learning': it targets mixed natural
  languages, not notation); 0 without a chain of thought, 1 for one made only of numbers and symbols.
  How words and their scripts are read (styled letters, symbols, variables, notation, look-alike scripts):
  `rl.rewards.words`.
- overlong: DAPO's soft overlong punishment, 0 below L_max - L_cache, a linear ramp to -1 at L_max, -1
  beyond (DAPO §3.4, soft overlong punishment). Length in tokens when the item has it, else in characters.
- code (rl.rewards.code): the completion's program run against the item's tests in the sandbox; 0 for
  items without tests. `accuracy` scores code items 0 (the code task's verifier never runs a program).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import math
import re
from typing import Callable, Optional, Sequence

from r1jax.errors import UserError
from r1jax.rl.rewards.config import LANGUAGE_SCRIPTS, RewardsConfig
from r1jax.rl.tasks import TASKS, get_task
from r1jax.rl.rewards.extract import ANSWER, END_ANSWER, END_THINK, THINK, extract_answer, split_completion
from r1jax.rl.rewards.words import blank, word_scripts


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


def check_names(config: RewardsConfig, import_modules: Sequence[str] = (), named: str = "rewards.names",
                custom: str = "custom rewards need their module in reward_pool.import_modules") -> None:
    """Every name of `config.names` is a registered reward, once `import_modules` (reward_pool.import_modules,
    where custom rewards register) are imported; else a UserError naming the unknown ones and a likely meant one.
    `named` and `custom`: what the error calls the names and says of custom rewards (a command's flag and its
    own way, if any, to bring them)."""
    for module in import_modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise UserError(f"reward_pool.import_modules: cannot import {module!r}: {err}") from err
    unknown = [n for n in config.names if n not in REWARDS]
    if unknown:
        close = {n: difflib.get_close_matches(n, REWARDS, n=1) for n in unknown}
        meant = "; ".join(f"did you mean {m[0]!r} for {n!r}?" for n, m in close.items() if m)
        raise UserError(f"{named}: unknown reward(s) {unknown}; {meant + ' ' if meant else ''}registered: "
                        f"{', '.join(sorted(REWARDS))} ({custom})")


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
    if blank(thought) or blank(answer):  # (a zero-width space alone was a thought, and an answer)
        return 0.0
    # as extract_answer, except a program: the code reward reads the whole <answer> (extract_program)
    return float(item.task == "code" or len(answer) <= config.answer_max_chars)


_TAG = re.compile("|".join(map(re.escape, (THINK, END_THINK, ANSWER, END_ANSWER))))


# An answer of at most this many words (`word_scripts`) is a value or a name ("\text{north east}", "十四"), of no
# language; a longer one is prose beside its value (a thought moved into the answer, around \boxed{} or $...$,
# which math-verify reads past: it scored 1.0 for any language, with format and accuracy 1)
ANSWER_VALUE_WORDS = 4


def _without_answers(text: str, keep_prose: tuple[str, ...] | None = None) -> str:
    """`text` less its <answer>...</answer> blocks, in one pass (a lazy regex rescans the rest of the text from
    every unclosed <answer>); with `keep_prose` (the target's scripts), they stay when they hold more than
    ANSWER_VALUE_WORDS words together (a block measured alone let prose cut into blocks of 4 ideographs pass)."""
    parts, answers, words, position = [], [], 0, 0
    while (start := text.find(ANSWER, position)) >= 0 and (end := text.find(END_ANSWER, start)) >= 0:
        parts.append(text[position:start])
        answers.append(text[start + len(ANSWER):end])
        if keep_prose is not None:
            words += len(word_scripts(answers[-1], keep_prose))
        position = end + len(END_ANSWER)
    return " ".join(parts + [text[position:]] + (answers if words > ANSWER_VALUE_WORDS else []))


@register_reward("language")
def language_consistency(item: ScoreItem, config: RewardsConfig) -> float:
    """The share of the completion's words in the target language's scripts: the chain of thought's and all the
    rest but its answers (text before or after the tags, other think blocks: the last thought alone let a
    completion write anything outside it; an answer is a value, a word or a program, of no language), 0
    without a thought. An answer is an <answer> block after the thought (where `extract_answer` reads one):
    one before its end is thought (a Chinese thought wrapped in <answer> tags inside <think> scored 1.0 for
    `en` beside a few English words); and those of more than ANSWER_VALUE_WORDS words together count, unless a
    program (a `code` item)."""
    thought, _ = split_completion(item.completion)
    if thought is None or blank(thought):  # (a zero-width space or a Hangul filler alone scored 1.0)
        return 0.0
    target = LANGUAGE_SCRIPTS[config.language]
    end = item.completion.rfind(END_THINK)  # (none: an unclosed <think>, all of the completion is thought)
    end = len(item.completion) if end < 0 else end + len(END_THINK)
    # (a program is no prose: its words would push a zh run's code rewards towards shorter programs)
    prose = None if item.task == "code" else target
    text = item.completion[:end] + " " + _without_answers(item.completion[end:], prose)
    scripts = word_scripts(_TAG.sub(" ", text), target)
    if not scripts:
        return 1.0  # only numbers and symbols ("3+4=7.", "θ ∈ ℝ"): no word in another language
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
