"""Stage runners: what each `kind` of stage does, sharing one update-stage scaffold.

A runner is `run(trainer, index, stage, resume_meta)`; `resume_meta` is the checkpoint's meta when the run
resumes inside this stage (None otherwise).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp

from r1jax.errors import UserError
from r1jax.rl.data import make_iterator
from r1jax.rl.grpo.optimizer import lr_schedule, make_optimizer
from r1jax.rl.train.config import StageConfig
from r1jax.rl.train.sft import make_sft_step, sft_batch
from r1jax.rl.update import TrainState, split_policy

SEQUENCE_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)


class UpdateStage:
    """Optimizer, sharded TrainState and the jitted step of a stage that trains (sft, grpo, distill)."""

    def __init__(self, trainer, index: int, stage: StageConfig, resume: dict | None, with_ref: bool,
                 make_step):
        cfg = trainer.config
        self.trainer, self.index, self.stage = trainer, index, stage
        opt_cfg = cfg.optimizer
        if stage.lr is not None:
            opt_cfg = dataclasses.replace(opt_cfg, lr=stage.lr)
        if opt_cfg.schedule == "warmup_cosine" and opt_cfg.total_steps is None:
            opt_cfg = dataclasses.replace(opt_cfg, total_steps=max(stage.steps, opt_cfg.warmup_steps + 1))
        self.opt_cfg, self.schedule = opt_cfg, lr_schedule(opt_cfg)
        self.optimizer = make_optimizer(opt_cfg)
        params, bias = trainer.policy
        ref = (jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, bias)) if with_ref else None
        state = TrainState(params, bias, self.optimizer.init(params), jnp.zeros([], jnp.int32), ref)
        self.shardings = trainer.shardings_of(state)
        # a jitted copy lays the state out on the mesh in distinct buffers (the step donates them)
        state = jax.jit(lambda s: jax.tree.map(jnp.copy, s), out_shardings=self.shardings)(state)
        self.stage_step = 0
        if resume is not None:
            state = self._restore(state, resume)
            self.stage_step = int(resume["stage_step"])
        self.state = state
        step = make_step(trainer.graphdef, self.optimizer, opt_cfg.grad_clip_norm)
        self.step_fn = jax.jit(step, out_shardings=(self.shardings, None), donate_argnums=0)

    def _restore(self, state: TrainState, meta: dict) -> TrainState:
        targets = {"opt_state": _abstract(state.opt_state)}
        if state.ref is not None:
            targets["ref"] = self.trainer._abstract_policy_state()[2]
        restored = self.trainer.restore_trees(meta["checkpoint"], targets)
        ref = state.ref
        if state.ref is not None:
            ref = self.trainer.split_policy_dict(restored["ref"])
        return state.replace(opt_state=restored["opt_state"], ref=ref,
                             step=jnp.asarray(meta["stage_step"], jnp.int32))

    def update(self, batch: dict, iterations: int = 1) -> dict:
        for _ in range(iterations):
            self.state, metrics = self.step_fn(self.state, batch)
        self.trainer.policy = (self.state.params, self.state.bias)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        metrics["lr"] = float(self.schedule(self.stage_step))
        if metrics["consecutive_skips"] >= self.opt_cfg.max_consecutive_skips:
            raise UserError(f"stage {self.stage.name}: {int(metrics['consecutive_skips'])} consecutive "
                            f"non-finite updates (optimizer.max_consecutive_skips="
                            f"{self.opt_cfg.max_consecutive_skips}); halting at step {self.stage_step + 1} "
                            f"without applying them: the latest checkpoint holds the last good state; lower "
                            f"the learning rate or check the data")
        return metrics

    def trees(self) -> dict:
        trees = {"opt_state": self.state.opt_state}
        if self.state.ref is not None:
            trees["ref"] = self.trainer.policy_state(*self.state.ref)
        return trees

    def finish_step(self, row: dict, extra_meta: dict) -> None:
        """Count the step, write its metrics, checkpoint when due or when a stop was requested."""
        trainer = self.trainer
        self.stage_step += 1
        trainer.global_step += 1
        row = trainer.write_metrics({"global_step": trainer.global_step, "step": self.stage_step,
                                     "stage": self.stage.name, **row})
        trainer.console.update(self.stage_step, row)
        due = self.stage_step % trainer.config.checkpoint.every == 0
        # a stop in the stage's last step saves it too: the resumed run then only evaluates and closes the stage
        if (due and self.stage_step < self.stage.steps) or trainer.stop:
            trainer.save(self.index, self.stage, self.stage_step, self.trees(), extra_meta, stage_done=False)
        if trainer.stop:
            trainer.checkpointer.wait()
            from r1jax.rl.train.trainer import Stopped

            raise Stopped()

    def finish_stage(self, extra_meta: dict, sampler) -> None:
        trainer = self.trainer
        trainer.console.end_stage()
        entry = trainer.run_eval(self.stage, sampler, trainer.policy)
        trainer.save(self.index, self.stage, self.stage_step, {}, extra_meta, stage_done=True,
                     metrics={"eval/pass@1": entry["pass@1"]})


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def run_sft(trainer, index: int, stage: StageConfig, resume: dict | None, data_path: str | None = None) -> None:
    """SFT on `data_path` (a JSONL/Parquet of prompt/solution rows), else `stage.data_path` (a file or an
    earlier rejection_sampling stage's name), else the tasks' worked solutions (the training problems)."""
    cfg = trainer.config
    data_path = data_path or (stage_data_path(trainer, stage.data_path) if stage.data_path else cfg.data.path)
    data = dataclasses.replace(cfg.data, path=data_path)
    iterator = make_iterator(data, batch_size=stage.batch_size)
    model = trainer.model_config
    make_step = lambda g, opt, clip: make_sft_step(g, opt, cfg.update, model, clip)
    runner = UpdateStage(trainer, index, stage, resume, with_ref=False, make_step=make_step)
    if resume is not None:
        iterator.set_state(resume["data_state"])
    trainer.console.start_stage(stage.name, stage.steps, runner.stage_step)
    while runner.stage_step < stage.steps:
        start = time.time()
        rows = next(iterator)
        missing = [r["prompt"] for r in rows if not r.get("solution")]
        if missing:
            raise UserError(f"stage {stage.name}: SFT rows need a `solution`; none for prompt {missing[0]!r}")
        batch = trainer.place_batch(sft_batch(trainer.tokenizer, cfg.tokenizer.template, rows, SEQUENCE_BUCKETS))
        metrics = runner.update(batch)
        tokens = float(metrics["token_count"])
        metrics = {("sft/loss" if k == "loss" else k): v for k, v in metrics.items()}
        runner.finish_step({**metrics, "tokens_per_s": tokens / max(time.time() - start, 1e-9)},
                           {"data_state": iterator.get_state()})
    runner.finish_stage({"data_state": iterator.get_state()}, trainer.sampler(cfg.seed))


def _grpo(trainer, index, stage, resume):
    from r1jax.rl.train.stage_grpo import run_grpo

    return run_grpo(trainer, index, stage, resume)


def _rejection_sampling(trainer, index, stage, resume):
    from r1jax.rl.train.stage_rejection import run_rejection_sampling

    return run_rejection_sampling(trainer, index, stage, resume)


def _distill(trainer, index, stage, resume):
    """SFT of the student (the trainer starts it fresh from `student_overrides`) on the teacher's samples."""
    return run_sft(trainer, index, stage, resume, data_path=stage_data_path(trainer, stage.teacher))


def stage_data_path(trainer, name_or_path: str) -> str:
    """An earlier rejection_sampling stage's dataset (by stage name) or a user's file."""
    from r1jax.rl.train.stage_rejection import dataset_path

    if any(s.name == name_or_path for s in trainer.config.stages):
        return str(dataset_path(trainer.run_dir, name_or_path))
    return name_or_path


STAGE_RUNNERS = {"sft": run_sft, "grpo": _grpo, "rejection_sampling": _rejection_sampling, "distill": _distill}
