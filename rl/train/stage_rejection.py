"""The rejection-sampling stage (R1 §2.3.3): K completions per prompt from the current policy; keep the correct
ones whose reward reaches the threshold and that pass the readability filters (rl.train.filters) and fit SFT's
largest sequence bucket (reason `sft_length`: the SFT stage reading them refuses a longer row); write an SFT
set and its statistics.

Output, in the run directory: `datasets/<stage>.jsonl` (rows `task`, `prompt`, `answer`, `solution`,
`difficulty`, `reward`: what `sft`/`distill` stages and `data.path` read) and `datasets/<stage>.stats.json`
(candidates, kept, kept rate overall / per task / per difficulty, rejections by reason). Both are written
once, at the end, through a temporary file: an interrupted stage leaves no partial dataset and reruns from
its first round on resume (the sampler seed makes the rerun identical). Duplicate (prompt, solution) pairs
are kept once. The policy does not change: the stage's checkpoint repeats the previous stage's weights.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
from typing import Sequence

import rich.markup

from r1jax.errors import UserError
from r1jax.files import write_atomically
from r1jax.rl.data import make_iterator
from r1jax.rl.train.config import DEFAULT_MAX_SEQUENCE_LENGTH, StageConfig
from r1jax.rl.train.context import StageContext, StageResult, StageStart, Stopped, summary_with
from r1jax.rl.train.filters import rejection_reason
from r1jax.rl.train.rollouts import reward_metrics, sample_and_submit
from r1jax.rl.train.run_layout import dataset_path, stats_path
from r1jax.rl.train.sft import fits_sft, sequence_buckets

SFT_LENGTH = "sft_length"  # the rejection reason of a sample longer than SFT's largest sequence bucket


def kept_length(stages: Sequence[StageConfig], name: str) -> int:
    """The longest sequence a kept sample may make: the shortest max_sequence_length of the stages that train on
    stage `name`'s samples (a row one of them cannot take stopped it at its start, after the whole sampling)."""
    return min((r.max_sequence_length for r in readers(stages, name)), default=DEFAULT_MAX_SEQUENCE_LENGTH)


def readers(stages: Sequence[StageConfig], name: str) -> list[StageConfig]:
    """The sft (`data_path`) and distill (`teacher`) stages that train on rejection_sampling stage `name`'s
    samples."""
    return [s for s in stages if (s.kind == "sft" and s.data_path == name) or (s.kind == "distill" and
                                                                              s.teacher == name)]


def is_kept_dataset(path: str | pathlib.Path | None) -> bool:
    """Is `path` a rejection_sampling stage's dataset (this run's or another's: `NAME.jsonl` beside the
    `NAME.stats.json` it writes), in r1jax's own field names, which a run's `data.fields` mapping must not be
    applied to (a GSM8K-mapped run distilling from another run's samples found no 'question' field)?"""
    if path is None or not str(path).endswith(".jsonl"):
        return False
    try:
        return {"candidates", "kept"} <= set(json.loads(stats_path(path).read_text()))
    except (OSError, ValueError, TypeError):
        return False


class KeptSet:
    """Kept samples and the counts behind the statistics."""

    def __init__(self):
        self.rows, self.seen = [], set()
        self.candidates = collections.Counter()  # by ("task", name) / ("difficulty", level)
        self.kept = collections.Counter()
        self.reasons = collections.Counter()

    def add(self, problem: dict, text: str, total: float, reason: str | None) -> bool:
        groups = [("task", problem["task"]), ("difficulty", str(problem.get("difficulty", 0)))]
        self.candidates.update(groups)
        key = (problem["prompt"], text.strip())
        if reason is None and key in self.seen:
            reason = "duplicate"
        if reason is not None:
            self.reasons[reason] += 1
            return False
        self.seen.add(key)
        self.kept.update(groups)
        self.rows.append({"task": problem["task"], "prompt": problem["prompt"], "answer": str(problem["answer"]),
                          "solution": text.strip(), "difficulty": problem.get("difficulty", 0), "reward": total,
                          **{k: problem[k] for k in ("tests", "entry_point") if k in problem}})  # code rows
        return True

    def stats(self) -> dict:
        total = sum(v for (kind, _), v in self.candidates.items() if kind == "task")
        by = lambda kind: {name: {"candidates": n, "kept": self.kept[(kind, name)],
                                  "kept_rate": self.kept[(kind, name)] / n}
                           for (k, name), n in sorted(self.candidates.items()) if k == kind}
        return {"candidates": total, "kept": len(self.rows), "kept_rate": len(self.rows) / max(total, 1),
                "by_task": by("task"), "by_difficulty": by("difficulty"), "rejected": dict(self.reasons)}


