"""Arguments and checks shared by several subcommands."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pathlib
import re
import signal
import tempfile
from typing import Mapping, Sequence

from r1jax.errors import Interrupted, UserError
from r1jax.files import not_utf8
from r1jax.rl.config import MAX_SEED
# INT32_MAX: counts reach the device as int32 (shapes, token ids, top-k)
from r1jax.rl.config_checks import INT32_MAX, context_overflow


SEED_MIN, SEED_MAX = -2**63, 2**63 - 1  # jax.random.key takes a 64-bit integer seed
MAX_CPU_DEVICES = 4096  # --cpu-devices: XLA's CPU client crashed (SIGSEGV) creating 100,000
MAX_NEW_TOKENS = 2**30  # token positions are int32: the prompt needs room too


def _integer(text: str, low: int, high: int | None = INT32_MAX,
             why: str = "2^31-1: sizes are int32 on the device") -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text[:40]!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"expected an integer <= {high} ({why}), got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer in [1, 2^31-1] (argparse names the flag in its usage error, exit code 2)."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer in [0, 2^31-1]."""
    return _integer(text, 0)


def pool_workers(text: str) -> int:
    """An argparse type: an integer >= 1 that a config bounds above, its error naming the flag (`r1jax score`'s
    --workers: rl.rewards.config.PoolConfig and FieldError.for_flags), so one message says the bound."""
    return _integer(text, 1, None)


def pool_memory_mb(text: str) -> int:
    """An argparse type: an integer >= 0 that a config bounds (as `pool_workers`: --memory-mb)."""
    return _integer(text, 0, None)


def max_new_tokens(text: str) -> int:
    """An argparse type: a completion length in [1, 2^30] (positions are int32, and the prompt needs room)."""
    return _integer(text, 1, MAX_NEW_TOKENS, "2^30: token positions are int32, and the prompt needs room")


def check_context(new_tokens: int, prompt_tokens: int, context: int, *, prompt: str = "", flags: str = "",
                  where: str = "") -> None:
    """A completion of `new_tokens` after a prompt of `prompt_tokens` fits the model's context (its
    max_position_embeddings: rl.config_checks.context_overflow), else a UserError naming the `flags` that set them
    (default --max-new-tokens), the prompt as `prompt` ("a prompt bucket") and its place as `where` (a data file's
    row, "FILE: row N"): past it a cache of 2^30 tokens went to the device and out of memory, with a traceback, and
    `r1jax compile` compiled for minutes a policy that cannot run. A prompt that fills the context alone is named
    as the culprit (led by its place), not the flags."""
    overflow = context_overflow(prompt_tokens, new_tokens, context)
    if overflow == "prompt":  # no budget fits: naming --max-new-tokens sent the user to the wrong knob
        lead = where or flags
        raise UserError(f"{lead + ': ' if lead else ''}{prompt or 'the prompt'} is {prompt_tokens} tokens long: it "
                        f"fills the model's context of {context} tokens (model.max_position_embeddings) by itself, "
                        "leaving no room for a new token")
    if overflow == "budget":
        shown = f"{prompt or 'a prompt'}{f' ({where})' if where else ''} of {prompt_tokens} tokens and " \
            if prompt_tokens else ""
        raise UserError(f"{flags or f'--max-new-tokens {new_tokens}'}: {shown}{new_tokens} new tokens pass the "
                        f"model's context of {context} tokens (model.max_position_embeddings)")


def check_token_copies(rows: int, tokens: int, experts: int, flags: str) -> None:
    """A sampler call of `rows` rows of `tokens` tokens (the prompt's bucket + the new tokens) routes each to
    `experts` experts: at most 2^31-1 token copies, which the MoE dispatch indexes in int32 (the bound the config
    sets on a run's sampler calls, rl.config), else a UserError naming the `flags`: `generate --samples
    2147483647` was an OverflowError traceback from inside the MoE layer."""
    if rows * tokens * experts > INT32_MAX:
        raise UserError(f"{flags}: {rows:,} rows x {tokens} tokens (the prompt's bucket + the new tokens) x "
                        f"model.num_experts_per_tok={experts} is over 2^31-1 token copies (the MoE dispatch "
                        f"indexes them in int32); ask for fewer samples or new tokens")


