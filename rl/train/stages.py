"""What each `kind` of stage runs: `STAGE_RUNNERS[kind](ctx, index, stage, start) -> StageResult`
(rl.train.context says what a runner receives and returns)."""

from __future__ import annotations

from typing import Callable

from r1jax.rl.train.config import StageConfig
from r1jax.rl.train.context import StageContext, StageResult, StageStart
from r1jax.rl.train.stage_grpo import run_grpo
from r1jax.rl.train.stage_rejection import run_rejection_sampling
from r1jax.rl.train.stage_sft import run_distill, run_sft

StageRunner = Callable[[StageContext, int, StageConfig, StageStart], StageResult]

STAGE_RUNNERS: dict[str, StageRunner] = {"sft": run_sft, "grpo": run_grpo,
                                         "rejection_sampling": run_rejection_sampling, "distill": run_distill}
