"""The task protocol, problems, and the registry of tasks by name.

A task is a deterministic generator plus a verifier. `task.generate(seed, index)` depends only on (task
name, difficulty, seed, index): the random generator is seeded from those through `random.Random(str)`,
which hashes with SHA-512 and so is identical in every process and Python run (no PYTHONHASHSEED
dependence). Random access by index is what lets grain shuffle, shard and checkpoint a task source.

`task.verify(candidate, reference, prompt)` answers whether an extracted final answer is correct. It must
never raise on model text (garbage is simply wrong) and never hand it to `eval`/`sympify`/`parse_expr`.
Worked solutions are in the R1 format `<think> steps </think> <answer> answer </answer>`, short enough for
tiny models (prompts stay well under 60 characters).
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Callable, Sequence

from r1jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Problem:
    task: str
    prompt: str
    answer: str  # the reference answer the verifier checks against
    solution: str  # a worked solution "<think> ... </think> <answer> ... </answer>" for cold-start SFT
    difficulty: int
    tests: str | None = None  # code problems: their tests as JSON (rl.rewards.code); None otherwise
    entry_point: str | None = None  # code problems checked by assertions: the function they call

    def to_dict(self) -> dict:
        """The problem as a dict; `tests` and `entry_point` only when set (other tasks' dicts are unchanged)."""
        out = dataclasses.asdict(self)
        return {k: v for k, v in out.items() if v is not None or k not in ("tests", "entry_point")}


def r1_solution(steps: list[str], answer: str) -> str:
    return f"<think> {' '.join(steps)} </think> <answer> {answer} </answer>"


class Task:
    """Base class: subclasses set `name`, `levels` (difficulty -> knobs) and implement both methods."""

    name: str = ""
    levels: dict[int, dict] = {1: {}}
    optional_knobs: tuple[str, ...] = ()  # knobs every level accepts; unset (None) they follow the level

    def __init__(self, difficulty: int = 1, **knobs):
        if difficulty not in self.levels:
            raise UserError(f"task {self.name!r}: difficulty {difficulty} is not one of {sorted(self.levels)}")
        known = sorted({*self.levels[difficulty], *self.optional_knobs})
        unknown = set(knobs) - set(known)
        if unknown:
            raise UserError(f"task {self.name!r}: unknown knob(s) {sorted(unknown)}; known: {known}")
        self.difficulty = difficulty
        self.knobs = {**dict.fromkeys(self.optional_knobs), **self.levels[difficulty], **knobs}
        self.check_knobs()

    def check_knobs(self) -> None:
        """Refuse knob values the task cannot generate from (`knob_integer`, `knob_names`): a UserError naming
        the knob, before the first batch (which raised KeyError, IndexError or ValueError, or generated
        something else silently)."""

    def knob_integer(self, name: str, low: int, high: int) -> int:
        value = self.knobs[name]
        if type(value) is not int or not low <= value <= high:
            raise UserError(f"task {self.name!r}: knob {name} = {value!r}: expected an integer in [{low}, {high}]")
        return value

    def knob_names(self, name: str, known: Sequence[str], separator: str = ",") -> list[str]:
        """A knob listing some of `known` ("linear,expand"; with separator "", characters: "+-*")."""
        value = self.knobs[name]
        parts = (value.split(separator) if separator else list(value)) if isinstance(value, str) else []
        if not parts or any(part not in known for part in parts):
            listed = separator.join(known) if separator else "".join(known)
            raise UserError(f"task {self.name!r}: knob {name} = {value!r}: expected some of {listed!r}"
                            + (f" separated by {separator!r}" if separator else ""))
        return parts

    def rng(self, seed: int, index: int) -> random.Random:
        knobs = sorted((k, v) for k, v in self.knobs.items() if v is not None)  # unset knobs keep old streams
        return random.Random(f"{self.name}:{self.difficulty}:{knobs}:{seed}:{index}")

    def generate(self, seed: int, index: int) -> Problem:
        raise NotImplementedError

    def verify(self, candidate: str, reference: str, prompt: str = "") -> bool:
        raise NotImplementedError

    @staticmethod
    def problem_key(prompt: str) -> object:
        """What makes two problems of this task the same problem (held-out problems skip every training
        problem's key): its prompt with its whitespace runs made one space (a row's trailing newline or doubled
        space held out a training problem), unless the prompt can state one problem in several ways."""
        return " ".join(prompt.split())

    @staticmethod
    def problem_kind(prompt: str) -> object:
        """Which of this task's kinds of problem the prompt states (held-out selection keeps each kind's share of
        the mix, so that a kind whose few problems training used up is not silently left out): None for a task
        of one kind."""
        return None

    def warm_up(self) -> None:
        """Load what `verify` needs (a reward worker calls this before its first item, so that no item is charged
        for imports); tasks whose verifier is plain Python need nothing."""


TASKS: dict[str, Callable[..., Task]] = {}


def register_task(cls):
    """Class decorator: make a task constructible by name (tasks and configs refer to it by `cls.name`)."""
    TASKS[cls.name] = cls
    return cls


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(name: str, difficulty: int = 1, **knobs) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return TASKS[name](difficulty, **knobs)


# Markup a model (or a user's reference) may wrap a plain answer in; removed before the strict parsers run.
TEXT_COMMANDS = ("text", "textbf", "textit", "textrm", "mathrm", "emph", "mbox")  # text in a formula
_WRAPPERS = re.compile(r"^\\(?:%s)\s*\{(.*)\}$" % "|".join(("boxed", "mathbf") + TEXT_COMMANDS), re.DOTALL)
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def strip_markup(text: str) -> str:
    """'$\\boxed{42}$.' -> '42': outer math delimiters, one-argument wrappers, a final full stop."""
    text = text.strip()
    for _ in range(4):  # bounded: each round removes one layer
        before = text
        text = text.rstrip(".").strip()
        for left, right in _DELIMITERS:
            if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left):len(text) - len(right)].strip()
        match = _WRAPPERS.match(text)
        if match and _balanced(match.group(1)):
            text = match.group(1).strip()
        if text == before:
            break
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += (char == "{") - (char == "}")
        if depth < 0:
            return False
    return depth == 0
