"""The SFT stages: supervised fine-tuning (cold start, or on a rejection-sampling stage's dataset) and
distillation (SFT of a fresh student on a teacher's samples)."""

from __future__ import annotations

import dataclasses
import time


from r1jax.errors import UserError
from r1jax.rl.data import make_iterator
from r1jax.rl.train.config import StageConfig
from r1jax.rl.train.context import StageContext, StageResult, StageStart
from r1jax.rl.train.sft import check_sft_lengths, make_sft_step, sequence_buckets, sft_batch
from r1jax.rl.train.run_layout import dataset_path
from r1jax.rl.train.stage_rejection import is_kept_dataset
from r1jax.rl.train.update_stage import UpdateStage


def run_sft(ctx: StageContext, index: int, stage: StageConfig, start: StageStart,
            data_path: str | None = None) -> StageResult:
    """SFT on `data_path` (a JSONL/Parquet of prompt/solution rows), else `stage.data_path` (a file or an
    earlier rejection_sampling stage's name), else the tasks' worked solutions (the training problems)."""
    cfg = ctx.config
    if data_path is None and stage.data_path:
        data_path = stage_data_path(ctx, stage.data_path)
    data = _data_config(ctx, data_path)
    check_samples(ctx, stage, data_path)
    try:
        iterator = make_iterator(data, batch_size=stage.batch_size)
    except UserError as err:  # too few rows for one batch: name the stage, its data and the fix
        where = data_path or data.path or "the tasks' worked solutions"
        raise UserError(f"stage {stage.name} ({where}): {err}; lower "
                        f"stages[{stage.name}].batch_size or give it more rows") from None
    if start.resume is not None:  # before the weights are restored: a changed data file stops the resume
        iterator.set_state(start.resume["data_state"], stage=stage.name, checkpoint=checkpoint_dir(ctx, start))
    make_step = lambda g, opt, clip: make_sft_step(g, opt, cfg.update, ctx.model, clip)
    runner = UpdateStage(ctx, index, stage, start, with_ref=False, make_step=make_step)
    ctx.console.start_stage(stage.name, stage.steps, runner.stage_step)
    while runner.stage_step < stage.steps:
        step_start = time.time()
        rows = next(iterator)
        missing = [r["prompt"] for r in rows if not r.get("solution")]
        if missing:
            raise UserError(f"stage {stage.name}: SFT rows need a `solution`; none for prompt {missing[0]!r}")
        try:
            batch = sft_batch(ctx.tokenizer, cfg.tokenizer.template, rows, sequence_buckets(stage.max_sequence_length),
                              cfg.tokenizer.template_vars)
        except UserError as err:
            raise UserError(f"stage {stage.name}: {err}") from None
        batch = ctx.place(batch, runner.global_step + 1)
        metrics = runner.update(batch)
        tokens = float(metrics["token_count"])
        metrics = {("sft/loss" if k == "loss" else k): v for k, v in metrics.items()}
        runner.finish_step({**metrics, "tokens_per_s": tokens / max(time.time() - step_start, 1e-9)},
                           {"data_state": iterator.get_state()})
    return runner.finish_stage({"data_state": iterator.get_state()}, ctx.sampler(cfg.seed))


def run_distill(ctx: StageContext, index: int, stage: StageConfig, start: StageStart) -> StageResult:
    """SFT of the student (the trainer starts it fresh from `student_overrides`) on the teacher's samples."""
    return run_sft(ctx, index, stage, start, data_path=stage_data_path(ctx, stage.teacher))


def checkpoint_dir(ctx: StageContext, start: StageStart) -> str | None:
    """The directory of the checkpoint a stage resumes from (for messages)."""
    step = (start.resume or {}).get("checkpoint")
    return None if step is None else str(ctx.run_dir / "checkpoints" / str(step))


def check_samples(ctx: StageContext, stage: StageConfig, data_path: str | None) -> None:
    """When `data_path` is an earlier rejection_sampling stage's samples (written after preflight read the
    run's files), they fill one batch (every process draws the whole batch) and fit the largest SFT sequence
    bucket: checked as the stage starts, before training."""
    writer = _written_by(ctx, data_path)
    if writer is None:  # a user's file or the generated tasks: preflight checked them
        return
    cfg = ctx.config
    rows = _data_config(ctx, data_path).load_file(need_solution=True)
    if len(rows) < stage.batch_size:
        raise UserError(f"stage {stage.name}: {data_path} (datasets/{writer.name}.jsonl, the samples stage "
                        f"{writer.name} kept) holds {len(rows)} rows, fewer than one batch of "
                        f"stages[{stage.name}].batch_size={stage.batch_size}; "
                        f"lower stages[{stage.name}].batch_size and resume, or sample more in stage {writer.name} "
                        f"(steps, batch_size, samples_per_prompt; or keep more: reward_threshold, filters) in a new "
                        f"run")
    check_sft_lengths(ctx.tokenizer, cfg.tokenizer.template, rows, cfg.tokenizer.template_vars,
                      f"stage {stage.name}: {data_path}", path=data_path,
                      buckets=sequence_buckets(stage.max_sequence_length),
                      advice=f"stages[{writer.name}].max_new_tokens (default sampling.max_new_tokens) bounds the "
                             f"length of that stage's samples and it drops those that do not fit (rejection reason "
                             f"sft_length), but this file holds one (written under another template, or by an "
                             f"older r1jax): remove the row from the file and resume")


def _data_config(ctx: StageContext, path: str | None):
    """The data config reading `path`: a user's file through data.fields / data.answer_format, a file this
    run wrote (an earlier stage's samples) in r1jax's own field names; None: the run's data section."""
    if path is None:
        return ctx.config.data
    own = _written_by(ctx, path) is not None or is_kept_dataset(path)
    return ctx.config.data.for_own_file(path) if own else dataclasses.replace(ctx.config.data, path=path)


def _written_by(ctx: StageContext, path: str | None) -> StageConfig | None:
    """The rejection_sampling stage of this run whose dataset `path` is, or None (a user's file, or none)."""
    return next((s for s in ctx.config.stages
                 if s.kind == "rejection_sampling" and path == str(dataset_path(ctx.run_dir, s.name))), None)


def stage_data_path(ctx: StageContext, name_or_path: str) -> str:
    """An earlier rejection_sampling stage's dataset (by stage name) or a user's file."""
    if any(s.name == name_or_path for s in ctx.config.stages):
        return str(dataset_path(ctx.run_dir, name_or_path))
    return name_or_path
