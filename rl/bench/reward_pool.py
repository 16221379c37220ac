"""Reward pool throughput: verifications per second with 1 and N workers.

The items are the worked solutions of generated arithmetic, countdown and algebra problems (half of them
with a wrong final answer) and math-verify answers in LaTeX, so every verifier is exercised. The pool is
warmed up first (workers started, sympy and math-verify imported) so the numbers are steady-state throughput.
"""

from __future__ import annotations

import time
from typing import Sequence

from r1jax.rl.rewards import PoolConfig, RewardPool, RewardsConfig, ScoreItem
from r1jax.rl.tasks import get_task

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


def pool_figures(items: int, workers: Sequence[int]) -> dict:
    """`pool_verifications_per_s` {workers: rate} (JSON keys are strings) and the N-vs-1 scaling."""
    batch = make_items(items)
    rates = {str(w): measure(w, batch)["verifications_per_s"] for w in workers}
    first, last = rates[str(workers[0])], rates[str(workers[-1])]
    return {"pool_items": items, "pool_verifications_per_s": rates,
            "pool_scaling": last / first if first else float("nan")}
