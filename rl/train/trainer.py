"""The trainer: a run directory, its stages in order, exact resume, evaluation and the summary.

A run directory holds `config.yaml` (resolved), `tokenizer/`, `checkpoints/` (Orbax, see
rl.train.checkpointing), `metrics.jsonl`, `tensorboard/`, `plots/`, `samples/` and `summary.json`.
`Trainer(config, run_dir).run()` starts a new run or resumes from the latest checkpoint: a finished stage is
skipped, an unfinished one continues at the step after its checkpoint with the same optimizer state, RNG
key, data-iterator position and reference policy, so the resumed run is bit-for-bit the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax.errors import UserError
from r1jax.model.factory import abstract_policy, init_policy
from r1jax.model.tokenizer import Tokenizer
from r1jax.rl.config import Config, stage_config, to_yaml
from r1jax.rl.data import build_tokenizer
from r1jax.rl.evaluate import evaluate, held_out_problems
from r1jax.rl.rewards import RewardPool
from r1jax.rl.sampler import Sampler
from r1jax.rl.train.checkpointing import TrainCheckpointer, check_compatible
from r1jax.rl.train.config import StageConfig
from r1jax.rl.train.console import RunConsole
from r1jax.rl.train.metrics import MetricsWriter, truncate_after
from r1jax.rl.train.outcome import rl_gain
from r1jax.rl.train.preemption import StopRequest
from r1jax.rl.update import split_policy
from r1jax.sharding import distributed
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import build_mesh
from r1jax.sharding.params import tree_shardings
from r1jax.sharding.rules import Rules


@dataclasses.dataclass
class Position:
    """Where a run stands: the next stage to run and how far into it."""

    stage_index: int = 0
    stage_step: int = 0
    global_step: int = 0
    meta: dict | None = None  # the checkpoint's meta when resuming inside a stage


class Stopped(Exception):
    """Raised inside a stage after a SIGTERM/SIGINT checkpoint; the run exits cleanly."""


def _check_process_batches(config: Config, processes: int) -> None:
    """Stages ask the data pipeline for batch / process-count rows (rl.data.make_iterator): it must divide."""
    if processes == 1:
        return
    sizes = {"grpo.prompts_per_step": config.grpo.prompts_per_step}
    sizes.update({f"stages[{s.name}].batch_size": s.batch_size for s in config.stages if s.kind != "grpo"})
    for name, size in sizes.items():
        if size % processes:
            raise UserError(f"{name}={size} does not split over the {processes} processes of this run; make "
                            f"it a multiple of {processes}")


class Trainer:
    def __init__(self, config: Config, run_dir: str | pathlib.Path, console: RunConsole | None = None):
        self.config, self.run_dir = config, pathlib.Path(run_dir)
        self.primary = jax.process_index() == 0
        self.console = console or RunConsole(self.primary)
        self.mesh = build_mesh(config.sharding)
        self.rules = Rules.preset(config.sharding.preset, config.sharding.rules)
        _check_process_batches(config, jax.process_count())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.checkpointer = TrainCheckpointer(self.run_dir / "checkpoints", config.checkpoint.keep,
                                              config.checkpoint.keep_best, config.checkpoint.async_save)
        self.metrics = MetricsWriter(self.run_dir, self.primary, evals=lambda: self.summary["evals"])
        self.tokenizer = self._tokenizer()
        self.graphdef, self.policy = None, None  # (params, bias) of the current policy between stages
        self.stage_index = 0  # the stage running (its config may swap the model: distillation)
        self.summary: dict[str, Any] = {"evals": [], "stages": []}
        self._pool: RewardPool | None = None
        self._eval_problems: list[dict] | None = None
        self._model_configs: dict = {}  # stage index -> the ModelConfig of that stage's policy
        self.stop = StopRequest(step=lambda: self.global_step)  # agreed across processes per step
        self._batches_placed = 0

    # -- set-up ---------------------------------------------------------------------------------------
    def _tokenizer(self) -> Tokenizer:
        """Process 0 loads or trains the run's tokenizer and saves it; the other processes load that copy."""
        saved, tokenizer = self.run_dir / "tokenizer", None
        if self.primary:
            if (saved / "tokenizer.model").exists():
                tokenizer = Tokenizer.load(saved)
            else:
                tokenizer = build_tokenizer(self.config.tokenizer, self.config.data)
                tokenizer.save(saved)
        distributed.barrier("tokenizer", "the saved tokenizer (process 0 trains it)", timeout_s=3600)
        if tokenizer is None:
            tokenizer = Tokenizer.load(saved)
        if tokenizer.vocab_size > self.config.model.vocab_size:
            raise UserError(f"model.vocab_size={self.config.model.vocab_size} is smaller than the tokenizer's "
                            f"{tokenizer.vocab_size} pieces; raise model.vocab_size")
        return tokenizer

    @property
    def pool(self) -> RewardPool:
        if self._pool is None:
            self._pool = RewardPool(self.config.rewards, self.config.reward_pool)
        return self._pool

    @property
    def eval_problems(self) -> list[dict]:
        if self._eval_problems is None:
            self._eval_problems = held_out_problems(self.config.data, self.config.eval)
        return self._eval_problems

    @property
    def model_config(self):
        """The architecture of the current stage's policy (a distill stage's student from that stage on)."""
        if self.stage_index not in self._model_configs:
            self._model_configs[self.stage_index] = stage_config(self.config, self.stage_index).model
        return self._model_configs[self.stage_index]

    def sampler(self, seed: int) -> Sampler:
        return Sampler(self.graphdef, self.config.sampling, self.tokenizer.eos_id, self.tokenizer.pad_id, seed)

    # -- the run --------------------------------------------------------------------------------------
    def run(self) -> dict:
        self._write_config()
        position = self._resume_position()
        try:
            with self.stop, use_mesh(self.mesh, self.rules):
                for index, stage in enumerate(self.config.stages):
                    if index < position.stage_index:
                        continue
                    resume = position if index == position.stage_index else None
                    self._run_stage(index, stage, resume)
                    position = Position(index + 1, 0, self.global_step, None)
        except Stopped:
            latest = self.checkpointer.latest_step()  # a stop in a stage's last step has none of its own
            self.console.log(f"stopped by signal {self.stop.signal} at step {self.global_step}; latest checkpoint: "
                             f"{'none' if latest is None else f'step {latest}'}")
            self.summary["stopped_at_step"] = self.global_step
        except distributed.PeerLost:
            self.checkpointer = None  # closing waits for the lost peer in Orbax's barriers: leave it
            raise
        finally:
            if self.checkpointer is not None:
                self.checkpointer.close()
            self.metrics.close()
            if self._pool is not None:
                self._pool.close()
        self._write_summary()
        return self.summary

    def _write_config(self) -> None:
        if self.primary:
            (self.run_dir / "config.yaml").write_text(to_yaml(self.config))

    def _resume_position(self) -> Position:
        step = self.checkpointer.latest_step()
        if step is None:
            self.global_step = 0
            return Position()
        saved, meta = self.checkpointer.restore_config_and_meta(step)
        self.stage_index = int(meta["stage_index"])
        check_compatible(saved, stage_config(self.config, self.stage_index),
                         str(self.run_dir / "checkpoints" / str(step)))
        self.global_step = int(meta["global_step"])
        self.summary = meta.get("summary", self.summary)
        if self.primary:
            truncate_after(self.metrics.path, self.global_step)
        self.graphdef, params, bias = self._restore_policy(step)
        self.policy = (params, bias)
        self.console.log(f"resuming {self.run_dir} from step {self.global_step} (stage {meta['stage_name']})")
        if meta["stage_done"]:
            return Position(meta["stage_index"] + 1, 0, self.global_step, None)
        return Position(meta["stage_index"], meta["stage_step"], self.global_step, {**meta, "checkpoint": step})

    def _run_stage(self, index: int, stage: StageConfig, resume: Position | None) -> None:
        from r1jax.rl.train.stages import STAGE_RUNNERS

        self.stage_index = index
        if resume is None or resume.meta is None:
            self._enter_stage(stage)
        self.console.log(f"stage {index + 1}/{len(self.config.stages)}: {stage.name} ({stage.kind}, "
                         f"{stage.steps} steps)")
        STAGE_RUNNERS[stage.kind](self, index, stage, resume.meta if resume else None)
        self.summary["stages"].append({"name": stage.name, "kind": stage.kind, "end_step": self.global_step})

    def _enter_stage(self, stage: StageConfig) -> None:
        """The policy a stage starts from: `init_from`, else the previous stage's, else a fresh one."""
        model = self.model_config
        if self.tokenizer.vocab_size > model.vocab_size:
            raise UserError(f"stages[{stage.name}]: model.vocab_size={model.vocab_size} is smaller than the "
                            f"tokenizer's {self.tokenizer.vocab_size} pieces")
        if stage.init_from:
            self.graphdef, params, bias = self._load_init(stage.init_from)
        elif self.policy is None or stage.kind == "distill":  # a distilled student starts fresh
            policy = init_policy(model, self.config.seed + self.stage_index, self.mesh, self.rules)
            self.graphdef, params, bias = split_policy(policy)
        else:
            return
        self.policy = (params, bias)

    def _load_init(self, path: str):
        from r1jax.rl.checkpoint import load_policy

        location = pathlib.Path(path)
        if (location / "config.json").exists():
            from r1jax.rl.hf_policy import load_hf_policy

            config, policy = load_hf_policy(location, self.mesh, self.rules)
        else:
            config, policy = load_policy(location, self.mesh, self.rules)
        check_compatible(config, stage_config(self.config, self.stage_index), path)
        return split_policy(policy)

    # -- checkpoints ----------------------------------------------------------------------------------
    def policy_state(self, params, bias) -> dict:
        return nnx.to_pure_dict(nnx.state(nnx.merge(self.graphdef, params, bias)))

    def save(self, index: int, stage: StageConfig, stage_step: int, trees: dict, extra_meta: dict,
             stage_done: bool, metrics: dict | None = None) -> None:
        params, bias = self.policy
        meta = {"stage_index": index, "stage_name": stage.name, "stage_step": stage_step,
                "global_step": self.global_step, "stage_done": stage_done, "summary": self.summary,
                **extra_meta}
        trees = {"params": self.policy_state(params, bias), **trees}
        config = stage_config(self.config, index)  # a student's checkpoint opens as the student
        self.checkpointer.save(self.global_step, config, trees, meta, metrics)
        self._save_tokenizer_copy()

    def _save_tokenizer_copy(self) -> None:
        """Checkpoints carry their tokenizer so `r1jax generate/eval/export-hf` can open them unaided."""
        if self.primary:
            self.tokenizer.save(self.run_dir / "checkpoints" / "tokenizer")

    def _abstract_policy_state(self):
        graphdef, state = nnx.split(abstract_policy(self.model_config))
        shardings = tree_shardings(state, self.mesh, self.rules)
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                nnx.to_pure_dict(state), nnx.to_pure_dict(shardings))
        return graphdef, state, abstract

    def _restore_policy(self, step: int):
        abstract = self._abstract_policy_state()[2]
        restored = self.checkpointer.restore_trees(step, {"params": abstract})["params"]
        graphdef = split_policy(abstract_policy(self.model_config))[0]
        return (graphdef, *self.split_policy_dict(restored))

    def split_policy_dict(self, pure: dict):
        """(params, bias) States from a pure policy-state dict (as checkpoints store it)."""
        graphdef, state, _ = self._abstract_policy_state()
        nnx.replace_by_pure_dict(state, pure)
        _, params, bias = split_policy(nnx.merge(graphdef, state))
        return params, bias

    def restore_trees(self, step: int, targets: dict) -> dict:
        return self.checkpointer.restore_trees(step, targets)

    # -- helpers the stages share ---------------------------------------------------------------------
    def place_batch(self, batch: dict) -> dict:
        """Put a host batch (rows first) on the mesh, rows split over the batch axes.

        Every process brings the same batch. With several, they first meet at a bounded barrier: a peer stuck
        in host work (reward scoring, tokenising) is then named instead of this process blocking in the next
        program's collectives."""
        self._batches_placed += 1
        distributed.barrier(f"batch-{self._batches_placed}", f"a batch of step {self.global_step + 1}")
        axes = tuple(a for a in self.rules.mesh_axes("batch") if a in self.mesh.shape)
        ways = int(np.prod([self.mesh.shape[a] for a in axes])) if axes else 1
        rows = len(next(iter(batch.values())))
        if rows % ways:
            raise UserError(f"a batch of {rows} rows does not split over the {ways} data-parallel devices "
                            f"({'x'.join(axes)}); make the batch a multiple of {ways}")
        sharding = NamedSharding(self.mesh, P(axes or None))
        return jax.tree.map(lambda x: jax.device_put(jnp.asarray(x), sharding), batch)

    def shardings_of(self, tree):
        return tree_shardings(tree, self.mesh, self.rules)

    def write_metrics(self, row: dict) -> dict:
        return self.metrics.write(row)

    def run_eval(self, stage: StageConfig, sampler: Sampler, states, step: int | None = None) -> dict:
        """Held-out evaluation of `states`, the policy after global step `step` (default: the last counted
        one; an evaluation inside a step, after its update, passes that step)."""
        cfg = self.config
        step = self.global_step if step is None else step
        figures, samples = evaluate(sampler, states, self.tokenizer, cfg.tokenizer.template, self.eval_problems,
                                    self.pool, cfg.eval, cfg.sampling.max_new_tokens, cfg.rewards.answer_max_chars)
        entry = {"stage": stage.name, "checkpoint": str(self.run_dir / "checkpoints" / str(step)),
                 "step": step, **figures}
        self.summary["evals"].append(entry)
        if self.primary:
            out = self.run_dir / "samples"
            out.mkdir(exist_ok=True)
            with (out / f"{stage.name}-step{step}.jsonl").open("w") as f:
                for row in samples:
                    f.write(json.dumps(row) + "\n")
        self.metrics.log_eval(entry)
        k = figures["k"]
        self.console.log(f"eval after {stage.name} step {step}: pass@1 {figures['pass@1']:.3f}, "
                         f"cons@{k} {figures[f'cons@{k}']:.3f}, format {figures['format_rate']:.2f}, "
                         f"length {figures['response_length']:.1f}")
        return entry

    def _write_summary(self) -> None:
        if not self.primary:
            return
        evals = self.summary["evals"]
        self.summary["final_step"] = self.global_step
        if evals:
            self.summary["final_eval"] = evals[-1]
        gain = rl_gain(evals, self.config.stages)
        if gain is not None:
            self.summary["rl_gain"] = gain
        (self.run_dir / "summary.json").write_text(json.dumps(self.summary, indent=2))
