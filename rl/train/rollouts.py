"""Between tokens and text: prompts in, completions out, scored by the reward pool.

`sample_and_submit` is the one path from problems to scores that GRPO, rejection sampling and evaluation
share: encode the prompts, generate, decode, and hand the completions to the reward pool, which scores them
in its worker processes while the caller goes on (GRPO dispatches its device work meanwhile);
`pool.collect(sampled.pending)` waits for the results. Rows are prompt-major (row = prompt * G + g), as the
sampler returns them.
"""

from __future__ import annotations

import re
import time
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from r1jax.model.tokenizer import TokenizerLike, encode_prompt, prompt_text, response_text
from r1jax.rl.decoding import padding_routes
from r1jax.rl.rewards import BatchHandle, RewardPool, ScoreItem, ScoreResult
from r1jax.rl.sampler import Rollout, Sampler
from r1jax.rl.train.config import DEFAULT_REFLECTION_WORDS


def prompt_texts(tokenizer: TokenizerLike, template: str, problems: Sequence[dict],
                 template_vars: Optional[Mapping[str, Any]] = None) -> list[str]:
    """Each problem's prompt rendered in prompt format `template` (model.tokenizer.prompt_text)."""
    return [prompt_text(tokenizer, template, p["prompt"], template_vars) for p in problems]


def stopped_rows(rollout: Rollout, stop_ids: Sequence[int]) -> np.ndarray:
    """[B] bool: the row's last generated token is one of `stop_ids` (a stop id on the budget's last token
    included); the others ran to the budget."""
    # on the host: a slice on the device would queue behind the update a sampler on devices of its own
    # overlaps with (rl.sampler_devices), where the tokens themselves arrive by a copy
    completions = np.asarray(rollout.tokens_BT)[:, rollout.prompt_length:]
    last = completions[np.arange(len(completions)), np.maximum(np.asarray(rollout.lengths_B) - 1, 0)]
    return np.isin(last, np.asarray(stop_ids, last.dtype)) & (np.asarray(rollout.lengths_B) > 0)


def completion_ids(rollout: Rollout, stop_ids: Sequence[int]) -> list[list[int]]:
    """Generated ids per row, up to and excluding the stop token (any of `stop_ids`)."""
    completions = np.asarray(rollout.tokens_BT)[:, rollout.prompt_length:]
    lengths = np.asarray(rollout.lengths_B)
    return [row[:length - stopped].tolist()
            for row, length, stopped in zip(completions, lengths, stopped_rows(rollout, stop_ids))]


def decode_completions(tokenizer: TokenizerLike, rollout: Rollout) -> list[str]:
    return [tokenizer.decode(ids) for ids in completion_ids(rollout, tokenizer.eos_ids)]


