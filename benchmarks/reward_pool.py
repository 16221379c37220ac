"""Reward pool throughput: verifications per second with 1 and 2 workers (reported, never asserted).

    python benchmarks/reward_pool.py [--items 600] [--workers 1,2]

The items are the worked solutions of generated arithmetic, countdown and algebra problems (half of them
with a wrong final answer) and math-verify answers in LaTeX, so every verifier is exercised. The pool is
warmed up first (workers started, sympy imported) so the numbers are steady-state throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rl.rewards import PoolConfig, RewardPool, RewardsConfig, ScoreItem  # noqa: E402
from rl.tasks import get_task  # noqa: E402

# Distinct per index (math-verify caches recent parses): fractions, polynomials, sets, intervals, roots.
MATH = [(r"\frac{{{i}}}{{{j}}}", "{i}/{j}"), ("x^2-{k}", "(x-{i})(x+{i})"), (r"\{{{i},{j}\}}", r"\{{{j},{i}\}}"),
        ("[{i},{j})", "[{i},{j}]"), (r"\sqrt{{{k}}}", "{i}"), ("{i}", "{j}")]


def make_items(count: int) -> list[ScoreItem]:
    items = []
    tasks = [get_task(name, 3) for name in ("arithmetic", "countdown", "algebra")]
    for index in range(count):
        if index % 4 == 3:
            i = index // 4 + 2
            reference, answer = (t.format(i=i, j=i + 7, k=i * i) for t in MATH[index % len(MATH)])
            completion = f"<think> work </think> <answer> {answer} </answer>"
            items.append(ScoreItem("q", completion, reference, "math"))
            continue
        task = tasks[index % len(tasks)]
        problem = task.generate(0, index)
        completion = problem.solution if index % 2 else problem.solution.replace("<answer> ", "<answer> 1")
        items.append(ScoreItem(problem.prompt, completion, problem.answer, task.name))
    return items


def measure(workers: int, items: list[ScoreItem]) -> dict:
    config = RewardsConfig(names=("accuracy", "format", "language"), weights=(1.0, 1.0, 0.1))
    with RewardPool(config, PoolConfig(workers=workers, timeout_s=10.0)) as pool:
        pool.score_batch(items[:4 * workers])  # warm-up: imports sympy / math-verify in every worker
        start = time.perf_counter()
        results = pool.score_batch(items)
        seconds = time.perf_counter() - start
    ok = sum(r.status == "ok" for r in results)
    return {"workers": workers, "items": len(items), "seconds": round(seconds, 3),
            "verifications_per_s": round(len(items) / seconds, 1), "ok": ok,
            "accuracy_mean": round(sum(r.rewards["accuracy"] for r in results) / len(results), 3)}


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
