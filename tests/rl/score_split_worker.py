"""One JAX process of the split-scoring test (tests/rl/test_score_split.py):

    python -m tests.rl.score_split_worker PROCESS_ID PORT

Starts jax.distributed as process PROCESS_ID of 2, scores `batches()` through a pool that scores only this
process's share, and prints one JSON object: every batch's results and how many rows this process scored."""

import dataclasses
import json
import sys

import jax

from r1jax.rl.rewards import PoolConfig, RewardPool
from r1jax.rl.rewards.share import ScoreShare
from tests.rl.test_score_split import REWARDS, batches


def main() -> None:
    process_id, port = int(sys.argv[1]), int(sys.argv[2])
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, process_id, initialization_timeout=120)
    share = ScoreShare.of_jax_processes(timeout_s=120)
    with RewardPool(REWARDS, PoolConfig(workers=1, timeout_s=20), share=share) as pool:
        handles = [pool.submit(batch) for batch in batches()]
        own = sum(len(handle.futures) for handle in handles)  # the rows this process's workers scored
        results = [[dataclasses.asdict(r) for r in pool.collect(handle)] for handle in handles]
        print(json.dumps({"results": results, "own_rows": own, "counts": dict(pool.counts),
                          "code_counts": dict(pool.code_counts)}), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
