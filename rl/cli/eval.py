"""Evaluate a checkpoint with R1's protocol: pass@1 averaged over K samples at temperature 0.6, top-p 0.95,
cons@K (majority vote), pass@K (unbiased), accuracy by difficulty, response length, format rate.

Problems: --data FILE (JSONL/Parquet with prompt, answer[, task]), or held-out problems of --task (default:
the checkpoint's training tasks), generated from another seed and never equal to a training prompt.
"""

from __future__ import annotations

import argparse
import json
import sys

from r1jax.model.tokenizer import TEMPLATE_NAMES
from r1jax.rl.cli.common import non_negative_int, non_negative_number, positive_int, probability


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory, checkpoint directory or step directory")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--task", help="a task name (arithmetic, countdown, algebra)")
    source.add_argument("--data", help="a JSONL or Parquet file of prompt/answer rows")
    parser.add_argument("--samples", type=positive_int, default=None,
                        help="K (default: the checkpoint's eval.samples)")
    parser.add_argument("--temperature", type=non_negative_number, default=0.6, help="0 is greedy (default 0.6)")
    parser.add_argument("--top-p", type=probability, default=0.95)
    parser.add_argument("--top-k", type=non_negative_int, default=None, help="keep the K likeliest tokens "
                        "(default: the checkpoint's eval.top_k, 0: no filter)")
    parser.add_argument("--num-problems", type=positive_int, default=None)
    parser.add_argument("--difficulty", type=positive_int, default=None,
                        help="default: the checkpoint's eval.difficulty, else data.difficulty")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="default: the checkpoint's sampling.max_new_tokens")
    parser.add_argument("--template", choices=TEMPLATE_NAMES, default=None,
                        help="prompt format: r1_zero, chat (the tokenizer's chat template) or none (default: the "
                             "checkpoint's tokenizer.template)")
    parser.add_argument("--workers", type=positive_int, default=None, help="reward worker processes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from flax import nnx

    from r1jax.errors import UserError
    from r1jax.rl.checkpoint import open_for_inference
    from r1jax.rl.evaluate import evaluate, evaluation_rewards, held_out_problems
    from r1jax.rl.rewards import RewardPool
    from r1jax.rl.sampler import Sampler
    from r1jax.rl.sampler_layout import inference_layout
    from r1jax.rl.tasks import task_names
    from r1jax.sharding.context import use_mesh

    if args.task is not None and args.task not in task_names():  # before the checkpoint loads
        raise UserError(f"--task {args.task!r}: unknown task; choose one of {', '.join(task_names())}")
    config, policy, mesh, rules, tokenizer = open_for_inference(args.checkpoint)
    if tokenizer is None:
        raise UserError(f"checkpoint {args.checkpoint!r} carries no tokenizer; evaluation needs one")
    fields = {"samples": args.samples, "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
              "num_problems": args.num_problems, "difficulty": args.difficulty}
    eval_cfg = dataclasses.replace(config.eval, **{k: v for k, v in fields.items() if v is not None})
    if args.data:
        problems = config.data.load_file(args.data)[: args.num_problems or None]
    else:
        try:
            left_out = []
            problems = held_out_problems(config.data, eval_cfg, [args.task] if args.task else None, left_out)
            for kind in left_out:
                print(f"r1jax eval: training used every {kind} problem; the held-out set holds none of them",
                      file=sys.stderr)
        except UserError:  # names its culprit (the training file held-out problems must skip)
            raise
        except ValueError as err:  # a difficulty the task lacks; a task space too small for --num-problems
            raise UserError(f"--num-problems / --difficulty: {err}") from None
    pool_cfg = config.reward_pool if args.workers is None else dataclasses.replace(config.reward_pool,
                                                                                  workers=args.workers)
    max_new = config.sampling.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    template = args.template or config.tokenizer.template
    graphdef, state = nnx.split(policy)
    layout, state = inference_layout(config, state, mesh, rules)
    sampler = Sampler(graphdef, config.sampling, tokenizer.eos_ids, tokenizer.pad_id, config.seed,
                      tokenizer.vocab_size, layout)
    # the workers warm up the verifiers of the problems' tasks only (rl.tasks.Task.warm_up)
    tasks = sorted({problem["task"] for problem in problems})
    rewards = evaluation_rewards(config.rewards, tasks)  # pass@1's and format_rate's, whatever trained
    with RewardPool(rewards, pool_cfg, tasks=tasks) as pool, use_mesh(mesh, rules):
        figures, _ = evaluate(sampler, state, tokenizer, template, problems, pool, eval_cfg, max_new,
                              config.rewards.answer_max_chars, config.tokenizer.template_vars)
    if args.json:
        print(json.dumps(figures))
    else:
        _print_table(figures)
    return 0


def _print_table(figures: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    k = figures["k"]
    table = Table(title=f"{figures['n_problems']} problems x {k} samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in dict.fromkeys(("pass@1", f"cons@{k}", f"pass@{k}", "format_rate", "response_length", "reflection_rate")):
        table.add_row(key, f"{figures[key]:.3f}")
    for difficulty, value in figures["accuracy_by_difficulty"].items():
        table.add_row(f"pass@1 difficulty {difficulty}", f"{value:.3f}")
    Console().print(table)
