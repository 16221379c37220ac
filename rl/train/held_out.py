"""Held-out evaluation inside a run: figures (rl.evaluate) for a policy, its samples written to
`samples/<stage>-step<N>.jsonl`, TensorBoard and the console told. The entry it returns is what the run's
summary lists under `evals`."""

from __future__ import annotations

import json
import pathlib

from r1jax.model.tokenizer import TokenizerLike
from r1jax.rl.config import Config
from r1jax.rl.evaluate import evaluate
from r1jax.rl.rewards import RewardPool
from r1jax.rl.sampler import Sampler
from r1jax.rl.train.console import RunConsole
from r1jax.rl.train.metrics import MetricsWriter


class HeldOutEval:
    def __init__(self, config: Config, run_dir: pathlib.Path, primary: bool, tokenizer: TokenizerLike,
                 pool: RewardPool, metrics: MetricsWriter, console: RunConsole, problems: list[dict]):
        """`problems`: the held-out set (rl.evaluate.held_out_problems; the trainer's preflight builds it)."""
        self.config, self.run_dir, self.primary, self.tokenizer = config, run_dir, primary, tokenizer
        self.pool, self.metrics, self.console, self.problems = pool, metrics, console, problems

    def __call__(self, stage_name: str, sampler: Sampler, policy, step: int) -> dict:
        """Evaluate `policy`, the policy after global step `step`; returns the summary entry."""
        cfg = self.config
        figures, samples = evaluate(sampler, policy, self.tokenizer, cfg.tokenizer.template, self.problems,
                                    self.pool, cfg.eval, cfg.sampling.max_new_tokens, cfg.rewards.answer_max_chars,
                                    cfg.tokenizer.template_vars)
        entry = {"stage": stage_name, "checkpoint": str(self.run_dir / "checkpoints" / str(step)), "step": step,
                 **figures}
        if self.primary:
            out = self.run_dir / "samples"
            out.mkdir(exist_ok=True)
            with (out / f"{stage_name}-step{step}.jsonl").open("w") as f:
                for row in samples:
                    f.write(json.dumps(row) + "\n")
        self.metrics.log_eval(entry)
        k = figures["k"]
        self.console.log(f"eval after {stage_name} step {step}: pass@1 {figures['pass@1']:.3f}, "
                         f"cons@{k} {figures[f'cons@{k}']:.3f}, format {figures['format_rate']:.2f}, "
                         f"length {figures['response_length']:.1f}")
        return entry
