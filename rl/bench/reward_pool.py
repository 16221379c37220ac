"""Reward pool throughput: verifications per second with 1 and N workers, for math and for code.

The math items are the worked solutions of generated arithmetic, countdown and algebra problems (half of them
with a wrong final answer) and math-verify answers in LaTeX, so every verifier is exercised. The code items
are the worked solutions of generated code problems (half of them wrong), each run against its tests in the
sandbox (rewards.code.sandbox's default, bwrap). The pool is warmed up first (workers started, the items' tasks'
verifiers loaded: sympy and math-verify for the math items) so the numbers are steady-state throughput.
"""

from __future__ import annotations

import time
from typing import Sequence

from r1jax.errors import UserError
from r1jax.rl.rewards import PoolConfig, RewardPool, RewardsConfig, ScoreItem
from r1jax.rl.tasks import get_task

MATH_REWARDS = RewardsConfig(names=("accuracy", "format", "language"), weights=(1.0, 1.0, 0.1))
CODE_REWARDS = RewardsConfig(names=("code", "format"), weights=(1.0, 1.0))

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


def make_code_items(count: int) -> list[ScoreItem]:
    """Generated code problems of both test forms; odd indices get a worked solution, even ones a wrong one."""
    task = get_task("code", 3)
    items = []
    for index in range(count):
        problem = task.generate(0, index)
        completion = problem.solution if index % 2 else "<think> guess </think> <answer> print(0) </answer>"
        items.append(ScoreItem(problem.prompt, completion, problem.answer, "code", tests=problem.tests,
                               entry_point=problem.entry_point))
    return items


def measure(workers: int, items: list[ScoreItem], config: RewardsConfig = MATH_REWARDS) -> dict:
    tasks = sorted({item.task for item in items})
    with RewardPool(config, PoolConfig(workers=workers, timeout_s=30.0), tasks=tasks) as pool:
        pool.score_batch(items[:4 * workers])  # warm-up: every worker started and its first items scored
        start = time.perf_counter()
        results = pool.score_batch(items)
        seconds = time.perf_counter() - start
    ok = sum(r.status == "ok" for r in results)
    return {"workers": workers, "items": len(items), "seconds": round(seconds, 3),
            "verifications_per_s": round(len(items) / seconds, 1), "ok": ok,
            "reward_mean": round(sum(r.rewards[config.names[0]] for r in results) / len(results), 3)}


def scaling(prefix: str, rates: dict, workers: Sequence[int]) -> dict:
    """`{prefix}_scaling`: the rate with the most workers over the rate with the fewest ("N vs 1 workers"), in
    whatever order --workers lists them (until 2026-12-05 the last listed over the first: `--workers 4,1` read 0.25
    for 4x); null with the reason in `{prefix}_scaling_unmeasured` where the fewest workers' rate is 0 (rounded:
    items slower than 20 s each). It was NaN there: invalid JSON, and `nanx` on the console."""
    fewest, most = rates[str(min(workers))], rates[str(max(workers))]
    if fewest:
        return {f"{prefix}_scaling": most / fewest}
    return {f"{prefix}_scaling": None, f"{prefix}_scaling_unmeasured": f"the {min(workers)}-worker rate is "
            f"{fewest} verifications/s (rounded to 0.1): no ratio over it"}


def pool_figures(items: int, workers: Sequence[int]) -> dict:
    """`pool_verifications_per_s` {workers: rate} (JSON keys are strings) and the N-vs-1 scaling."""
    batch = make_items(items)
    rates = {str(w): measure(w, batch)["verifications_per_s"] for w in workers}
    return {"pool_items": items, "pool_verifications_per_s": rates, **scaling("pool", rates, workers)}


def code_figures(items: int, workers: Sequence[int]) -> dict:
    """`code_verifications_per_s` {workers: rate} (one verification: a program against all its tests) and
    the N-vs-1 scaling; None with the reason in `code_sandbox` where the sandbox does not work here."""
    batch = make_code_items(items)
    try:
        rates = {str(w): measure(w, batch, CODE_REWARDS)["verifications_per_s"] for w in workers}
    except UserError as err:
        return {"code_items": items, "code_verifications_per_s": None, "code_scaling": None,
                "code_sandbox": str(err)}
    return {"code_items": items, "code_verifications_per_s": rates, "code_sandbox": "bwrap",
            **scaling("code", rates, workers)}
