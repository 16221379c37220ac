"""Reward pool throughput: verifications per second with 1 and 2 workers (reported, never asserted).

    python benchmarks/reward_pool.py [--items 600] [--workers 1,2]

A thin script over `rl.bench.reward_pool` (the items and the warm-up are described there); `r1jax bench`
reports the same figures with all the others.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from r1jax.rl.bench.reward_pool import make_items, measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = parser.parse_args()
    items = make_items(args.items)
    for workers in (int(w) for w in args.workers.split(",")):
        print(json.dumps(measure(workers, items)), flush=True)


if __name__ == "__main__":
    main()
