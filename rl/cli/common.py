"""Arguments and checks shared by several subcommands."""

from __future__ import annotations

import argparse
import math
import pathlib

from r1jax.errors import UserError


def _integer(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the flag in its usage error, exit code 2)."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _integer(text, 0)


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


def new_output_dir(out: str | pathlib.Path) -> pathlib.Path:
    """`out` as a path, refused when it is a file or a directory that holds anything (nothing is overwritten)."""
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output directory {str(out)!r} is a file; give a new or empty directory")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output directory {str(out)!r} exists and is not empty; refusing to overwrite")
    return out


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="tiny",
                        help="a preset name (tiny, bench, bench_qwen3, deepseek_v3_671b, qwen3_30b_a3b, "
                             "qwen3_30b_a3b_r1zero: configs/) or a YAML path; default: tiny")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. model.num_hidden_layers=4; a list item by its "
                             "index: stages.0.steps=5; a whole list: rewards.names=[accuracy,format]")


def split_config_and_overrides(config: str, overrides: list[str]) -> tuple[str, list[str]]:
    """`r1jax info model.x=1` means the default config with an override."""
    if "=" in config:
        return "tiny", [config, *overrides]
    return config, overrides
