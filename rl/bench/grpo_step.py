"""A whole GRPO step, as the trainer runs it: sample, score, update, and generated tokens per second.

The figure runs the config's stages (a GRPO stage; `configs/bench_qwen3.yaml` is the side-by-side workload
of `benchmarks/grpo_vs_trl.py`) through `Trainer` in a temporary run directory and reads its metric rows:
the first `warmup` steps compile and are dropped, the figures are the medians of the rest. Generated tokens
per second is per generated token (the sum of completion lengths over the step's wall time), so policies
whose end-of-sequence odds differ compare fairly. Parts: `sample` (encode, generate, decode), `score`
(the rest of the rollout: waiting for rewards, advantages, the batch placed on the devices) and `update`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import signal
import tempfile
from typing import Sequence

import numpy as np

from r1jax.errors import Interrupted, UserError
from r1jax.rl.config import Config, load_config
from r1jax.rl.train.console import RunConsole
from r1jax.rl.train.metrics import read_rows
from r1jax.rl.train.trainer import Trainer

KEYS = ("grpo_step_seconds", "grpo_sample_seconds", "grpo_score_seconds", "grpo_update_seconds",
        "grpo_generated_tokens", "grpo_generated_tokens_per_s", "grpo_steps_timed")


WORKLOAD = "bench_qwen3"  # the side-by-side workload's data, sampling, GRPO settings and stage


def side_by_side(config: Config, steps: int, max_new_tokens: int | None = None) -> Config:
    """`config`'s model, meshes (the trainer's and the sampler's layout: `sampling.layout`, `mesh`, `rules`)
    and seed on the side-by-side workload (configs/bench_qwen3.yaml), `steps` GRPO steps long."""
    overrides = [f"stages.0.steps={steps}"]
    if max_new_tokens is not None:
        overrides.append(f"sampling.max_new_tokens={max_new_tokens}")
    workload = load_config(WORKLOAD, overrides)
    sampling = dataclasses.replace(workload.sampling, layout=config.sampling.layout, mesh=config.sampling.mesh,
                                   rules=config.sampling.rules)
    return dataclasses.replace(workload, model=config.model, sharding=config.sharding, sampling=sampling,
                               seed=config.seed)


def grpo_rows(config: Config, run_dir: str | pathlib.Path) -> list[dict]:
    """The GRPO metric rows of `config`'s run in `run_dir` (the run is made there, quietly, drawing no plots:
    a draw between steps would be timed as part of one, and the run directory is thrown away)."""
    if not any(stage.kind == "grpo" for stage in config.stages):
        raise UserError("bench grpo_step: the config has no grpo stage")
    trainer = Trainer(dataclasses.replace(config, plots=False), run_dir, RunConsole(False))
    if "stopped_at_step" in trainer.run():  # a signal stopped it: its handler held SIGTERM/SIGINT meanwhile
        raise Interrupted(trainer.stop.signal or signal.SIGTERM)
    return [row for row in read_rows(pathlib.Path(run_dir) / "metrics.jsonl") if "time/update_s" in row]


def summarize_steps(rows: Sequence[dict], warmup: int) -> dict:
    """Medians over the rows after the first `warmup` (see the module docstring)."""
    timed = list(rows)[warmup:]
    if not timed:
        raise UserError(f"bench grpo_step: {len(rows)} GRPO steps leave none after {warmup} warm-up steps")
    median = lambda key: float(np.median([row[key] for row in timed]))
    step, sample, tokens = median("step_time_s"), median("time/sample_s"), median("generated_tokens")
    # each step's score part, then their median (the difference of two medians is no step's part: it can be < 0)
    score = float(np.median([row["time/rollout_s"] - row["time/sample_s"] for row in timed]))
    return {"grpo_step_seconds": step, "grpo_sample_seconds": sample, "grpo_score_seconds": score,
            "grpo_update_seconds": median("time/update_s"), "grpo_generated_tokens": tokens,
            "grpo_generated_tokens_per_s": float(np.median([row["generated_tokens"] / row["step_time_s"]
                                                            for row in timed])),
            "grpo_steps_timed": len(timed)}


def trl_step_figures(step_seconds: Sequence[float], mean_lengths: Sequence[float], rows: int, warmup: int) -> dict:
    """TRL's steps summarised as `summarize_steps` does r1jax's (benchmarks/grpo_vs_trl.py): each step's time and
    the mean completion length TRL logs for it (`completions/mean_length`), `rows` completions a step, the
    first `warmup` steps dropped; generated tokens/s the median of each step's rows x mean length over its time."""
    if len(step_seconds) != len(mean_lengths):
        raise UserError(f"bench grpo_vs_trl: {len(step_seconds)} timed TRL steps but {len(mean_lengths)} logged "
                        "completion lengths (logging_steps must be 1)")
    timed_s, timed_len = list(step_seconds)[warmup:], list(mean_lengths)[warmup:]
    if not timed_s:
        raise UserError(f"bench grpo_vs_trl: {len(step_seconds)} TRL steps leave none after {warmup} warm-up steps")
    return {"trl_step_seconds": float(np.median(timed_s)),
            "trl_generated_tokens": float(np.median(timed_len)) * rows,
            "trl_generated_tokens_per_s": float(np.median([n * rows / s for n, s in zip(timed_len, timed_s)])),
            "trl_steps_timed": len(timed_s)}


def grpo_step_figures(config: Config, warmup: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix="r1jax-bench-grpo-") as run_dir:
        return summarize_steps(grpo_rows(config, run_dir), warmup)
