"""Sampler throughput: prefill and decode tokens/s, and decode-step time at cache position 128 vs 1024.

    python benchmarks/sampler.py [--preset tiny|bench] [--batch 64] [--new 128] [--json]

A thin script over `rl.bench.sampler`, set up as `r1jax bench` sets it up (the preset's mesh, sampler layout,
`sampling.kv_block` and `cache_phases`), which reports these figures with all the others.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1jax.model.factory import init_policy  # noqa: E402
from r1jax.rl.bench.sampler import bench_prompts, sampler_figures, sampler_policy  # noqa: E402
from r1jax.rl.config import load_config  # noqa: E402
from r1jax.sharding.context import use_mesh  # noqa: E402
from r1jax.sharding.mesh import build_mesh  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = load_config(args.preset)
    mesh, rules = build_mesh(config.sharding), config.sharding.logical_rules()
    with use_mesh(mesh, rules):
        policy = init_policy(config.model, config.seed, mesh, rules)
    graphdef, state, sample_mesh, sample_rules, layout = sampler_policy(config, policy, mesh, rules)
    prompts_BP = bench_prompts(config.model.vocab_size, args.batch, 32)
    with use_mesh(sample_mesh, sample_rules):
        figures = sampler_figures(graphdef, state, prompts_BP, args.new, kv_block=config.sampling.kv_block,
                                  cache_phases=config.sampling.cache_phases)
    result = {"preset": args.preset, "sampler_layout": layout, **figures}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value:.1f}" if isinstance(value, float) else f"{key:32s} {value}")


if __name__ == "__main__":
    main()
