"""Evaluate a checkpoint with R1's protocol: pass@1 averaged over K samples, cons@K (majority vote), pass@K
(unbiased), accuracy by difficulty, response length, format rate.

Sampling: each flag given, else the checkpoint's eval section (eval.samples, eval.temperature, eval.top_p,
eval.top_k; R1's temperature 0.6, top-p 0.95 and no top-k unless the run set its own); the settings used, and
where each came from, go to stderr. Problems: --data FILE (JSONL/Parquet with prompt, answer[, task]; the
first --num-problems rows), or held-out problems of --task (default: the checkpoint's training tasks) at
--difficulty, generated from another seed and never equal to a training prompt: every training file the
checkpoint names is read to skip its prompts; one that has moved is read where `--training-file OLD=NEW` says,
one that is gone is left unread with `--ignore-missing-training-files` (said on stderr: the held-out problems may
then include ones trained on). Progress goes to stderr, so --json's object is stdout's only output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

from r1jax.model.tokenizer import TEMPLATE_NAMES
from r1jax.rl.cli.common import buckets_for, check_context, flags_in_error, max_new_tokens, non_negative_int, \
    non_negative_number, pool_workers, positive_int, probability, sigterm_interrupts

# (flag, the EvalConfig field it sets), in the order the settings used are told
SAMPLING_FLAGS = (("--samples", "samples"), ("--temperature", "temperature"), ("--top-p", "top_p"),
                  ("--top-k", "top_k"))
PROGRESS_LINE_INTERVAL_S = 30.0  # stderr not a terminal (a log): a progress line at most this often


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a run directory, checkpoint directory or step directory")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--task", help="a task name (arithmetic, countdown, algebra, code)")
    source.add_argument("--data", help="a JSONL or Parquet file of prompt/answer rows")
    parser.add_argument("--samples", type=positive_int, default=None,
                        help="K (default: the checkpoint's eval.samples)")
    parser.add_argument("--temperature", type=non_negative_number, default=None,
                        help="0 is greedy (default: the checkpoint's eval.temperature, R1's 0.6 unless the run "
                             "set its own)")
    parser.add_argument("--top-p", type=probability, default=None,
                        help="default: the checkpoint's eval.top_p (R1's 0.95 unless the run set its own)")
    parser.add_argument("--top-k", type=non_negative_int, default=None, help="keep the K likeliest tokens "
                        "(default: the checkpoint's eval.top_k, 0: no filter)")
    parser.add_argument("--num-problems", type=positive_int, default=None,
                        help="default: the checkpoint's eval.num_problems (with --data: every row)")
    parser.add_argument("--difficulty", type=positive_int, default=None,
                        help="held-out problems only (not with --data): default the checkpoint's "
                             "eval.difficulty, else data.difficulty")
    parser.add_argument("--max-new-tokens", type=max_new_tokens, default=None,
                        help="default: the checkpoint's sampling.max_new_tokens")
    parser.add_argument("--template", choices=TEMPLATE_NAMES, default=None,
                        help="prompt format: r1_zero, chat (the tokenizer's chat template) or none (default: the "
                             "checkpoint's tokenizer.template)")
    parser.add_argument("--training-file", action="append", default=[], metavar="OLD=NEW",
                        help="a training file the checkpoint names (OLD, as its error shows) is now at NEW: the "
                             "held-out problems skip its prompts read there (repeatable)")
    parser.add_argument("--ignore-missing-training-files", action="store_true",
                        help="evaluate although a training file the held-out problems must skip is gone: its "
                             "prompts are not skipped, so held-out problems may include ones trained on")
    parser.add_argument("--workers", type=pool_workers, default=None,
                        help="reward worker processes (default: the checkpoint's reward_pool.workers)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from flax import nnx

    from r1jax.errors import UserError
    from r1jax.model.tokenizer import encode_prompt
    from r1jax.rl.checkpoint import data_source, open_step_for_inference, read_latest, trained
    from r1jax.rl.config_checks import check_top_k, context_overflow
    from r1jax.rl.data.records import row_number
    from r1jax.rl.evaluate import evaluate, evaluation_rewards, held_out_problems
    from r1jax.rl.rewards import RewardPool
    from r1jax.rl.rewards.config import FieldError
    from r1jax.rl.sampler import Sampler
    from r1jax.rl.sampler_layout import inference_layout
    from r1jax.rl.tasks import get_task, task_names
    from r1jax.rl.train.rollouts import prompt_texts
    from r1jax.sharding.context import use_mesh

    # before the checkpoint loads
    if args.task is not None and args.task not in task_names():
        raise UserError(f"--task {args.task!r}: unknown task; choose one of {', '.join(task_names())}")
    if args.task is not None and not args.data:
        try:  # a verifier of user data generates no held-out problems ("difficulty 2 is not one of [1]" before)
            get_task(args.task).generate(0, 0)
        except UserError as err:
            raise UserError(f"--task {args.task}: {err}; evaluate its rows with --data FILE") from None
    if args.data and args.difficulty is not None:  # file rows are all read as difficulty 0 (rl.data.records)
        raise UserError(f"--difficulty {args.difficulty} picks held-out problems, and --data {args.data!r} "
                        "replaces them (a file's rows carry no difficulty): drop --difficulty or --data")
    if args.data and (args.training_file or args.ignore_missing_training_files):
        flag = "--training-file" if args.training_file else "--ignore-missing-training-files"
        raise UserError(f"{flag} tells where the held-out problems' training files are, and --data {args.data!r} "
                        f"replaces those problems: drop {flag} or --data")
    moved = moved_files(args.training_file)
    # one step's policy, its training record and data fingerprint (a live run's steps may rotate meanwhile)
    (config, policy, mesh, rules, tokenizer), was_trained, source = read_latest(args.checkpoint, lambda step: (
        open_step_for_inference(step), trained(step), data_source(step)))
    if tokenizer is None:
        raise UserError(f"checkpoint {args.checkpoint!r} carries no tokenizer; evaluation needs one")
    fields = {"samples": args.samples, "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
              "num_problems": args.num_problems, "difficulty": args.difficulty}
    given = {k: v for k, v in fields.items() if v is not None}
    try:
        eval_cfg = dataclasses.replace(config.eval, **given)
        check_top_k("eval.top_k", eval_cfg.top_k, config.model.vocab_size)  # the config's own check
    except UserError as err:  # a bound of the config's (eval.num_problems, ...): named as the flag too
        raise flags_in_error(err, "eval", {k: (f"--{k.replace('_', '-')}", v) for k, v in given.items()}) from None
    max_new = config.sampling.max_new_tokens if args.max_new_tokens is None else args.max_new_tokens
    check_context(max_new, 0, config.model.max_position_embeddings)
    if args.data:
        problems = config.data.load_file(args.data)
        if args.num_problems is not None and len(problems) < args.num_problems:
            print(f"r1jax eval: --num-problems {args.num_problems}: {args.data} holds {len(problems)} problems; "
                  "evaluating them all", file=sys.stderr)
        problems = problems[: args.num_problems or None]
    else:
        try:
            left_out = []
            if was_trained:
                data, others, read_data, rows_read = training_files(config, moved, args.ignore_missing_training_files,
                                                                    source)
            elif moved:
                raise UserError(f"--training-file: {args.checkpoint!r} holds weights that trained on nothing "
                                "(written by r1jax init or import-hf): drop --training-file")
            else:  # its config's data section is the default's, not a record of training (all was skipped)
                data, others, read_data, rows_read = config.data, [], False, {}
            problems = held_out_problems(data, eval_cfg, [args.task] if args.task else None, left_out, others,
                                         read_data_file=read_data, rows_read=rows_read)
            for kind in left_out:
                print(f"r1jax eval: training used every {kind} problem; the held-out set holds none of them",
                      file=sys.stderr)
        except UserError:  # names its culprit (the training file held-out problems must skip)
            raise
        except ValueError as err:  # a difficulty the task lacks; a task space too small for --num-problems
            raise UserError(f"--num-problems / --difficulty: {err}") from None
    print(f"r1jax eval: {sampling_settings(args, eval_cfg, max_new)}", file=sys.stderr)
    try:
        pool_cfg = config.reward_pool if args.workers is None else dataclasses.replace(config.reward_pool,
                                                                                      workers=args.workers)
    except FieldError as err:  # a bound of the config's: named as the flag
        raise err.for_flags({"reward_pool.workers": "--workers"}) from None
    template = args.template or config.tokenizer.template
    texts = prompt_texts(tokenizer, template, problems, config.tokenizer.template_vars)
    lengths = [len(encode_prompt(tokenizer, template, text)) for text in texts]
    longest = max(lengths)
    if context_overflow(longest, max_new, config.model.max_position_embeddings):  # named as its loader names it
        index = lengths.index(longest)
        where = f"{args.data}: row {row_number(args.data, index)}" if args.data else f"held-out problem {index + 1}"
        check_context(max_new, longest, config.model.max_position_embeddings,
                      prompt=f"the prompt in the {template} format", where=where)
    sampling = dataclasses.replace(config.sampling, prompt_buckets=buckets_for(config.sampling.prompt_buckets,
                                                                               longest))
    graphdef, state = nnx.split(policy)
    layout, state = inference_layout(config, state, mesh, rules)
    sampler = Sampler(graphdef, sampling, tokenizer.eos_ids, tokenizer.pad_id, config.seed,
                      tokenizer.vocab_size, layout)
    # the workers warm up the verifiers of the problems' tasks only (rl.tasks.Task.warm_up)
    tasks = sorted({problem["task"] for problem in problems})
    rewards = evaluation_rewards(config.rewards, tasks)  # pass@1's and format_rate's, whatever trained
    # SIGTERM stops as Ctrl-C does (the pool closed, one line, exit 143): it killed eval at once, leaving the workers
    # to the resource tracker's "leaked semaphore objects" warnings
    with sigterm_interrupts(), RewardPool(rewards, pool_cfg, tasks=tasks) as pool, use_mesh(mesh, rules), \
            EvalProgress(len(problems)) as progress:
        figures, _ = evaluate(sampler, state, tokenizer, template, problems, pool, eval_cfg, max_new,
                              config.rewards.answer_max_chars, config.tokenizer.template_vars,
                              progress=progress.update)
    if args.json:
        print(json.dumps(figures))
    else:
        _print_table(figures)
    return 0


def moved_files(pairs: list[str]) -> dict[str, str]:
    """--training-file OLD=NEW flags as {OLD: NEW}; NEW must be a file."""
    from r1jax.errors import UserError

    moved = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise UserError(f"--training-file {pair!r}: expected OLD=NEW (the path the checkpoint names, then "
                            "where the file is now)")
        if not pathlib.Path(new).is_file():
            raise UserError(f"--training-file {pair!r}: {new!r} is not a file")
        moved[old] = new
    return moved


def training_files(config, moved: dict[str, str], ignore_missing: bool, source: dict | None = None):
    """(the data config, the other training files: rl.train.preflight.other_training_files, whether data.path is
    read, the rows read here by path) for `held_out_problems`, each file read where `moved` says it is now. A
    file that is gone is a UserError saying how to go on, or with `ignore_missing` left unread, said on stderr.
    `source`: the fingerprint of the file the checkpoint was reading (rl.checkpoint.data_source): that file moved
    must hold the same rows, and the rows checked are the ones held-out problems skip (read once: a file changed
    between two reads passed)."""
    from r1jax.errors import UserError
    from r1jax.rl.data.pipeline import read_source, source_change
    from r1jax.rl.train.preflight import other_training_files

    named = ([("data.path", config.data)] if config.data.path else []) + other_training_files(config)
    unknown = sorted(set(moved) - {data.path for _, data in named})
    if unknown:
        names = ", ".join(repr(data.path) for _, data in named) or "none (it trained on generated tasks)"
        raise UserError(f"--training-file {unknown[0]}={moved[unknown[0]]}: the checkpoint names no training file "
                        f"{unknown[0]!r}; the files it names: {names}")
    located, rows_read = {}, {}
    for field, data in named:
        if data.path in moved:
            located[field] = dataclasses.replace(data, path=moved[data.path])
            if source is not None and source.get("file") == data.path:  # the rows it trained on, or a refusal
                rows_read[moved[data.path]], now = read_source(located[field])
                changed = source_change({**source, "order": now["order"]}, now)  # eval reads them in any order
                if changed:
                    raise UserError(f"--training-file {data.path}={moved[data.path]}: {changed}; the held-out "
                                    "problems would skip other prompts than the ones trained on")
        elif pathlib.Path(data.path).is_file():
            located[field] = data
        elif not ignore_missing:
            raise UserError(f"{field}={data.path!r}: the checkpoint trained on this file, whose prompts the held-out "
                            f"problems must skip, and it is not there: give its new path (--training-file "
                            f"{data.path}=NEW_PATH), or evaluate without skipping its prompts "
                            "(--ignore-missing-training-files: held-out problems may then be ones trained on), or on "
                            "problems of your own (--data FILE)")
        else:
            print(f"r1jax eval: {field}={data.path!r} is not there (--ignore-missing-training-files): its prompts are "
                  "not skipped, so held-out problems may include ones trained on", file=sys.stderr)
    others = [(field, data) for field, data in located.items() if field != "data.path"]
    return (located.get("data.path", config.data), others, config.data.path is None or "data.path" in located,
            rows_read)


def sampling_settings(args: argparse.Namespace, eval_cfg, max_new_tokens: int) -> str:
    """The sampling settings an evaluation uses, each with where it came from: its flag, else the checkpoint's
    config ("samples 4 (checkpoint eval.samples), temperature 0.6 (checkpoint eval.temperature), top-p 0.5
    (--top-p), ...")."""
    told = [f"{flag.removeprefix('--')} {getattr(eval_cfg, field)} "
            f"({flag if getattr(args, field) is not None else f'checkpoint eval.{field}'})"
            for flag, field in SAMPLING_FLAGS]
    source = "--max-new-tokens" if args.max_new_tokens is not None else "checkpoint sampling.max_new_tokens"
    note = (f"; temperature 0 is greedy: a problem's {eval_cfg.samples} samples are one answer"
            if eval_cfg.temperature == 0 and eval_cfg.samples > 1 else "")
    return f"{', '.join(told)}, max-new-tokens {max_new_tokens} ({source}){note}"


class EvalProgress:
    """How many of `total` problems have been sampled, on stderr: a bar on a terminal, else (a log) a line at
    most every PROGRESS_LINE_INTERVAL_S seconds, which a bar's redraws would fill with control codes."""

    def __init__(self, total: int):
        from rich.console import Console

        self.total, self.started = total, time.monotonic()
        self.told_at = self.started
        self.console = Console(stderr=True, highlight=False)
        self.bar = self.task = None

    def __enter__(self) -> "EvalProgress":
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            # stdout left alone: --json's object goes there once the bar is gone
            self.bar = Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TextColumn("problems"),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                refresh_per_second=2, redirect_stdout=False, redirect_stderr=False)
            self.bar.start()
            self.task = self.bar.add_task("eval", total=self.total)
        return self

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)
            return
        now = time.monotonic()
        if now - self.told_at >= PROGRESS_LINE_INTERVAL_S:
            self.told_at = now
            print(f"r1jax eval: {done}/{self.total} problems sampled in {now - self.started:.0f} s",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


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
        if difficulty != "0":  # a file's rows carry no difficulty (rl.data.records reads them as 0)
            table.add_row(f"pass@1 difficulty {difficulty}", f"{value:.3f}")
    Console().print(table)
