"""The figures of a bench run: their goals, the JSON object and the table.

Goals (issue #9): decode >= 5x HF generate, train-step MFU >= 50% (on the bench preset), MoE layer step at
64 experts <= 1.3x that at 8, decode step at cache position 1024 <= 2x that at 128; issue #18: a long-tail
rollout's generated tokens/s with continuous batching >= 3x the fixed batch's. The other figures are
reported without a goal. In the JSON every figure of `FIGURES` has a `goals` entry: `target` (e.g.
">= 5", or null) and `met` (true / false, or null without a goal or a value).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any


@dataclasses.dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str  # tokens/s, FLOP/s, x (a ratio), fraction, verifications/s
    goal: tuple[str, float] | None = None  # (">=" | "<=", target)

    @property
    def target(self) -> str | None:
        return None if self.goal is None else f"{self.goal[0]} {self.goal[1]:g}"

    def met(self, value: Any) -> bool | None:
        if self.goal is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        compare = operator.ge if self.goal[0] == ">=" else operator.le
        return bool(compare(value, self.goal[1]))


FIGURES = (
    Figure("prefill_tokens_per_s", "sampler prefill", "tokens/s"),
    Figure("decode_tokens_per_s", "sampler decode", "tokens/s"),
    Figure("decode_step_ratio_1024_vs_128", "decode step, position 1024 vs 128", "x", ("<=", 2.0)),
    Figure("longtail_speedup", "long-tail rollout, continuous vs fixed batch", "x", (">=", 3.0)),
    Figure("matmul_peak_flops", "matmul peak (measured)", "FLOP/s"),
    Figure("train_tokens_per_s", "GRPO train step", "tokens/s"),
    Figure("mfu", "train-step MFU", "fraction", (">=", 0.5)),
    Figure("grpo_generated_tokens_per_s", "GRPO step (sample, score, update)", "tokens/s"),
    Figure("staleness_speedup", "GRPO step, max_staleness 1 vs 0 (20 ms reward)", "x"),
    Figure("pool_verifications_per_s", "reward pool (workers: rate)", "verifications/s"),
    Figure("pool_scaling", "reward pool, N vs 1 workers", "x"),
    Figure("code_verifications_per_s", "code in the sandbox (workers: rate)", "verifications/s"),
    Figure("code_scaling", "code in the sandbox, N vs 1 workers", "x"),
    Figure("moe_step_ratio_64_vs_8", "MoE layer step, 64 vs 8 experts", "x", ("<=", 1.3)),
    Figure("hf_decode_tokens_per_s", "HF generate decode", "tokens/s"),
    Figure("hf_torch_threads", "HF torch threads (the faster of 1 and the default)", "threads"),
    Figure("decode_tokens_per_s_beside_hf", "sampler decode, timed in turns with HF", "tokens/s"),
    Figure("decode_speedup_vs_hf", "sampler decode vs HF generate (in turns)", "x", (">=", 5.0)),
)
CAPTION = ("MFU: 6 x active params x tokens + attention FLOPs (the whole T x T scores, as the model computes them: "
           "PaLM's count; halved for the causal mask, as MaxText counts, MFU is 3-4 points lower here), over the "
           "matmul peak measured in this run. "
           "MoE: same top-k and active params per token. HF: greedy generate of the same exported weights.")


def with_goals(result: dict) -> dict:
    """`result` plus its `goals` entry."""
    goals = {f.key: {"target": f.target, "met": f.met(result.get(f.key))} for f in FIGURES}
    return {**result, "goals": goals}


def format_value(value: Any, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v, unit)}" for k, v in value.items())
    if unit == "fraction":
        return f"{100 * value:.1f}%"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "FLOP/s":
        return f"{value / 1e9:,.1f} GFLOP/s"
    return f"{value:,.0f}"


def describe(result: dict) -> str:
    """One line on what the run was: preset, device, load."""
    device = result["device"]
    return (f"r1jax bench: preset {result['preset']}{' (quick)' if result['quick'] else ''}, "
            f"{device['local_devices']} x {device['device_kind']} ({device['backend']}), "
            f"{device['cpu_count']} CPUs ({device.get('cpu_vector_isa') or 'ISA unknown'}), "
            f"load average {device['load_average']} -> {device['load_average_end']}")


def render_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=describe(result), title_justify="left", caption=CAPTION, caption_justify="left")
    for column in ("figure", "value", "unit", "goal", "met"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for figure in FIGURES:
        value = result.get(figure.key)
        met = result["goals"][figure.key]["met"]
        mark = {True: "[green]yes[/green]", False: "[red]no[/red]", None: ""}[met]
        unit = "" if figure.unit in ("x", "fraction", "FLOP/s") else figure.unit
        goal = "—" if figure.goal is None else f"{figure.goal[0]} {format_value(figure.goal[1], figure.unit)}"
        table.add_row(figure.label, format_value(value, figure.unit), unit, goal, mark)
    Console().print(table)
