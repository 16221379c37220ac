"""Train the policy's sentencepiece tokenizer.

`r1jax tokenizer train --input arithmetic,countdown --vocab-size 512 --out DIR` trains on the named
tasks' prompts and worked solutions (the demo's own text); `--input FILE` trains on a text file's lines or
on a JSONL/Parquet data file's text fields. DIR receives tokenizer.model; a JSON summary is printed.
"""

from __future__ import annotations

import argparse
import json
import pathlib


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser("train", help="train a tokenizer from tasks or a text file",
                               description=__doc__)
    train.add_argument("--input", required=True, metavar="FILE_OR_TASKS",
                       help="a text / JSONL / Parquet file, or comma-separated task names "
                            "(arithmetic, countdown, algebra)")
    train.add_argument("--vocab-size", type=int, default=512, metavar="N",
                       help="requested vocabulary size (>= 272; may come out smaller on a small corpus)")
    train.add_argument("--out", required=True, metavar="DIR", help="directory to write tokenizer.model to")
    train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe",
                       help="sentencepiece algorithm (default: bpe)")
    train.add_argument("--problems-per-level", type=int, default=400, metavar="N",
                       help="with task names: problems generated per task and difficulty level")
    train.add_argument("--seed", type=int, default=0, help="with task names: the problems' seed")


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


def run(args: argparse.Namespace) -> int:
    from r1jax.model.tokenizer import train_tokenizer

    corpus = corpus_for(args.input, args.problems_per_level, args.seed)
    tokenizer = train_tokenizer(corpus, args.vocab_size, args.model_type)
    path = tokenizer.save(args.out)
    print(json.dumps({"path": str(path), "vocab_size": tokenizer.vocab_size,
                      "requested_vocab_size": args.vocab_size, "input": args.input}))
    return 0