def score_items(problems: Sequence[dict], texts: Sequence[str], lengths: Sequence[int],
                samples: int, truncated: Sequence[bool] | None = None) -> list[ScoreItem]:
    """One item per row; a code problem's `tests` (JSON) and `entry_point` ride along (rl.rewards.code)."""
    truncated = [False] * len(texts) if truncated is None else truncated
    return [ScoreItem(prompt=problems[i // samples]["prompt"], completion=text,
                      reference=str(problems[i // samples]["answer"]), task=problems[i // samples]["task"],
                      length=int(length), tests=problems[i // samples].get("tests"),
                      entry_point=problems[i // samples].get("entry_point"), truncated=bool(cut))
            for i, (text, length, cut) in enumerate(zip(texts, lengths, truncated))]


class Sampled(NamedTuple):
    """`samples` completions of each problem, submitted to the reward pool."""

    problems: Sequence[dict]
    rollout: Rollout
    texts: list[str]  # decoded responses: completions up to the stop token, after the THINK a prompt opened
    items: list[ScoreItem]  # what the pool scores, one per row
    pending: BatchHandle  # `pool.collect(pending)` gives the ScoreResults in row order
    seconds: float  # encoding, generation and decoding


def sample_and_submit(sampler: Sampler, policy, tokenizer: TokenizerLike, template: str, problems: Sequence[dict],
                      pool: RewardPool, samples: int, template_vars: Optional[Mapping[str, Any]] = None,
                      **generate) -> Sampled:
    """Generate `samples` completions per problem under `policy` with one draw of the sampler's key, decode
    them and submit them for scoring. Prompts are in format `template` with the chat template's
    `template_vars`; `generate` overrides the sampling config (temperature, top_p, ...). What is scored is
    the response (`model.tokenizer.response_text`): after a prompt that opened `<think>` itself, the
    completion is read as `<think>` + completion."""
    generating = dispatch_sample(sampler, policy, tokenizer, template, problems, samples, template_vars,
                                 **generate)
    return submit_sample(generating, tokenizer, pool)


class Generating(NamedTuple):
    """A generation dispatched (JAX runs it asynchronously); `submit_sample` waits for its tokens."""

    problems: Sequence[dict]
    rendered: list[str]  # the prompts' texts
    rollout: Rollout  # arrays still being computed
    samples: int
    start: float  # time.time() when it began


def dispatch_sample(sampler: Sampler, policy, tokenizer: TokenizerLike, template: str, problems: Sequence[dict],
                    samples: int, template_vars: Optional[Mapping[str, Any]] = None, **generate) -> Generating:
    """The first half of `sample_and_submit`: the prompts encoded and their generation dispatched, no wait
    for its tokens (the caller may dispatch other device work meanwhile: rl.train.stage_grpo)."""
    start = time.time()
    rendered = prompt_texts(tokenizer, template, problems, template_vars)
    prompts = [encode_prompt(tokenizer, template, text) for text in rendered]
    rollout = sampler.generate(policy, prompts, samples=samples, **generate)
    return Generating(problems, rendered, rollout, samples, start)


def submit_sample(generating: Generating, tokenizer: TokenizerLike, pool: RewardPool) -> Sampled:
    """The second half of `sample_and_submit`: wait for the tokens, decode them and submit them for scoring."""
    problems, rendered, rollout, samples, _ = generating
    texts = [response_text(rendered[row // samples], completion)
             for row, completion in enumerate(decode_completions(tokenizer, rollout))]
    seconds = time.time() - generating.start
    items = score_items(problems, texts, np.asarray(rollout.lengths_B), samples,
                        truncated=~stopped_rows(rollout, tokenizer.eos_ids))
    return Sampled(problems, rollout, texts, items, pool.submit(items), seconds)


def group_rewards(results: Sequence[ScoreResult], group_size: int) -> np.ndarray:
    """[P, G] float32 total rewards of prompt-major rows (row = prompt * G + g): group p is rows p*G..p*G+G-1."""
    return np.array([r.total for r in results], np.float32).reshape(-1, group_size)


def reward_metrics(results: Sequence[ScoreResult], names: Sequence[str]) -> dict[str, float]:
    out = {"reward/total": float(np.mean([r.total for r in results]))}
    for name in names:
        out[f"reward/{name}"] = float(np.mean([r.rewards.get(name, 0.0) for r in results]))
    for status in {r.status for r in results} | {"ok"}:
        out[f"pool/{status}"] = sum(r.status == status for r in results)
    for status in {r.code_status for r in results} - {None}:  # only batches with code items have these
        out[f"code/{status}"] = sum(r.code_status == status for r in results)
    return out


def length_metrics(rollout: Rollout, max_new_tokens: int, stop_ids: Sequence[int]) -> dict[str, float]:
    """Completion lengths; `truncation_rate`, the share of rows the budget cut off (no stop token at its end)."""
    lengths = np.asarray(rollout.lengths_B)
    truncated = (lengths >= max_new_tokens) & ~stopped_rows(rollout, stop_ids)
    return {"response_length/mean": float(lengths.mean()), "response_length/max": int(lengths.max()),
            "truncation_rate": float(truncated.mean()), "generated_tokens": int(lengths.sum()),
            "completion_columns": rollout.logprobs_BN.shape[1]}


def reflection_rate(texts: Sequence[str], words: Sequence[str] = DEFAULT_REFLECTION_WORDS) -> float:
    """Mean number of reflection words ("wait", "verify", ...) per completion, R1's "aha" signal."""
    if not texts:
        return 0.0
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    return float(np.mean([len(pattern.findall(t)) for t in texts]))


def merge_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """Concatenate rollouts (rows) whose prompts were padded to different widths: left-pad to the widest. The
    extra columns route to `padding_routes` (K distinct experts, as the samplers record past a row's end)."""
    width = max(p.prompt_length for p in parts)

    def widen(x, fill, p: Rollout, axis=1):  # `fill`: a value, or a function of the extra columns' shape
        shape = list(x.shape)
        shape[axis] = width - p.prompt_length
        if shape[axis] == 0:
            return x
        columns = fill(tuple(shape)) if callable(fill) else jnp.full(shape, fill, x.dtype)
        return jnp.concatenate([columns, x], axis=axis)

    fields = {
        "tokens_BT": [widen(p.tokens_BT, pad_id, p) for p in parts],
        "valid_BT": [widen(p.valid_BT, False, p) for p in parts],
        "positions_BT": [widen(p.positions_BT, 0, p) for p in parts],
        "logprobs_BN": [p.logprobs_BN for p in parts],
        "lengths_B": [p.lengths_B for p in parts],
        "experts_LBTK": [widen(p.experts_LBTK, padding_routes, p, axis=2) for p in parts],
    }
    axes = {"experts_LBTK": 1}
    merged = {k: jnp.concatenate(v, axis=axes.get(k, 0)) for k, v in fields.items()}
    return Rollout(**merged, steps=max(p.steps for p in parts))


def take_rows(rollout: Rollout, rows: Sequence[int]) -> Rollout:
    index = jnp.asarray(rows, jnp.int32)
    return Rollout(rollout.tokens_BT[index], rollout.valid_BT[index], rollout.positions_BT[index],
                   rollout.logprobs_BN[index], rollout.lengths_B[index], rollout.experts_LBTK[:, index],
                   rollout.steps)
