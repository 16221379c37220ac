"""Held-out evaluation inside a run: figures (rl.evaluate) for a policy, its samples written to
`samples/<stage>-step<N>.jsonl`, TensorBoard and the console told. The entry it returns is what the run's
summary lists under `evals`."""

from __future__ import annotations

import pathlib

from r1jax.model.tokenizer import TokenizerLike
from r1jax.rl.config import Config
from r1jax.rl.evaluate import evaluate
from r1jax.rl.rewards import RewardPool
from r1jax.rl.sampler import Sampler
from r1jax.rl.train.console import RunConsole
from r1jax.rl.train.metrics import MetricsWriter
from r1jax.rl.train.run_layout import samples_name


class HeldOutEval:
    def __init__(self, config: Config, run_dir: pathlib.Path, primary: bool, tokenizer: TokenizerLike,
                 pool: RewardPool, metrics: MetricsWriter, console: RunConsole, problems: list[dict]):
        """`problems`: the held-out set (rl.evaluate.held_out_problems; the trainer's preflight builds it). The
        entries' checkpoint paths are absolute (a relative --run-dir's were relative to where the run started)."""
        self.config, self.run_dir, self.primary, self.tokenizer = config, run_dir.absolute(), primary, tokenizer
        self.pool, self.metrics, self.console, self.problems = pool, metrics, console, problems

    def __call__(self, stage_name: str, sampler: Sampler, policy, step: int, checkpointed: bool) -> dict:
        """Evaluate `policy`, the policy after global step `step`; returns the summary entry. Its `checkpoint`
        names the step's checkpoint directory, or is None when the run saves no checkpoint at that step
        (`checkpointed`: an evaluation between two of `checkpoint.every`'s saves)."""
        cfg = self.config
        figures, samples = evaluate(sampler, policy, self.tokenizer, cfg.tokenizer.template, self.problems,
                                    self.pool, cfg.eval, cfg.sampling.max_new_tokens, cfg.rewards.answer_max_chars,
                                    cfg.tokenizer.template_vars)
        checkpoint = str(self.run_dir / "checkpoints" / str(step)) if checkpointed else None
        entry = {"stage": stage_name, "checkpoint": checkpoint, "step": step, **figures}
        self.metrics.write_samples(samples_name(stage_name, step), samples)  # whole or not at all; primary only
        self.metrics.log_eval(entry)
        k = figures["k"]
        cons = f"cons@{k} {figures[f'cons@{k}']:.3f}, " if k > 1 else ""  # (cons@1 is pass@1)
        self.console.log(f"eval after {stage_name} step {step}: pass@1 {figures['pass@1']:.3f}, "
                         f"{cons}format {figures['format_rate']:.2f}, "
                         f"length {figures['response_length']:.1f}")
        return entry
