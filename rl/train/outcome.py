"""The run's headline: how much reinforcement learning moved held-out accuracy.

`rl_gain` compares the last evaluation before the first GRPO stage (the cold-start model) with that GRPO
stage's final evaluation: the figure DeepSeek-R1's story is about, written to `summary.json` as `rl_gain`
and printed as the console's last line.
"""

from __future__ import annotations

from typing import Sequence

from r1jax.rl.train.config import StageConfig


def rl_gain(evals: Sequence[dict], stages: Sequence[StageConfig]) -> dict | None:
    """{before_stage, before_pass@1, after_stage, after_pass@1, gain_points, format_rate} or None."""
    grpo = next((s.name for s in stages if s.kind == "grpo"), None)
    first = next((i for i, e in enumerate(evals) if e["stage"] == grpo), None)
    if first is None or first == 0:
        return None
    before = evals[first - 1]
    after = [e for e in evals if e["stage"] == grpo][-1]
    return {"before_stage": before["stage"], "before_pass@1": before["pass@1"], "after_stage": grpo,
            "after_pass@1": after["pass@1"], "gain_points": 100.0 * (after["pass@1"] - before["pass@1"]),
            "format_rate": after["format_rate"], "k": after["k"], "n_problems": after["n_problems"]}


def describe(gain: dict) -> str:
    return (f"GRPO moved held-out pass@1 from {gain['before_pass@1']:.3f} ({gain['before_stage']}) to "
            f"{gain['after_pass@1']:.3f} ({gain['after_stage']}): {gain['gain_points']:+.1f} points; format "
            f"{gain['format_rate']:.2f} ({gain['n_problems']} problems x {gain['k']} samples)")
