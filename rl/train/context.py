"""What a stage runner receives and what it returns.

A runner is `run(ctx, index, stage, start) -> StageResult`:
- `ctx` (StageContext): what the stage works with and never replaces: the config, mesh, tokenizer, reward
  pool, checkpoints, metrics, console, stop flag, this stage's model and graphdef, and the helpers the stages
  share (place a batch, evaluate, sample).
- `start` (StageStart): where it begins: the policy, the global step, the run's summary so far, and the
  checkpoint's meta when the run resumes inside this stage.
- the StageResult: what it changed: the policy, the global step, and its additions to the summary
  (evaluations, datasets). The trainer owns the loop over stages and applies results; a stop request ends a
  stage with `Stopped(result)`, the run's state at the stop.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from r1jax.model.config import ModelConfig
from r1jax.model.tokenizer import TokenizerLike
from r1jax.rl.config import Config
from r1jax.rl.rewards import RewardPool
from r1jax.rl.sampler import Sampler
from r1jax.rl.sampler_devices import own_devices_layout
from r1jax.rl.sampler_layout import choose_layout
from r1jax.rl.train.console import RunConsole
from r1jax.rl.train.held_out import HeldOutEval
from r1jax.rl.train.metrics import MetricsWriter
from r1jax.rl.train.policy_io import RunCheckpoints
from r1jax.rl.train.preemption import StopRequest
from r1jax.sharding import distributed
from r1jax.sharding.mesh import check_batch_rows
from r1jax.sharding.rules import Rules


@dataclasses.dataclass(frozen=True)
class StageStart:
    policy: tuple  # (params, bias) States
    global_step: int  # steps counted before this stage (or, resuming inside it, up to its checkpoint)
    summary: Mapping[str, Any]  # the run's summary so far: evals, stages, datasets (read only)
    resume: dict | None = None  # the checkpoint's meta (its step under "checkpoint") when resuming inside


@dataclasses.dataclass(frozen=True)
class StageResult:
    policy: tuple  # (params, bias) States
    global_step: int
    evals: tuple[dict, ...] = ()  # held-out evaluations the stage ran, in order
    datasets: tuple[dict, ...] = ()  # datasets the stage wrote (rejection sampling's statistics)


class Stopped(Exception):
    """A stage stopped at a step boundary after a SIGTERM/SIGINT (with a checkpoint where it had one to save);
    the run then exits cleanly. `result` is the run's state at the stop."""

    def __init__(self, result: StageResult | None = None):
        """`result`: None between stages (the run's state is the last stage's, already applied)."""
        super().__init__("stopped" if result is None else f"stopped at global step {result.global_step}")
        self.result = result


def summary_with(summary: Mapping[str, Any], evals: Sequence[dict] = (), datasets: Sequence[dict] = ()) -> dict:
    """A copy of the run's summary with a stage's evaluations and datasets added: what its checkpoints record
    and, once it ends, the run's summary. A copy, so a later change never reaches a save still in flight."""
    out = copy.deepcopy(dict(summary))
    out["evals"] = [*out["evals"], *copy.deepcopy(list(evals))]
    if datasets:
        out["datasets"] = [*out.get("datasets", []), *copy.deepcopy(list(datasets))]
    return out


class StopFlag:
    """Whether to stop at a step boundary. Asked with the global step reached: several processes agree on
    the step they stop at (rl.train.preemption)."""

    def __init__(self):
        self._step = 0
        self.request = StopRequest(step=lambda: self._step)

    def watching(self, global_step: int) -> StopRequest:
        """The signal handlers' context, for a run that starts at `global_step`."""
        self._step = global_step
        return self.request

    def requested(self, global_step: int) -> bool:
        self._step = global_step
        return bool(self.request)

    @property
    def signal(self) -> int | None:
        return self.request.signal


class BatchPlacer:
    """Puts host batches (rows first) on the mesh, rows split over the batch axes.

    Every process brings the same batch. With several, they first meet at a bounded barrier: a peer stuck in
    host work (reward scoring, tokenising) is then named instead of this process blocking in the next
    program's collectives. Barriers are numbered by the batches placed in this run."""

    def __init__(self, mesh: Mesh, rules: Rules):
        self.mesh, self.rules = mesh, rules
        self.placed = 0

    def __call__(self, batch: dict, for_step: int) -> dict:
        """`batch` on the mesh; `for_step` is the global step it belongs to (named if a peer is missing)."""
        self.placed += 1
        distributed.barrier(f"batch-{self.placed}", f"a batch of step {for_step}")
        rows = len(next(iter(batch.values())))
        axes = check_batch_rows(rows, self.mesh, self.rules, "a batch")
        sharding = NamedSharding(self.mesh, P(axes or None))
        # host arrays go straight to their shards (`jnp.asarray` first would compile a conversion and a
        # reshard per new shape); device_put gives them JAX's dtypes as jnp.asarray does (int64 -> int32)
        return jax.tree.map(lambda x: jax.device_put(x if isinstance(x, jax.Array) else np.asarray(x), sharding),
                            batch)


@dataclasses.dataclass(frozen=True)
class StageContext:
    config: Config
    run_dir: pathlib.Path
    primary: bool  # JAX process 0: the one that writes files
    mesh: Mesh
    rules: Rules
    tokenizer: TokenizerLike
    pool: RewardPool
    model: ModelConfig  # this stage's architecture (a distill stage's student)
    graphdef: Any  # merges the policy's (params, bias)
    checkpoints: RunCheckpoints
    metrics: MetricsWriter
    console: RunConsole
    stop: StopFlag
    place: BatchPlacer
    evaluate: HeldOutEval
    sampler_devices: tuple = ()  # the sampler's own devices (`sampling.devices`); empty: it shares the mesh's

    def sampler(self, seed: int) -> Sampler:
        """A sampler of this stage's policy whose key starts from `seed`: it stops a row at any of the
        tokenizer's eos ids and never samples an id the tokenizer cannot decode. It samples in the layout
        `sampling.layout` chooses (rl.sampler_layout), on its own devices where it has some
        (rl.sampler_devices), said on the console."""
        if self.sampler_devices:
            layout, note = own_devices_layout(self.config.sampling, self.config.sharding, self.model, self.mesh,
                                              self.rules, list(self.sampler_devices))
        else:
            layout, note = choose_layout(self.config.sampling, self.model, self.mesh, self.rules)
        if note and self.primary:
            self.console.log(note)
        return Sampler(self.graphdef, self.config.sampling, self.tokenizer.eos_ids, self.tokenizer.pad_id, seed,
                       self.tokenizer.vocab_size, layout)
