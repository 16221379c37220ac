"""Write a randomly initialised checkpoint (Orbax, with its resolved config) for a config."""

from __future__ import annotations

import argparse

from r1jax.rl.cli.common import new_output_dir, run_seed, sigterm_interrupts, split_config_and_overrides


INTERMIXED = True  # KEY=VALUE overrides after the options too (rl.cli.main.parse_arguments)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a preset name or a YAML path")
    parser.add_argument("out", help="checkpoint directory to create (must not hold a checkpoint yet)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides")
    parser.add_argument("--seed", type=run_seed, default=None, help="initialisation seed (default: config seed)")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from r1jax.model.factory import init_policy
    from r1jax.rl.checkpoint import save_policy
    from r1jax.rl.config import load_config
    from r1jax.sharding.context import use_mesh
    from r1jax.sharding.mesh import build_mesh

    name, overrides = split_config_and_overrides(args.config, args.overrides)
    config = load_config(name, overrides)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    out = new_output_dir(args.out)
    mesh = build_mesh(config.sharding)
    rules = config.sharding.logical_rules()
    with use_mesh(mesh, rules):
        policy = init_policy(config.model, config.seed, mesh, rules)
    with sigterm_interrupts():  # a stop (a job's time limit too) leaves no partial step in OUT (save_policy)
        step_dir = save_policy(out, config, policy)
    mesh_text = " ".join(f"{axis}={size}" for axis, size in mesh.shape.items())
    print(f"wrote {step_dir} ({config.model.family}, seed {config.seed}, mesh {mesh_text})")
    return 0
