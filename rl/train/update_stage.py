"""The scaffold of a stage that trains (sft, grpo, distill): optimizer, sharded TrainState, the jitted step,
step accounting, checkpoints, the stage's evaluations and its result."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from r1jax.errors import UserError, out_of_memory
from r1jax.rl.grpo.optimizer import applied_updates, lr_schedule, make_optimizer
from r1jax.rl.sampler import Sampler
from r1jax.rl.train.config import StageConfig
from r1jax.rl.train.context import StageContext, StageResult, StageStart, Stopped, summary_with
from r1jax.rl.train.policy_io import abstract_policy_state, policy_from_state, policy_state
from r1jax.rl.update import TrainState
from r1jax.sharding.params import abstract_sharded, tree_shardings


class UpdateStage:
    """`make_step(graphdef, optimizer, grad_clip_norm)` builds the stage's update step (rl.update).
    `updates_per_step`: the optimizer updates a stage step applies (GRPO's mu, `grpo.num_iterations`); the
    learning-rate schedule counts updates, so its default end (`optimizer.total_steps` unset) is the stage's
    steps times that."""

    def __init__(self, ctx: StageContext, index: int, stage: StageConfig, start: StageStart, with_ref: bool,
                 make_step: Callable, updates_per_step: int = 1):
        self.ctx, self.index, self.stage, self.start = ctx, index, stage, start
        opt_cfg = ctx.config.optimizer
        if stage.lr is not None:
            opt_cfg = dataclasses.replace(opt_cfg, lr=stage.lr)
        if opt_cfg.schedule == "warmup_cosine" and opt_cfg.total_steps is None:
            updates = stage.steps * updates_per_step
            opt_cfg = dataclasses.replace(opt_cfg, total_steps=max(updates, opt_cfg.warmup_steps + 1))
        self.opt_cfg, self.schedule = opt_cfg, lr_schedule(opt_cfg)
        self.optimizer = make_optimizer(opt_cfg)

        def fresh_state(params, bias):
            ref = (params, bias) if with_ref else None
            state = TrainState(params, bias, self.optimizer.init(params), jnp.zeros([], jnp.int32), ref)
            return jax.tree.map(jnp.copy, state)  # distinct buffers, none the input's: the step donates them

        # one program builds the whole state on the mesh: the optimizer's moments are born sharded (not whole
        # on one device, then moved), and no leaf costs an eager op (28 of them for a tiny run's two stages)
        self.shardings = tree_shardings(jax.eval_shape(fresh_state, *start.policy), ctx.mesh, ctx.rules)
        state = jax.jit(fresh_state, out_shardings=self.shardings)(*start.policy)
        self.stage_step, self.global_step = 0, start.global_step
        self.evals: list[dict] = []
        if start.resume is not None:
            state = self._restore(state, start.resume)
            self.stage_step = int(start.resume["stage_step"])
        self.state = state
        step = make_step(ctx.graphdef, self.optimizer, opt_cfg.grad_clip_norm)
        self.step_fn = jax.jit(step, out_shardings=(self.shardings, None), donate_argnums=0)

    def _restore(self, state: TrainState, meta: dict) -> TrainState:
        ctx = self.ctx
        targets = {"opt_state": abstract_sharded(state.opt_state, ctx.mesh, ctx.rules)}
        if state.ref is not None:
            targets["ref"] = abstract_policy_state(ctx.model, ctx.mesh, ctx.rules)[2]
        if state.ref is not None and not ctx.checkpoints.has_tree(meta["checkpoint"], "ref"):
            # saved under grpo.kl_coef 0 (no reference kept), resumed with a KL term: the resumed policy is the
            # reference from here, as a reference reset (grpo.ref_reset_every) would make it
            del targets["ref"]
            ctx.console.log(f"checkpoint {meta['checkpoint']} holds no reference policy (its run had no KL term): "
                            "the KL reference starts from the resumed policy")
        restored = ctx.checkpoints.restore_trees(meta["checkpoint"], targets)
        ref = state.ref
        if "ref" in restored:
            ref = policy_from_state(restored["ref"], ctx.model, ctx.mesh, ctx.rules)
        return state.replace(opt_state=restored["opt_state"], ref=ref,
                             step=jnp.asarray(meta["stage_step"], jnp.int32))

    @property
    def policy(self) -> tuple:
        """(params, bias) of the policy as trained so far."""
        return self.state.params, self.state.bias

    def update(self, batch: dict, iterations: int = 1, meanwhile: Callable[[], None] | None = None) -> dict:
        """`iterations` steps on `batch`, their last metrics. `meanwhile()` runs on the host once they are
        dispatched, before their metrics are waited for (GRPO finishes a batch its own sampler devices
        generated: rl.train.stage_grpo)."""
        try:
            for _ in range(iterations):
                self.state, metrics = self.step_fn(self.state, batch)
            if meanwhile is not None:
                meanwhile()
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        except (jax.errors.JaxRuntimeError, MemoryError) as err:
            if not out_of_memory(err):
                raise
            raise self._ran_out_of_memory(err, batch) from None
        # the rate of the step's last applied update (the schedule counts applied updates: mu a GRPO step, none
        # for a skipped one)
        metrics["lr"] = float(self.schedule(max(int(applied_updates(self.state.opt_state)) - 1, 0)))
        if metrics["consecutive_skips"] >= self.opt_cfg.max_consecutive_skips:
            raise UserError(f"stage {self.stage.name}: {int(metrics['consecutive_skips'])} consecutive "
                            f"non-finite updates (optimizer.max_consecutive_skips="
                            f"{self.opt_cfg.max_consecutive_skips}); halting at step {self.stage_step + 1} "
                            f"without applying them: the latest checkpoint holds the last good state; lower "
                            f"the learning rate or check the data")
        return metrics

    def _ran_out_of_memory(self, err: Exception, batch: dict) -> UserError:
        """The update step's device (or, on CPUs, host) memory ran out (XLA's RESOURCE_EXHAUSTED, raised at
        the step or when its metrics are read): what to lower, and that the latest checkpoint is intact."""
        stage, micro = self.stage, self.ctx.config.update.micro_batches
        rows, tokens = (batch["tokens"].shape if "tokens" in batch else ("?", "?"))
        if stage.kind == "grpo":
            lower = "grpo.prompts_per_step or grpo.group_size (the rows), or sampling.max_new_tokens"
        else:
            lower = (f"stages[{stage.name}].batch_size (the rows) or max_sequence_length (the longest row's "
                     f"tokens: longer rows are then refused)")
        latest = self.ctx.checkpoints.latest_step()
        saved = ("the run has no checkpoint yet: it starts over" if latest is None else
                 f"the latest checkpoint (step {latest}) is intact: the run resumes from it, at the same data row "
                 "under another batch size")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return UserError(f"stage {stage.name}: the update step ran out of memory at stage step {self.stage_step + 1} "
                         f"on a batch of {rows} rows x {tokens} tokens ({first[:200]}); raise update.micro_batches "
                         f"(now {micro}; each forward holds rows / micro_batches) or lower {lower}; {saved}")

    def evaluate(self, sampler: Sampler, step: int) -> dict:
        """Held-out evaluation of the current policy, the policy after global step `step` (this stage's
        current step, or the next one while that step is being finished)."""
        stage_step = self.stage_step + step - self.global_step
        entry = self.ctx.evaluate(self.stage.name, sampler, self.policy, step,
                                  checkpointed=stage_step == self.stage.steps or self._save_due(stage_step))
        self.evals.append(entry)
        return entry

    def result(self) -> StageResult:
        return StageResult(self.policy, self.global_step, tuple(self.evals))

    def _trees(self) -> dict:
        trees = {"opt_state": self.state.opt_state}
        if self.state.ref is not None:
            trees["ref"] = policy_state(self.ctx.graphdef, *self.state.ref)
        return trees

    def _save(self, extra_meta: dict, stage_done: bool, trees: dict, metrics: dict | None = None) -> None:
        self.ctx.checkpoints.save(self.index, self.stage, graphdef=self.ctx.graphdef, policy=self.policy,
                                  global_step=self.global_step, stage_step=self.stage_step,
                                  summary=summary_with(self.start.summary, self.evals), stage_done=stage_done,
                                  trees=trees, extra_meta=extra_meta, metrics=metrics)

    def finish_step(self, row: dict, extra_meta: dict, saved_with: Callable[[], tuple[dict, dict]] | None = None
                    ) -> None:
        """Count the step, write its metrics, checkpoint when due or when a stop was requested.
        `saved_with()` gives more (trees, meta) for that checkpoint (GRPO's rollouts sampled ahead)."""
        ctx = self.ctx
        ctx.checkpoints.raise_failed_save()  # an earlier save that failed stops the run here, not at the next save
        self.stage_step += 1
        self.global_step += 1
        row = ctx.metrics.write({"global_step": self.global_step, "step": self.stage_step, "stage": self.stage.name,
                                 **row})
        ctx.console.update(self.stage_step, row)
        # a stop in the stage's last step saves it too: the resumed run then only evaluates and closes the stage
        if self._save_due(self.stage_step) or ctx.stop.requested(self.global_step):
            trees, meta = self._trees(), dict(extra_meta)
            if saved_with is not None:
                more_trees, more_meta = saved_with()
                trees, meta = {**trees, **more_trees}, {**meta, **more_meta}
            self._save(meta, stage_done=False, trees=trees)
        if ctx.stop.requested(self.global_step):
            ctx.checkpoints.wait()
            raise Stopped(self.result())

    def _save_due(self, stage_step: int) -> bool:
        """A periodic checkpoint at this stage step (the stage's last step is saved by finish_stage)."""
        return stage_step % self.ctx.config.checkpoint.every == 0 and stage_step < self.stage.steps

    def finish_stage(self, extra_meta: dict, sampler: Sampler) -> StageResult:
        """Evaluate the stage's final policy and checkpoint it as done."""
        self.ctx.console.end_stage()
        entry = self.evaluate(sampler, self.global_step)
        self._save(extra_meta, stage_done=True, trees={}, metrics={"eval/pass@1": entry["pass@1"]})
        return self.result()
