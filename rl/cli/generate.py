"""Generate completions from a checkpoint with the training sampler (KV cache, one compiled program).

--prompt is rendered in the checkpoint's prompt format (tokenizer.template; --template chooses another,
--raw is --template none) and needs the checkpoint's tokenizer; --ids takes token ids as given (no
--template or --raw beside it). --json prints one object per sample: ids (generated only), logprobs (one per
id, under the temperature-scaled distribution; at temperature 0 the log-softmax of the logits), text.
"""

from __future__ import annotations

import argparse
import json

from r1jax.model.tokenizer import TEMPLATE_NAMES
from r1jax.rl.cli.common import buckets_for, check_context, check_token_copies, flags_in_error, max_new_tokens, \
    non_negative_int, non_negative_number, positive_int, probability, seed, utf8_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory, checkpoint directory or step directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", type=utf8_text, help="prompt text (templated as in training)")
    source.add_argument("--ids", help="comma-separated prompt token ids, e.g. 1,2,3")
    template = parser.add_mutually_exclusive_group()
    template.add_argument("--template", choices=TEMPLATE_NAMES, default=None,
                          help="prompt format for --prompt: r1_zero, chat (the tokenizer's chat template) or "
                               "none (default: the checkpoint's tokenizer.template)")
    template.add_argument("--raw", action="store_true", help="do not format --prompt (--template none)")
    parser.add_argument("--max-new-tokens", type=max_new_tokens, default=64, help="(default %(default)s)")
    parser.add_argument("--temperature", type=non_negative_number, default=0.6,
                        help="0 is greedy (default 0.6, as R1)")
    parser.add_argument("--top-p", type=probability, default=0.95, help="(default %(default)s, as R1)")
    parser.add_argument("--top-k", type=non_negative_int, default=0, help="0: off (default %(default)s)")
    parser.add_argument("--samples", type=positive_int, default=1, help="completions per prompt (default %(default)s)")
    parser.add_argument("--seed", type=seed, default=0, help="(default %(default)s)")
    parser.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    parser.add_argument("--json", action="store_true", help="one JSON object per sample per line")


def parse_ids(text: str) -> list[int]:
    from r1jax.errors import UserError

    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--ids {text!r}: expected comma-separated integers such as 1,2,3") from None
    if not ids:
        raise UserError("--ids is empty")
    return ids


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np
    from flax import nnx

    from r1jax.errors import UserError
    from r1jax.model.tokenizer import render_prompt
    from r1jax.rl.checkpoint import open_for_inference
    from r1jax.rl.config_checks import check_top_k
    from r1jax.rl.sampler import Sampler, bucket_length
    from r1jax.rl.sampler_layout import inference_layout
    from r1jax.sharding.context import use_mesh

    if args.ids is not None and (args.raw or args.template is not None):  # (they format --prompt; were ignored)
        flag = "--raw" if args.raw else f"--template {args.template}"
        raise UserError(f"{flag} formats --prompt's text, and --ids gives token ids as they are: drop {flag} "
                        "or give --prompt")
    config, policy, mesh, rules, tokenizer = open_for_inference(args.checkpoint)
    if args.prompt is not None:
        if tokenizer is None:
            raise UserError(f"checkpoint {args.checkpoint!r} carries no tokenizer; use --ids")
        template = "none" if args.raw else args.template or config.tokenizer.template
        ids = render_prompt(tokenizer, template, args.prompt, config.tokenizer.template_vars)
    else:
        ids = parse_ids(args.ids)
    check_context(args.max_new_tokens, len(ids), config.model.max_position_embeddings)
    bad = [i for i in ids if not 0 <= i < config.model.vocab_size]
    if bad:
        raise UserError(f"--ids: {bad[0]} is outside the vocabulary [0, {config.model.vocab_size})")
    flags = {"max_new_tokens": ("--max-new-tokens", args.max_new_tokens), "temperature": ("--temperature",
             args.temperature), "top_p": ("--top-p", args.top_p), "top_k": ("--top-k", args.top_k)}
    try:
        sampling = dataclasses.replace(config.sampling, prompt_buckets=buckets_for(config.sampling.prompt_buckets,
                                                                                   len(ids)),
                                       **{field: value for field, (_, value) in flags.items()})
        check_top_k("sampling.top_k", sampling.top_k, config.model.vocab_size)  # the config's own check
    except UserError as err:  # a bound of the config's: named as the flag too
        raise flags_in_error(err, "sampling", flags) from None
    check_token_copies(args.samples, bucket_length(len(ids), sampling.prompt_buckets) + sampling.max_new_tokens,
                       config.model.num_experts_per_tok, f"--samples {args.samples}")
    graphdef, state = nnx.split(policy)
    # without a tokenizer (--ids on a bare checkpoint) nothing stops a row and every id may be sampled
    stop_ids, pad = (tokenizer.eos_ids, tokenizer.pad_id) if tokenizer else ((), 0)
    layout, state = inference_layout(config, state, mesh, rules)
    sampler = Sampler(graphdef, sampling, stop_ids, pad, args.seed, tokenizer.vocab_size if tokenizer else None,
                      layout)
    with use_mesh(mesh, rules):
        rollout = sampler.generate(state, [ids], args.samples, ignore_eos=args.ignore_eos)
    completions = np.asarray(rollout.completion_BN)
    logprobs = np.asarray(rollout.logprobs_BN)
    for row, length in enumerate(np.asarray(rollout.lengths_B)):
        generated = completions[row, :length].tolist()
        text = tokenizer.decode([t for t in generated if t not in tokenizer.eos_ids]) if tokenizer else None
        if args.json:
            record = {"sample": row, "ids": generated, "logprobs": logprobs[row, :length].tolist()}
            if text is not None:
                record["text"] = text
            print(json.dumps(record))
        else:
            print(text if text is not None else " ".join(map(str, generated)))
    return 0
