"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="tiny",
                        help="a preset name (tiny, bench, deepseek_v3_671b, qwen3_30b_a3b) or a YAML path; "
                             "default: tiny")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides, e.g. model.num_hidden_layers=4; a list item by its "
                             "index: stages.0.steps=5; a whole list: rewards.names=[accuracy,format]")


def split_config_and_overrides(config: str, overrides: list[str]) -> tuple[str, list[str]]:
    """`r1jax info model.x=1` means the default config with an override."""
    if "=" in config:
        return "tiny", [config, *overrides]
    return config, overrides
