"""Supervised fine-tuning (cold start, post-rejection-sampling SFT, distillation): next-token loss on the
completion only, token mean over the global batch, through the shared update step (rl.update).

A row is the prompt in the run's prompt format (`render_prompt`: with a chat template, the user turn and the
assistant header it opens), then the solution and the eos id that closes it: the tokens the policy
generates after that prompt when sampled. Only those completion tokens are targets."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from r1jax.model.config import ModelConfig
from r1jax.errors import UserError
from r1jax.model.tokenizer import TokenizerLike, completion_text, encode_prompt, prompt_text
from r1jax.rl.data.records import row_number
from r1jax.rl.grpo.logprobs import token_logp_and_entropy
from r1jax.rl.sampler import bucket_length
from r1jax.rl.train.config import DEFAULT_MAX_SEQUENCE_LENGTH, MIN_SEQUENCE_LENGTH
from r1jax.rl.update import UpdateConfig, add_router_losses, make_update_step


def sequence_buckets(max_length: int = DEFAULT_MAX_SEQUENCE_LENGTH) -> tuple[int, ...]:
    """The lengths SFT pads a batch to: powers of two from MIN_SEQUENCE_LENGTH below `max_length`, then
    `max_length` (a stage's `max_sequence_length`), which bounds an SFT row (prompt + solution + eos): rows are
    not truncated. Preflight refuses a rejection_sampling stage whose samples an SFT/distill stage reads when its
    largest prompt bucket + max_new_tokens + 1 exceeds the reader's, and that stage drops a sample that does not
    fit (rejection reason `sft_length`), so its dataset holds no row SFT refuses (rl.train.preflight,
    stage_rejection)."""
    buckets, length = [], MIN_SEQUENCE_LENGTH
    while length < max_length:
        buckets.append(length)
        length *= 2
    return (*buckets, max_length)


SEQUENCE_BUCKETS = sequence_buckets()  # the default stage's


def sft_sequence(tokenizer: TokenizerLike, template: str, row: Mapping[str, Any],
                 template_vars: Optional[Mapping[str, Any]] = None) -> tuple[list[int], int]:
    """(tokens, completion start) of one SFT row: the prompt in format `template` (as sampling renders it),
    then the completion and EOS (module docstring); the completion's first token is at column `start` >= 1."""
    text = prompt_text(tokenizer, template, row["prompt"], template_vars)
    prompt = encode_prompt(tokenizer, template, text)
    if not prompt:  # the first completion token would have no logits to predict it from
        raise UserError(f"the prompt {row['prompt'][:60]!r} is no tokens in prompt format {template!r} (this "
                        f"tokenizer puts no bos first): an SFT row needs at least one prompt token")
    completion = tokenizer.encode(completion_text(text, row["solution"])) + [tokenizer.eos_id]
    return prompt + completion, len(prompt)


def fits_sft(tokenizer: TokenizerLike, template: str, row: Mapping[str, Any],
             template_vars: Optional[Mapping[str, Any]] = None, buckets: Sequence[int] = SEQUENCE_BUCKETS) -> bool:
    """Whether `row` (prompt, solution) fits the largest SFT bucket as an SFT sequence (`sft_sequence`)."""
    return len(sft_sequence(tokenizer, template, row, template_vars)[0]) <= buckets[-1]


def too_long(length: int, prompt: str, row: str = "an SFT row", buckets: Sequence[int] = SEQUENCE_BUCKETS) -> str:
    """What is wrong with `row` (prompt `prompt`) of `length` tokens, over the largest of `buckets`, and the fix."""
    return (f"{row} (prompt {prompt[:60]!r}) is {length} tokens as an SFT sequence (the prompt in the run's "
            f"template + the solution + eos), longer than the largest SFT sequence bucket ({buckets[-1]} tokens: "
            f"the stage's max_sequence_length; SFT does not truncate rows): shorten or remove the row, or raise "
            f"max_sequence_length")


def check_sft_lengths(tokenizer: TokenizerLike, template: str, rows: Sequence[Mapping[str, Any]],
                      template_vars: Optional[Mapping[str, Any]], what: str, advice: str = "",
                      path: Optional[str] = None, buckets: Sequence[int] = SEQUENCE_BUCKETS) -> None:
    """Every row fits the largest SFT bucket, else a UserError naming `what`, the row (its number in data file
    `path` when given, else its position) and the bound, then `advice`."""
    if not rows:
        return
    try:
        lengths = [len(sft_sequence(tokenizer, template, row, template_vars)[0]) for row in rows]
    except UserError as err:  # no chat template, or one that fails to render a prompt
        raise UserError(f"tokenizer.template={template!r} ({what}): {err}") from None
    longest = max(range(len(rows)), key=lengths.__getitem__)
    if lengths[longest] <= buckets[-1]:
        return
    number = row_number(path, longest) if path else longest + 1
    raise UserError(f"{what}: {too_long(lengths[longest], rows[longest]['prompt'], f'row {number}', buckets)}"
                    f"{'; ' + advice if advice else ''}")


def sft_batch(tokenizer: TokenizerLike, template: str, rows: Sequence[dict], buckets: Sequence[int],
              template_vars: Optional[Mapping[str, Any]] = None) -> dict:
    """Prompt (in format `template`, as sampling renders it) + completion + EOS, right-padded to a length
    bucket (a row longer than the largest is a UserError naming SFT's bound).

    `rows` hold `prompt` and `solution` (a whole response; after a prompt that opened `<think>` itself the
    target is the solution without its leading `<think>`: `model.tokenizer.completion_text`). `mask` marks the
    completion targets (aligned with tokens[:, 1:]);
    `weight` = mask / (completion tokens in the batch): the global token mean."""
    sequences, starts = zip(*(sft_sequence(tokenizer, template, row, template_vars) for row in rows))
    longest = max(range(len(rows)), key=lambda i: len(sequences[i]))
    if len(sequences[longest]) > buckets[-1]:
        raise UserError(too_long(len(sequences[longest]), rows[longest]["prompt"], buckets=buckets))
    width = bucket_length(len(sequences[longest]), buckets)
    tokens = np.full((len(rows), width), tokenizer.pad_id, np.int32)
    valid = np.zeros((len(rows), width), bool)
    mask = np.zeros((len(rows), width - 1), bool)
    for i, (seq, start) in enumerate(zip(sequences, starts)):
        tokens[i, :len(seq)] = seq
        valid[i, :len(seq)] = True
        mask[i, max(start, 1) - 1:len(seq) - 1] = True  # logits at column t - 1 predict the token at column t
    if not mask.any():
        raise UserError("an SFT batch has no completion tokens")
    return {"tokens": tokens, "positions": np.broadcast_to(np.arange(width), tokens.shape).astype(np.int32),
            "valid": valid, "mask": mask, "weight": (mask / mask.sum()).astype(np.float32)}


def sft_micro_loss(graphdef, update: UpdateConfig) -> Callable:
    def loss_fn(params, bias, ref, mb):
        del ref
        policy = nnx.merge(graphdef, params, bias)
        out = policy(mb["tokens"], mb["positions"], mb["valid"])
        logp, _ = token_logp_and_entropy(out.logits_BTV[:, :-1], mb["tokens"][:, 1:], mb["mask"],
                                         with_entropy=False)
        valid = mb["mask"].astype(bool)
        hits = (jnp.argmax(out.logits_BTV[:, :-1], axis=-1) == mb["tokens"][:, 1:]) & valid
        loss = -jnp.sum(mb["weight"] * logp)
        stats = {"loss": jax.lax.stop_gradient(loss), "token_count": jnp.sum(valid, dtype=jnp.float32),
                 "token_accuracy_sum": jnp.sum(hits, dtype=jnp.float32)}
        return add_router_losses(loss, stats, out.aux, update, update.micro_batches)
    return loss_fn


def make_sft_step(graphdef, optimizer: optax.GradientTransformation, update: UpdateConfig, model: ModelConfig,
                  grad_clip_norm: float | None) -> Callable:
    return make_update_step(graphdef, optimizer, sft_micro_loss(graphdef, update), update, model, None,
                            grad_clip_norm)
