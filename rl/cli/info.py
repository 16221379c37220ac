"""Print a config's family and parameter counts as JSON, computed from abstract shapes (no allocation)."""

from __future__ import annotations

import argparse
import json

from r1jax.rl.cli.common import add_config_arguments, split_config_and_overrides


INTERMIXED = True  # KEY=VALUE overrides after the options too (rl.cli.main.parse_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from r1jax.model.factory import count_params
    from r1jax.rl.config import load_config

    name, overrides = split_config_and_overrides(args.config, args.overrides)
    config = load_config(name, overrides)
    model = config.model
    report = {
        "family": model.family,
        **count_params(model),
        "num_hidden_layers": model.num_hidden_layers,
        "layer_segments": [list(s) for s in model.layer_segments()],
        "n_routed_experts": model.n_routed_experts,
        "num_experts_per_tok": model.num_experts_per_tok,
        "vocab_size": model.vocab_size,
        "hidden_size": model.hidden_size,
    }
    print(json.dumps(report, indent=2))
    return 0
