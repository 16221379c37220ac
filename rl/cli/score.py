"""Score saved completions offline with exactly the training rewards, in the same killable worker pool.

Each input row (JSONL or Parquet) needs `completion` and `answer`; `task` (default math) picks the
verifier, `prompt` and `length` (completion tokens, for the overlong penalty) are optional. Code rows
(`task: code`) need `tests` instead of `answer` (assertion strings or {input, output} objects, optional
`entry_point`: rl.rewards.code) and are scored by `--rewards code[,format]`, their programs run in the
sandbox (`--sandbox`). One JSON line per row is printed in input order: the row plus `rewards` (name ->
value) and `status` (ok, timeout, crashed, error; failures score 0 and add an `error` field), and for code
rows scored by `code` its `code_status` (passed, failed, syntax_error, timeout, memory, crashed, sandbox_error).
An input row's own fields of those names (a scored file scored again) are replaced, none kept from before.
Rows a reward can only score 0 (`code` without tests, `accuracy` of code rows) are counted on stderr first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys

from r1jax.rl.cli.common import non_negative_int, pool_memory_mb, pool_workers, positive_int, positive_number, \
    sigterm_interrupts

OUTPUT_FIELDS = ("rewards", "status", "code_status", "error")  # what scoring adds to a row
CHUNK = 256  # rows scored per pool batch, so output streams on large files
RESPAWN_S = 3.0  # a replacement worker's start, with room: a pool of two with sympy and math-verify 0.8 s (README)
# the config field each flag sets, for the configs' errors (rl.rewards.config.FieldError.for_flags)
FLAGS = {"rewards.names": "--rewards", "rewards.language": "--language", "rewards.max_length": "--max-length",
         "rewards.overlong_buffer": "--overlong-buffer", "rewards.code.sandbox": "--sandbox",
         "reward_pool.workers": "--workers", "reward_pool.timeout_s": "--timeout",
         "reward_pool.memory_mb": "--memory-mb"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.jsonl", help="rows with completion and answer")
    parser.add_argument("--rewards", default="accuracy,format", metavar="NAMES",
                        help="comma-separated reward names (accuracy, format, language, overlong, code; "
                             "default %(default)s)")
    parser.add_argument("--sandbox", default="bwrap", choices=("bwrap", "rlimits_only"),
                        help="how the code reward isolates programs (rlimits_only: no namespaces, weaker; "
                             "default %(default)s)")
    parser.add_argument("--partial", action="store_true",
                        help="code reward: the fraction of tests passed instead of all-or-nothing")
    parser.add_argument("--timeout", type=positive_number, default=10.0, metavar="SECONDS",
                        help="per-row time limit; a row past it scores 0 with status timeout (default %(default)s)")
    parser.add_argument("--workers", type=pool_workers, default=2, metavar="N",
                        help="worker processes (default %(default)s)")
    parser.add_argument("--memory-mb", type=pool_memory_mb, default=2048, metavar="MB",
                        help="address-space limit per worker (0: none; default %(default)s)")
    parser.add_argument("--language", default="en", help="target language of the language reward (default %(default)s)")
    parser.add_argument("--max-length", type=positive_int, default=1024, metavar="N",
                        help="overlong penalty: the length budget L_max (default %(default)s)")
    parser.add_argument("--overlong-buffer", type=non_negative_int, default=256, metavar="N",
                        help="overlong penalty: the soft zone L_cache before L_max (default %(default)s)")


def read_items(path: str, accuracy: bool = True) -> tuple[list[dict], list]:
    """Every row validated up front (a bad row fails before anything is scored); with `accuracy` (the reward is
    scored), a reference it can never match too."""
    from r1jax.errors import UserError
    from r1jax.rl.data.records import check_reference, check_task, read_rows, text_field
    from r1jax.rl.rewards import ScoreItem
    from r1jax.rl.rewards.code import check_entry_point, encode_tests

    rows, items = [], []
    for number, row in read_rows(path):
        where = f"{path}: row {number}"
        completion = row.get("completion")
        if completion is None:
            raise UserError(f"{where}: field 'completion' is missing")
        if not isinstance(completion, str):
            raise UserError(f"{where}: field 'completion' must be a string, got {type(completion).__name__}")
        length = row.get("length")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 0):
            raise UserError(f"{where}: field 'length' must be a non-negative integer, got {length!r}")
        task = check_task(row, where, "math")
        code = task == "code"
        if not code and row.get("tests") is not None and "task" not in row:  # it read "field 'answer' is missing"
            raise UserError(f"{where}: the row has 'tests' but no 'task': a code row needs \"task\": \"code\" "
                            "(without it the row is a math row, judged against its 'answer')")
        if code and row.get("tests") is None:
            raise UserError(f"{where}: field 'tests' is missing (code rows need tests)")
        # the entry point before the tests: a test calling `max` names no program, and `candidate` needs one
        entry_point = check_entry_point(row.get("entry_point"), where) if code else None
        prompt = text_field(row, "prompt", where, required=False) or ""
        reference = text_field(row, "answer", where, required=not code, numbers_ok=True) or ""
        if accuracy and not code:  # as training's data loading: a bare countdown target scored every row 0
            check_reference(task, prompt, reference, f"{where}: field 'answer'")
        items.append(ScoreItem(prompt=prompt, completion=completion, reference=reference,
                               task=task, length=length, entry_point=entry_point,
                               tests=encode_tests(row["tests"], where, entry_point) if code else None))
        rows.append(row)
    return rows, items


def configs(args: argparse.Namespace):
    """(RewardsConfig, PoolConfig) from the flags; their checks' errors name the flags (FLAGS)."""
    from r1jax.rl.rewards import CodeConfig, PoolConfig, RewardsConfig
    from r1jax.rl.rewards.config import FieldError

    names = tuple(n.strip() for n in args.rewards.split(",") if n.strip())
    # each chunk's deadline leaves every row its --timeout, queued behind the others on the workers (the default
    # 600 s per batch scored the last rows of a chunk of slow rows as timeouts that took less than --timeout),
    # and the start of the worker that replaces one killed at its timeout (RESPAWN_S)
    deadline = math.ceil(CHUNK / args.workers) * (args.timeout + RESPAWN_S) + 60
    try:
        return (RewardsConfig(names=names, weights=(1.0,) * len(names), language=args.language,
                              max_length=args.max_length, overlong_buffer=args.overlong_buffer,
                              code=CodeConfig(sandbox=args.sandbox, partial=args.partial)),
                PoolConfig(workers=args.workers, timeout_s=args.timeout, memory_mb=args.memory_mb,
                           batch_deadline_s=max(deadline, PoolConfig.batch_deadline_s)))
    except FieldError as err:
        raise err.for_flags(FLAGS) from None


