"""Train the policy's sentencepiece tokenizer.

`r1jax tokenizer train --input arithmetic,countdown --vocab-size 512 --out DIR` trains on the named
tasks' prompts and worked solutions (the demo's own text); `--input FILE` trains on a text file's lines or
on a data file's text fields (.jsonl, .json: JSON lines, .parquet). DIR receives tokenizer.model; a JSON
summary is printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import sys

from r1jax.model.tokenizer import FILE_NAME, MIN_VOCAB, TEMPLATES, TOKENIZER_JSON
from r1jax.rl.cli.common import INT32_MAX, check_creatable, integer_in, positive_int, refuse_dangling_link, seed

MIN_CORPUS_LINES = 10  # non-blank lines of text besides the prompt templates every corpus starts with


def vocab_size(text: str) -> int:
    """An argparse type: a requested vocabulary size in [MIN_VOCAB, 2^31-1] (sentencepiece reads an int32)."""
    return integer_in(text, MIN_VOCAB, INT32_MAX, f"[{MIN_VOCAB}, 2^31-1]",
                      why=f" ({MIN_VOCAB}: 4 control pieces, 4 tags, 256 bytes and 8 characters)")


class _ActionParser(argparse.ArgumentParser):
    """An action's parser whose refusals say `r1jax tokenizer: error: ...`, as every other refusal of the command
    does (its own and `rl.cli.main`'s); argparse's would name the action (`r1jax tokenizer train: error:`)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog.rsplit(' ', 1)[0]}: error: {message}\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=_ActionParser)
    train = actions.add_parser("train", help="train a tokenizer from tasks or a text file",
                               description=__doc__)
    train.add_argument("--input", required=True, metavar="FILE_OR_TASKS",
                       help="a text / JSONL / Parquet file, or comma-separated task names "
                            "(arithmetic, countdown, algebra, code)")
    train.add_argument("--vocab-size", type=vocab_size, default=512, metavar="N",
                       help="requested vocabulary size (>= 272; may come out smaller on a small corpus; "
                            "default %(default)s)")
    train.add_argument("--out", required=True, metavar="DIR",
                       help="directory to write tokenizer.model to (not one that holds a tokenizer already)")
    train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe",
                       help="sentencepiece algorithm (default: bpe)")
    train.add_argument("--problems-per-level", type=positive_int, default=400, metavar="N",
                       help="with task names: problems generated per task and difficulty level (default %(default)s)")
    train.add_argument("--seed", type=seed, default=0, help="with task names: the problems' seed (default %(default)s)")


def corpus_for(spec: str, problems_per_level: int, seed: int):
    from r1jax.errors import UserError
    from r1jax.rl.data import file_corpus, task_corpus
    from r1jax.rl.tasks import TASKS

    if pathlib.Path(spec).is_file():
        return file_corpus(spec)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    generators = sorted(n for n in TASKS if n != "math")
    bad = [n for n in names if n not in generators]
    if not names or bad:
        raise UserError(f"--input {spec!r}: not a file and not task names (choose from {', '.join(generators)})")
    return task_corpus(names, problems_per_level, seed)


def check_out(out: str) -> None:
    """Refuse an --out that is a file, holds a tokenizer already (nothing is overwritten, as `r1jax init` and
    the exports refuse a directory that holds anything) or cannot be created: before any training."""
    from r1jax.errors import UserError

    path = pathlib.Path(out)
    refuse_dangling_link(path, f"--out {out!r}", "give a new or empty directory, or make the one it names")
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out!r} is a file; give a directory (tokenizer.model is written in it)")
    held = [name for name in (FILE_NAME, TOKENIZER_JSON) if (path / name).exists()]
    if held:
        raise UserError(f"--out {out!r} already holds a tokenizer ({', '.join(held)}); refusing to overwrite: "
                        "give a new directory, or remove the old tokenizer first")
    check_creatable(path, f"--out {out!r}")


def checked_corpus(corpus, spec: str):
    """`corpus`, refused when it holds fewer than MIN_CORPUS_LINES non-blank lines besides the prompt templates
    (a tokenizer trained on nothing, or on a line, is not one the user wanted); its items are read lazily, as
    train_tokenizer reads them, past the lines counted here."""
    from r1jax.errors import UserError
    from r1jax.rl.data.records import SUFFIXES

    templates, items, lines = set(TEMPLATES.values()), [], 0
    corpus = iter(corpus)
    for item in corpus:
        items.append(item)
        if item not in templates:
            lines += sum(1 for line in item.splitlines() if line.strip())
        if lines >= MIN_CORPUS_LINES:
            return itertools.chain(items, corpus)
    if pathlib.Path(spec).suffix in SUFFIXES:
        where = " in its rows' prompt, answer, solution and completion fields"
    elif pathlib.Path(spec).is_file():
        where = ""
    else:
        where = " (raise --problems-per-level)"
    raise UserError(f"--input {spec!r} holds {lines} non-blank line{'' if lines == 1 else 's'} of text{where}; "
                    f"a tokenizer needs at least {MIN_CORPUS_LINES}")


def run(args: argparse.Namespace) -> int:
    from r1jax.model.tokenizer import train_tokenizer

    check_out(args.out)
    corpus = checked_corpus(corpus_for(args.input, args.problems_per_level, args.seed), args.input)
    tokenizer = train_tokenizer(corpus, args.vocab_size, args.model_type)
    path = tokenizer.save(args.out)
    try:
        print(json.dumps({"path": str(path), "vocab_size": tokenizer.vocab_size,
                          "requested_vocab_size": args.vocab_size, "input": args.input}), flush=True)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): main's quiet exit
    except OSError as err:  # a full or failing stdout: the tokenizer is saved, and a second run would refuse --out
        from r1jax.errors import UserError
        raise UserError(f"the tokenizer is saved in {path.parent} (use it as it is), but its summary could not be "
                        f"printed: {err.strerror or err}") from None
    return 0
