"""Cutting a completion into its chain of thought and its final answer, in linear time on any input.

Conventions (R1 format `<think> ... </think> <answer> ... </answer>`):
- The chain of thought ends at the last `</think>`; it starts after the `<think>` before that (or at the
  start, for templates that put `<think>` in the prompt). An unclosed `<think>` means everything is
  thought and there is no final answer.
- The final answer is searched only after the chain of thought: the content of the last closed
  `<answer>...</answer>`, else the content of the last balanced `\\boxed{...}`. A `\\boxed{}` inside the
  thought does not count; an unclosed `<answer>` does not count.
- An answer longer than K characters (`max_chars`, after stripping) is no answer: nothing downstream ever
  parses more, and it is never shortened (the last K characters of "-" + spaces + "7" would read "7").
Only str.find/rfind and one forward scan are used (no backtracking regular expressions on model text).
"""

from __future__ import annotations

THINK, END_THINK, ANSWER, END_ANSWER = "<think>", "</think>", "<answer>", "</answer>"
BOXED = "\\boxed"
MAX_BOXED_TRIES = 4  # unbalanced \boxed{ occurrences skipped before giving up


def split_completion(completion: str) -> tuple[str | None, str]:
    """(chain of thought or None when there is none, the text after it)."""
    end = completion.rfind(END_THINK)
    if end >= 0:
        start = completion.rfind(THINK, 0, end)
        thought = completion[start + len(THINK):end] if start >= 0 else completion[:end]
        return thought, completion[end + len(END_THINK):]
    start = completion.find(THINK)
    if start >= 0:
        return completion[start + len(THINK):], ""
    return None, completion


def last_boxed(text: str) -> str | None:
    """The content of the last balanced \\boxed{...} in `text`."""
    start = text.rfind(BOXED)
    for _ in range(MAX_BOXED_TRIES):  # bounded: each try may scan to the end of the text
        if start < 0:
            break
        brace = start + len(BOXED)
        while brace < len(text) and text[brace] == " ":
            brace += 1
        if brace < len(text) and text[brace] == "{":
            depth = 0
            for end in range(brace, len(text)):
                depth += (text[end] == "{") - (text[end] == "}")
                if depth == 0:
                    return text[brace + 1:end]
        start = text.rfind(BOXED, 0, start)
    return None


def extract_answer(completion: str, max_chars: int = 256) -> str | None:
    _, tail = split_completion(completion)
    start = tail.rfind(ANSWER)
    if start >= 0:
        end = tail.find(END_ANSWER, start)
        answer = tail[start + len(ANSWER):end] if end >= 0 else None
    else:
        answer = last_boxed(tail)
    answer = answer.strip() if answer is not None else ""
    return answer if 0 < len(answer) <= max_chars else None