@contextlib.contextmanager
def errors_in_flags():
    """A UserError whose advice sets a config field (the sandbox's "or set rewards.code.sandbox=rlimits_only")
    says the flag of `score` that sets it instead: score takes no config fields."""
    from r1jax.errors import UserError

    try:
        yield
    except UserError as err:
        text = str(err)
        for field, flag in FLAGS.items():
            text = re.sub(rf"\bset {re.escape(field)}=(\S+)", rf"pass {flag} \1", text)
        if text == str(err):
            raise
        raise UserError(text) from None


def run(args: argparse.Namespace) -> int:
    from r1jax.rl.rewards import RewardPool
    from r1jax.rl.rewards.functions import check_names

    rewards, pool_config = configs(args)
    check_names(rewards, named="--rewards", custom="score runs these only")  # before reading a large file
    rows, items = read_items(args.file, accuracy="accuracy" in rewards.names)
    if not rows:  # said, rather than an empty output alone: most often the wrong file
        print(f"r1jax score: {args.file} holds no rows: nothing scored", file=sys.stderr)
        return 0
    say_rows_scored_zero(rewards.names, items)
    # SIGTERM (a job's time limit, `timeout`) stops as Ctrl-C does: the pool closed, one line, exit 143 (it killed
    # the process and left the workers to the resource tracker's "leaked semaphore objects" warnings on stderr)
    with sigterm_interrupts(), errors_in_flags(), \
            RewardPool(rewards, pool_config, tasks=sorted({item.task for item in items})) as pool:
        for start in range(0, len(items), CHUNK):
            results = pool.score_batch(items[start:start + CHUNK])
            for row, result in zip(rows[start:start + CHUNK], results):
                out = {key: value for key, value in row.items() if key not in OUTPUT_FIELDS}
                out.update(rewards=result.rewards, status=result.status)
                if result.code_status is not None:
                    out["code_status"] = result.code_status
                if result.error:
                    out["error"] = result.error
                # default=str: a Parquet row may hold values JSON has no type for (datetime, bytes, Decimal; NaN and
                # infinities, which json.dumps wrote bare, no JSON reader taking the line: _finite)
                out = _finite(out)
                line = json.dumps(out, ensure_ascii=False, default=str)
                if not line.isascii() and not _utf8(line):  # a lone surrogate ("\ud83d" in the input): escaped
                    line = json.dumps(out, default=str)  # as the input had it (UTF-8 cannot carry it)
                print(line, flush=True)
    return 0


def say_rows_scored_zero(names, items) -> None:
    """One stderr line for each reward that scores some rows 0 whatever their completions: `code` rows without
    tests (not task code), `accuracy` code rows (verify is always False: only `code` runs their tests). A file of
    maths rows scored with --rewards code (the wrong file, most often) printed a code reward of 0 for each row, and
    nothing else."""
    untested = sum(item.tests is None for item in items)
    if "code" in names and untested:
        print(f"r1jax score: {untested} of {len(items)} rows hold no tests (not task code): the code reward scores "
              "them 0", file=sys.stderr)
    if "accuracy" in names and untested < len(items):
        print(f"r1jax score: {len(items) - untested} of {len(items)} rows are code rows: the accuracy reward scores "
              "them 0 (the code reward runs their tests)", file=sys.stderr)


def _finite(value):
    """`value` with each float NaN or infinity (a Parquet column's) as its string, "nan", "inf" or "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
