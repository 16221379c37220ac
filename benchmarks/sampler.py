"""Sampler throughput: prefill and decode tokens/s, and decode-step time at cache position 128 vs 1024.

    python benchmarks/sampler.py [--preset tiny|bench] [--batch 64] [--new 128] [--json]

A thin script over `rl.bench.sampler`; `r1jax bench` reports these figures with all the others.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flax import nnx  # noqa: E402

from r1jax.model.factory import init_policy  # noqa: E402
from r1jax.rl.bench.sampler import bench_prompts, sampler_figures  # noqa: E402
from r1jax.rl.config import load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cfg = load_config(args.preset).model
    graphdef, state = nnx.split(init_policy(cfg, 0))
    prompts_BP = bench_prompts(cfg.vocab_size, args.batch, 32)
    result = {"preset": args.preset, **sampler_figures(graphdef, state, prompts_BP, args.new)}
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:32s} {value:.1f}" if isinstance(value, float) else f"{key:32s} {value}")


if __name__ == "__main__":
    main()
