"""Reference answers out of dataset rows: GSM8K's `#### 42` and MATH's last `\\boxed{...}`.

`split_answer(text, answer_format)` cuts the text of a row's answer field into (reference answer, worked
solution) or raises ValueError saying what the text lacks. The formats (`data.answer_format`):

- `raw`: the text is the answer as it is; no worked solution comes from it.
- `gsm8k`: "reasoning ... #### 42": the answer is the text after the last `####` with thousands separators
  removed ("1,234" -> "1234", "-1,000.5" -> "-1000.5"; "1, 2" keeps its comma), the solution is the
  reasoning before it (GSM8K's `<<48/2=24>>` calculator notes are left as they are).
- `boxed`: a MATH solution: the answer is the content of its last `\\boxed{...}` or `\\fbox{...}` (braces
  balanced, so `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`; escaped `\\{ \\}` do not count), or of the
  brace-less `\\boxed 5`, which runs to the next `$` or line end as in the MATH dataset's own
  `last_boxed_only_string`. Only the last box counts: "\\boxed{2} ... \\boxed{3}" gives "3". The solution
  is the whole text.

These parse reference data (trusted files), not model text: the rewards' own extractor
(`rl.rewards.extract`) is the bounded one that reads completions.
"""

from __future__ import annotations

import re

ANSWER_FORMATS = ("raw", "gsm8k", "boxed")
GSM8K_MARKER = "####"
BOX_COMMANDS = ("\\boxed", "\\fbox")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def split_answer(text: str, answer_format: str) -> tuple[str, str]:
    """(reference answer, worked solution; "" when the format gives none) of an answer field's text."""
    if answer_format == "raw":
        return text, ""
    if answer_format == "gsm8k":
        return gsm8k_answer(text)
    if answer_format == "boxed":
        return last_boxed(text), text.strip()
    raise ValueError(f"unknown answer format {answer_format!r}; known: {', '.join(ANSWER_FORMATS)}")


def gsm8k_answer(text: str) -> tuple[str, str]:
    """("42", "the reasoning") of "the reasoning\\n#### 42"."""
    reasoning, marker, final = text.rpartition(GSM8K_MARKER)
    if not marker:
        raise ValueError(f"no '{GSM8K_MARKER}' before the final answer (GSM8K answers end in "
                         f"'{GSM8K_MARKER} 42')")
    answer = _THOUSANDS.sub("", final.strip())
    if not answer:
        raise ValueError(f"nothing after the last '{GSM8K_MARKER}'")
    return answer, reasoning.strip()


def last_boxed(text: str) -> str:
    """The content of the last \\boxed / \\fbox in `text` (module docstring)."""
    start = len(text)
    while True:
        start = max(text.rfind(command, 0, start) for command in BOX_COMMANDS)
        if start < 0:
            raise ValueError("no \\boxed{...} final answer")
        command = next(c for c in BOX_COMMANDS if text.startswith(c, start))
        after = start + len(command)
        if after < len(text) and text[after].isalpha():  # another command, such as \boxedsymbol
            continue
        gap = len(text[after:]) - len(text[after:].lstrip())
        if text.startswith("{", after + gap):
            content = _braced(text, after + gap)
            if content is None:
                raise ValueError(f"the last {command}{{ has no closing brace")
        else:
            content = re.split(r"[$\n]", text[after:], maxsplit=1)[0].strip().rstrip(".")
        if not content.strip():
            raise ValueError(f"the last {command} is empty")
        return content.strip()


def _braced(text: str, open_at: int) -> str | None:
    """The text inside the group opening at text[open_at] == "{", or None when it never closes."""
    depth, index = 0, open_at
    while index < len(text):
        char = text[index]
        if char == "\\":  # an escaped character (\{, \}, \\) is not a group brace
            index += 2
            continue
        depth += (char == "{") - (char == "}")
        if depth == 0:
            return text[open_at + 1:index]
        index += 1
    return None