def run_rejection_sampling(ctx: StageContext, index: int, stage: StageConfig, start: StageStart) -> StageResult:
    """Never checkpointed mid-stage (`start.resume` is unused): a resumed run reruns it from the first round."""
    cfg = ctx.config
    data = dataclasses.replace(cfg.data, path=stage.data_path or cfg.data.path)
    iterator = make_iterator(data, batch_size=stage.batch_size)
    sampler = ctx.sampler(cfg.seed * 1000 + index)
    budget = stage.new_tokens(cfg.sampling.max_new_tokens)
    temperature = cfg.sampling.temperature if stage.temperature is None else stage.temperature
    kept, k, global_step = KeptSet(), stage.samples_per_prompt, start.global_step
    sft_buckets = sequence_buckets(kept_length(cfg.stages, stage.name))
    ctx.console.start_stage(stage.name, stage.steps, 0)
    for round_index in range(stage.steps):
        sampled = sample_and_submit(sampler, start.policy, ctx.tokenizer, cfg.tokenizer.template, next(iterator),
                                    ctx.pool, k, cfg.tokenizer.template_vars, temperature=temperature,
                                    max_new_tokens=budget)
        results = ctx.pool.collect(sampled.pending)
        before = len(kept.rows)
        for row, (item, result) in enumerate(zip(sampled.items, results)):
            problem = sampled.problems[row // k]
            reason = rejection_reason(item, result.total, result.status, scores=result.rewards,
                                      threshold=stage.reward_threshold, filters=stage.filters,
                                      max_repetition=stage.max_repetition, rewards=cfg.rewards,
                                      max_paragraph_words=stage.max_paragraph_words,
                                      correct_only=stage.correct_only)
            if reason is None and not fits_sft(
                    ctx.tokenizer, cfg.tokenizer.template,
                    {"prompt": problem["prompt"], "solution": sampled.texts[row].strip()}, cfg.tokenizer.template_vars,
                    sft_buckets):
                reason = SFT_LENGTH  # a row SFT would refuse (longer than its largest sequence bucket)
            kept.add(problem, sampled.texts[row], result.total, reason)
        global_step += 1
        candidates = len(sampled.items)
        row = ctx.metrics.write({"global_step": global_step, "step": round_index + 1, "stage": stage.name,
                                 **reward_metrics(results, cfg.rewards.names), "rs/candidates": candidates,
                                 "rs/kept": len(kept.rows) - before,
                                 "rs/kept_rate": (len(kept.rows) - before) / candidates})
        ctx.console.update(round_index + 1, row)
        # asked at every step's end, as the training stages ask (several processes agree on a stop at the first
        # step all can reach, and only a step asked about can be it); the last round's is asked once the stage
        # is saved, below
        if round_index + 1 < stage.steps and ctx.stop.requested(global_step):
            # nothing to save: the previous stage's checkpoint is where a resume starts
            raise Stopped(StageResult(start.policy, start.global_step))
    ctx.console.end_stage()
    stats = _write(ctx, stage, kept)
    if not kept.rows:
        raise UserError(f"stages[{stage.name}]: kept none of {stats['candidates']} samples (rejected by "
                        f"{stats['rejected']}); lower reward_threshold, relax filters or sample more"
                        + ("; `incorrect`: wrong answers (correct_only: false leaves them to the threshold)"
                           if "incorrect" in stats["rejected"] else ""))
    result = StageResult(start.policy, global_step, datasets=({"stage": stage.name, **stats},))
    ctx.console.log(f"{stage.name}: kept {stats['kept']} of {stats['candidates']} samples "
                    f"({stats['kept_rate']:.1%}) -> {stats['path']}")
    for reader in readers(cfg.stages, stage.name):
        if stats["kept"] < reader.batch_size:
            ctx.console.log(rich.markup.escape(
                f"warning: {stage.name} kept {stats['kept']} samples, fewer than one batch of stage {reader.name} "
                f"that trains on them (stages[{reader.name}].batch_size={reader.batch_size}): that stage will "
                f"fail; lower its batch_size (a resume keeps these samples), or sample more here (steps, "
                f"batch_size, samples_per_prompt) or keep more (reward_threshold, filters)"))
    ctx.checkpoints.save(index, stage, graphdef=ctx.graphdef, policy=start.policy, global_step=global_step,
                         stage_step=stage.steps, summary=summary_with(start.summary, datasets=result.datasets),
                         stage_done=True)
    if ctx.stop.requested(global_step):  # the stage is saved as done: a resume starts with the next one
        ctx.checkpoints.wait()
        raise Stopped(result)
    return result


def _write(ctx: StageContext, stage: StageConfig, kept: KeptSet) -> dict:
    path = dataset_path(ctx.run_dir, stage.name)
    stats = {"path": str(path), **kept.stats()}
    if ctx.primary:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, "".join(json.dumps(row) + "\n" for row in kept.rows))
        write_atomically(stats_path(path), json.dumps(stats, indent=2))
    return stats