def buckets_for(buckets: Sequence[int], longest: int) -> tuple[int, ...]:
    """The sampler's prompt buckets with one more, a multiple of 64 tokens, when the longest prompt of an
    inference command (generate, eval) passes the largest: those commands take no sampling.prompt_buckets,
    which the error advised raising."""
    buckets = tuple(buckets)
    return buckets + (-(-longest // 64) * 64,) if longest > buckets[-1] else buckets


def cpu_device_count(text: str) -> int:
    """An argparse type: a number of fake CPU devices in [1, MAX_CPU_DEVICES]."""
    return _integer(text, 1, MAX_CPU_DEVICES, "r1jax's limit on fake CPU devices")


def integer_in(text: str, low: int, high: int, shown: str, noun: str = "", why: str = "") -> int:
    """`text` as an integer in [low, high], else an argparse error saying the range as `shown` ("[-2^63, 2^63-1]"),
    the value as `noun` ("seed") and `why` after it."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected an integer{' ' + noun if noun else ''} in {shown}, "
                                         f"got {text[:40]!r}{why}")
    return value


def seed(text: str) -> int:
    """An argparse type: a random seed, any 64-bit integer (what jax.random.key takes)."""
    return integer_in(text, SEED_MIN, SEED_MAX, "[-2^63, 2^63-1]", "seed")


def run_seed(text: str) -> int:
    """An argparse type: a run config's seed (`seed`: the config's range, narrower than a JAX key's)."""
    return integer_in(text, -MAX_SEED, MAX_SEED, "[-2^53, 2^53]", "seed")


def utf8_text(text: str) -> str:
    """An argparse type: text that is valid UTF-8 (a byte that is not arrives as a surrogate escape, which the
    tokenizer cannot encode)."""
    where = not_utf8(text)
    if where:
        raise argparse.ArgumentTypeError(f"not valid UTF-8 text: {where}")
    return text


def _number(text: str, ok, expected: str) -> float:
    """`text` as a finite float for which `ok` holds (NaN and infinities are refused: they pass `x < 0`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number {expected}, got {text!r}") from None
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected a finite number {expected}, got {text!r}")
    return value


def positive_number(text: str) -> float:
    """An argparse type: a finite number > 0."""
    return _number(text, lambda v: v > 0, "> 0")


def non_negative_number(text: str) -> float:
    """An argparse type: a finite number >= 0 (a temperature: 0 is greedy)."""
    return _number(text, lambda v: v >= 0, ">= 0")


def probability(text: str) -> float:
    """An argparse type: a number in (0, 1] (top-p)."""
    return _number(text, lambda v: 0 < v <= 1, "in (0, 1]")


def new_output_dir(out: str | pathlib.Path, what: str | None = None) -> pathlib.Path:
    """`out` as a path, refused when it is a file or a directory that holds anything (nothing is overwritten), or
    when it cannot be created. `what` names it in the errors (default: "output directory 'OUT'")."""
    out = pathlib.Path(out)
    what = what or f"output directory {str(out)!r}"
    # (export-hf renamed its whole export onto a dangling link at the end: ENOTDIR)
    refuse_dangling_link(out, what, "give a new or empty directory, or make the one it names")
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} is a file; give a new or empty directory")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{what} exists and is not empty; refusing to overwrite")
    check_creatable(out, what)
    return out


def refuse_inside_checkpoint(out: pathlib.Path, checkpoint: str, what: str) -> None:
    """A UserError naming `what` when `out` lies inside the checkpoint root that `checkpoint` names (a run directory's
    checkpoints/, or the directory of its steps): its entries are steps, so an export named 99 there became the
    run's latest step, which generate, eval and a resume then refused as incomplete; one inside a step is deleted
    with it when the trainer rotates the step away; and `export-gguf --force` replaced the checkpoint's own
    tokenizer.model with the GGUF file."""
    from r1jax.rl.checkpoint_paths import resolve

    root, _ = resolve(checkpoint)
    if out.resolve().is_relative_to(root.resolve()):
        raise UserError(f"{what} is inside checkpoint directory {str(root)!r}, whose entries are its steps (a "
                        "numbered name is read as a step, and a step rotated away is deleted with all it holds): "
                        "write the export outside it")


def refuse_dangling_link(out: pathlib.Path, what: str, remedy: str) -> None:
    """A UserError naming `what`, each hop of its symlink chain and `remedy` when `out` is a symlink whose chain
    ends nowhere (a link to a link to nothing named only the first hop, which exists as a link)."""
    if not out.is_symlink() or out.exists():
        return
    hops, link, seen, loop = [], out, set(), False
    while link.is_symlink() and len(hops) < 40:  # (the kernel's own limit)
        stat = link.lstat()
        loop = loop or (stat.st_dev, stat.st_ino) in seen  # (a link met again: the chain goes round)
        seen.add((stat.st_dev, stat.st_ino))
        target = os.readlink(link)
        hops.append(target)
        link = link.parent / target
    shown = [repr(hop) for hop in hops]
    if link.is_symlink():
        ends = "a symlink loop" if loop else "more than 40 links, which no path follows"
        shown = shown[:4] + ["..."] if len(shown) > 4 else shown
    else:  # more than 4 hops: the first 3 and the missing path
        ends = "which does not exist"
        shown = shown[:3] + ["...", shown[-1]] if len(shown) > 4 else shown
    chain = " -> ".join(shown)
    raise UserError(f"{what} is a symlink to {chain}, {ends}; {remedy}")


def check_creatable(directory: pathlib.Path, what: str, named: pathlib.Path | None = None) -> None:
    """A UserError naming `what` unless files can be written in `directory` (made with its missing parents; what
    `what` names, `named` or `directory`, "cannot be written" when it exists, else "cannot be created"):
    tried with a scratch directory in it, or in its nearest existing parent, removed at once (so nothing is left
    behind when the command fails later)."""
    parent = directory
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} cannot be created: {str(parent)!r} is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".r1jax-write-check-", dir=parent))
    except OSError as err:  # (an empty read-only directory given exists: it cannot be written)
        verb = "cannot be written" if (named or directory).exists() else "cannot be created"
        raise UserError(f"{what} {verb}: nothing can be written in {str(parent)!r} "
                        f"({err.strerror or err})") from None


def flags_in_error(err: UserError, section: str, flags: Mapping[str, tuple[str, object]]) -> UserError:
    """`err`, a config section's refusal of a value a flag set, said naming that flag ("--top-k 5: sampling.top_k=5:
    must be ...") when it names one of `flags` (field -> (flag, value)); else `err` itself."""
    message = str(err)
    for field, (flag, value) in flags.items():
        if re.search(rf"(?<![\w.]){re.escape(section)}\.{re.escape(field)}\b", message):
            return UserError(f"{flag} {value}: {message}")
    return err


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="tiny",
                        help="a preset name (tiny, bench, bench_qwen3, deepseek_v3_671b, qwen3_30b_a3b, "
                             "qwen3_30b_a3b_r1zero: configs/) or a YAML path; default: tiny")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. model.num_hidden_layers=4; a list item by its "
                             "index: stages.0.steps=5; a whole list: rewards.names=[accuracy,format]")


def split_config_and_overrides(config: str, overrides: list[str]) -> tuple[str, list[str]]:
    """`r1jax info model.x=1` means the default config with an override. The config after overrides
    (`r1jax train seed=1 run.yaml`) is named as misplaced: it was "'run.yaml' is not of the form dotted.key=value"."""
    if "=" in config:
        misplaced = next((text for text in overrides if "=" not in text), None)
        if misplaced is not None:
            raise UserError(f"{misplaced!r} after the override {config!r}: the config (a preset name or YAML path) "
                            f"comes first, before its KEY=VALUE overrides")
        return "tiny", [config, *overrides]
    return config, overrides


@contextlib.contextmanager
def sigterm_interrupts():
    """SIGTERM raises `Interrupted` in the main thread while the block runs, so a command stopped by a job's time
    limit or `timeout` cleans up as after Ctrl-C (Python's default ends the process at once: a bench's minutes of
    figures lost, an export's partial files left). A GRPO run inside the bench holds SIGTERM and SIGINT as a
    preemption while it runs, and its stop is raised as `Interrupted` after it (rl.bench.grpo_step)."""
    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
