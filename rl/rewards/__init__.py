"""Rule-based rewards (DeepSeek-R1 / DAPO) and the host-side worker pool that scores them.

    config = RewardsConfig(names=("accuracy", "format"), weights=(1.0, 1.0))
    item = ScoreItem(prompt="Compute 3+4", completion="<think> 3+4=7. </think> <answer> 7 </answer>",
                     reference="7", task="arithmetic")
    score_item(item, config)                 # {"accuracy": 1.0, "format": 1.0}, in this process
    with RewardPool(config, PoolConfig(workers=2, timeout_s=5)) as pool:
        results = pool.score_batch([item])   # [ScoreResult(rewards=..., total=2.0, status="ok", ...)]

The trainer uses the pool, never `score_item` directly: model text is only parsed inside killable worker
processes, and only through r1jax's own bounded parsers or math-verify's LaTeX grammar.
"""

from r1jax.rl.rewards.code import CODE_STATUSES, extract_program
from r1jax.rl.rewards.config import LANGUAGE_SCRIPTS, CodeConfig, PoolConfig, RewardsConfig
from r1jax.rl.rewards.extract import extract_answer, split_completion
from r1jax.rl.rewards.functions import REWARDS, ScoreItem, combine, register_reward, score_item
from r1jax.rl.rewards.pool import STATUSES, BatchHandle, RewardPool, ScoreResult

__all__ = ["CODE_STATUSES", "LANGUAGE_SCRIPTS", "REWARDS", "STATUSES", "BatchHandle", "CodeConfig",
           "PoolConfig", "RewardPool", "extract_program",
           "RewardsConfig", "ScoreItem", "ScoreResult", "combine", "extract_answer",
           "register_reward", "score_item", "split_completion"]
