"""The trainer: a run directory, its stages in order, exact resume, evaluation and the summary.

A run directory holds `config.yaml` (resolved), `tokenizer/`, `checkpoints/` (Orbax, see
rl.train.checkpointing), `metrics.jsonl`, `tensorboard/`, `plots/`, `samples/` and `summary.json`.
`Trainer(config, run_dir).run()` starts a new run or resumes from the latest checkpoint: a finished stage is
skipped, an unfinished one continues at the step after its checkpoint with the same optimizer state, RNG
key, data-iterator position and reference policy, so the resumed run is bit-for-bit the uninterrupted one.
Every check comes before the first write to the run directory (config.yaml, metrics.jsonl cut back to the
checkpoint, a tokenizer built anew: `_begin`): a refused start leaves the directory as it was.

The trainer owns the loop over stages and the run's state between them (policy, global step, summary): each
stage runner receives a StageContext and a StageStart and returns a StageResult (rl.train.context).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any

import jax
import rich.markup

from r1jax.errors import UserError
from r1jax.files import LOCK_NAME, check_checkpoint_path, lock_directory, remove, write_atomically
from r1jax.model.config import ModelConfig
from r1jax.model.tokenizer import TokenizerLike, is_tokenizer_dir, load_tokenizer
from r1jax.rl.config import Config, load_config, stage_config, to_yaml
from r1jax.rl.evaluate import held_out_file_note
from r1jax.rl.host_info import host_info
from r1jax.rl.rewards import RewardPool
from r1jax.rl.rewards.share import ScoreShare
from r1jax.rl.sampler_devices import split_devices
from r1jax.rl.train.checkpointing import TrainCheckpointer, check_compatible, config_changes, tokenizer_settings
from r1jax.rl.train.config import StageConfig
from r1jax.rl.train.console import RunConsole
from r1jax.rl.train.context import (BatchPlacer, StageContext, StageResult, StageStart, StopFlag, Stopped,
                                    summary_with)
from r1jax.rl.train.held_out import HeldOutEval
from r1jax.rl.train.metrics import MetricsWriter
from r1jax.rl.train.outcome import rl_gain
from r1jax.rl.train.preflight import check_resumed_data, preflight
from r1jax.rl.train.run_layout import RUN_ENTRIES, check_run_entries
from r1jax.rl.train.policy_io import RunCheckpoints, run_tokenizer, starting_policy
from r1jax.rl.train.stages import STAGE_RUNNERS
from r1jax.sharding import distributed
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import build_mesh

# a tokenizer built anew waits here until the start's checks pass, then replaces tokenizer/ (Trainer._begin)
STAGED_TOKENIZER = ".tokenizer.new"


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a run stands: the next stage to run, and the checkpoint's meta when resuming inside it."""

    stage_index: int = 0
    meta: dict | None = None


class Trainer:
    def __init__(self, config: Config, run_dir: str | pathlib.Path, console: RunConsole | None = None):
        self.config, self.run_dir = config, pathlib.Path(run_dir)
        check_checkpoint_path(self.run_dir.absolute(), "run directory")  # before anything is made there
        self.primary = jax.process_index() == 0
        self.console = console or RunConsole(self.primary)
        # with `sampling.devices` > 0 the trainer's mesh leaves the last devices to the sampler (rl.sampler_devices)
        train_devices, self.sampler_devices = split_devices(config.sampling)
        try:
            self.mesh = build_mesh(config.sharding, train_devices)
        except UserError as err:
            if not self.sampler_devices:
                raise
            raise UserError(f"{err} (sampling.devices={config.sampling.devices} leaves the trainer "
                            f"{len(train_devices)} of {len(train_devices) + len(self.sampler_devices)})") from None
        self.rules = config.sharding.logical_rules()
        # a refused start of a new run removes the directory it made (release): made here by process 0 alone, at
        # once (two starts checking that it is new, then making it, both took it for theirs)
        self._created, self._begun = False, False  # `_begun`: `_begin` has written to the run directory
        self._refusable: tuple | None = None  # a resume's config.yaml before `_begin` and the run's progress then
        if self.primary:
            self.run_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.run_dir.mkdir()
                self._created = True
            except FileExistsError:
                pass
        distributed.barrier("run-directory-made", "the run directory's creation (process 0 makes it)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        distributed.check_shared_directory(self.run_dir, "--run-dir")  # every process must write one directory
        self._staged: pathlib.Path | None = None  # a tokenizer built anew, not yet in tokenizer/
        lock_added = not os.path.lexists(self.run_dir / LOCK_NAME)
        # one trainer at a time (process 0 holds it for the run): a second one's saves and metrics mixed with
        # the first's (both ran to the end: two lines per step, checkpoints of either config)
        self._lock = lock_directory(self.run_dir, "run directory") if self.primary else None
        # what this start may add to a directory it did not make (of RUN_ENTRIES; listed once it holds the lock:
        # no other trainer writes there now), taken away again by a refused start (`release`)
        self._added = [path for path in (self.run_dir / name for name in RUN_ENTRIES)
                       if self.primary and not self._created and not os.path.lexists(path)]
        if self.primary and not self._created and lock_added:
            self._added.append(self.run_dir / LOCK_NAME)
        try:
            check_run_entries(self.run_dir, config.stages, config.plots)
            self._open(config)
        except BaseException:
            self.release()
            raise

    def _open(self, config: Config) -> None:
        checkpointer = TrainCheckpointer(self.run_dir / "checkpoints", config.checkpoint.keep,
                                         config.checkpoint.keep_best, config.checkpoint.async_save)
        self.metrics = MetricsWriter(self.run_dir, self.primary, plots=config.plots)
        self.tokenizer = self._tokenizer(checkpointed=checkpointer.latest_step() is not None)
        self.checkpoints: RunCheckpoints | None = RunCheckpoints(checkpointer, config, self.run_dir,
                                                                 self.tokenizer, self.primary)
        # the run's state between stages: what the next stage starts from
        self.graphdef, self.policy = None, None  # policy: (params, bias)
        self.global_step = 0
        self.summary: dict[str, Any] = {"evals": [], "stages": []}
        self.stop = StopFlag()
        self.place = BatchPlacer(self.mesh, self.rules)
        self._pool: RewardPool | None = None  # started with the first stage that runs
        self._evaluate: HeldOutEval | None = None
        self._held_out: list[dict] = []  # the held-out problems, built by preflight
        self._models: dict[int, ModelConfig] = {}  # stage index -> the architecture of that stage's policy

    def _tokenizer(self, checkpointed: bool) -> TokenizerLike:
        """Process 0 loads or trains the run's tokenizer (rl.train.policy_io.run_tokenizer); the other
        processes load its copy. A run with a checkpoint keeps its tokenizer (a resume refuses settings that
        name another one: checkpointing.check_compatible); one without starts over, and builds its tokenizer
        again unless the settings it was built from are the config's (the saved one was kept whatever the new
        settings said, with no word). One built anew is staged beside tokenizer/ and replaces it once the
        start's checks pass (`_begin`): a refused start kept it there under the old config.yaml, and the next
        start under the old settings took it for theirs."""
        saved, tokenizer = self.run_dir / "tokenizer", None
        if not (is_tokenizer_dir(saved) and (checkpointed or self._same_tokenizer_settings())):
            saved = self._staged = self.run_dir / STAGED_TOKENIZER
            if self.primary:
                shutil.rmtree(saved, ignore_errors=True)  # what a killed start left
                tokenizer = run_tokenizer(self.config)
                tokenizer.save(saved)
        elif self.primary:
            tokenizer = load_tokenizer(saved)
        distributed.barrier("tokenizer", "the saved tokenizer (process 0 trains it)", timeout_s=3600)
        if tokenizer is None:
            tokenizer = load_tokenizer(saved)
        return tokenizer

    def _same_tokenizer_settings(self) -> bool:
        """Does the run's config.yaml (its last start's) name the tokenizer this config does?"""
        try:
            before = load_config(self.run_dir / "config.yaml")
        except (UserError, OSError):  # none (a start refused before writing it), or unreadable
            return False
        return tokenizer_settings(before) == tokenizer_settings(self.config)

    def _model(self, index: int) -> ModelConfig:
        """The architecture of stage `index`'s policy (a distill stage's student from that stage on)."""
        if index not in self._models:
            self._models[index] = stage_config(self.config, index).model
        return self._models[index]

    # -- the run --------------------------------------------------------------------------------------
    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.release()

    def release(self) -> None:
        """Let the run directory go (another trainer may then open it); a tokenizer staged by a start that
        was refused goes with it, and so does the directory itself when this start made it: a refused new run
        left its lock and an empty checkpoints/ there, which the next `r1jax train --run-dir` took for a run."""
        if self._staged is not None and self.primary:
            shutil.rmtree(self._staged, ignore_errors=True)
            self._staged = None
        if self._created and not self._begun and self._lock is not None:  # never a directory no lock guarded
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self._created = False
        if not self._begun and self._lock is not None:  # a directory the user made: as it was before the start
            for path in self._added:  # (the lock file last, still held: r1jax.files.lock_directory)
                with contextlib.suppress(OSError):
                    remove(path)
        self._added = []
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _run(self) -> dict:
        try:
            position = self._resume_position()
            # everything checkable is checked before the first step (a resumed run: before its next one)
            left_out = []
            self._held_out = preflight(self.config, self.tokenizer, self.mesh, self.rules, position.stage_index,
                                       left_out)
            if (position.meta or {}).get("data_state") is not None:  # a changed data file or order, refused
                check_resumed_data(self.config, self.run_dir, position.stage_index, position.meta["data_state"],
                                   str(self.run_dir / "checkpoints" / str(position.meta["checkpoint"])))
            for kind in left_out:
                self.console.log(f"held-out set: training uses every {kind} problem, so it holds none of them "
                                 "(the other kinds keep their shares)")
            if self.config.eval.path is not None:
                self.console.log(held_out_file_note(self.config.eval, len(self._held_out)))
            narrow = self.config.model.param_dtype
            if narrow != "float32" and any(s.kind != "rejection_sampling" for s in self.config.stages[
                    position.stage_index:]):  # (a bfloat16 checkpoint keeps its dtype unless the config says)
                self.console.log(f"note: model.param_dtype is {narrow}: Adam steps of lr ~1e-6 round away in "
                                 f"{narrow} weights (README, Dtypes); say model.param_dtype=float32 to train")
            self._begin()
            with self.stop.watching(self.global_step), use_mesh(self.mesh, self.rules):
                try:
                    for index, stage in enumerate(self.config.stages):
                        if index > position.stage_index and self.stop.requested(self.global_step):
                            raise Stopped()  # asked for in the last stage's end (its evaluation, its save)
                        if index >= position.stage_index:
                            self._run_stage(index, stage, position.meta if index == position.stage_index else None)
                except Stopped:
                    self.checkpoints.wait()  # as below
                    raise
                # the saves in flight are written while the handlers hold SIGTERM/SIGINT (outside them, a signal
                # during the last stage's end save ended the process mid-write: that checkpoint lost, exit 143)
                self.checkpoints.wait()
        except Stopped as stopped:
            if stopped.result is not None:
                self._apply(stopped.result)
            latest = self.checkpoints.latest_step()  # a stopped rejection-sampling stage saves none
            self.console.log(f"stopped by signal {self.stop.signal} at step {self.global_step}; latest checkpoint: "
                             f"{'none' if latest is None else f'step {latest}'}")
            self.summary["stopped_at_step"] = self.global_step
        except distributed.PeerLost:
            self.checkpoints = None  # closing waits for the lost peer in Orbax's barriers: leave it
            raise
        except UserError:
            self._unwrite_config()
            raise
        finally:
            if self.checkpoints is not None:
                self.checkpoints.close()
            self.metrics.close()
            if self._pool is not None:
                self._pool.close()
        self._write_summary()
        return self.summary

    def _begin(self) -> None:
        """The start's first writes to the run directory, once all its checks have passed: metrics.jsonl cut
        back to the resumed step (emptied when the run starts over), a tokenizer built anew in place of the
        saved one, and the config as config.yaml."""
        self._begun = True
        earlier = self.run_dir / "metrics.jsonl"
        if self.checkpoints.latest_step() is None and earlier.exists() and earlier.stat().st_size:
            self.console.log(f"{self.run_dir} holds no checkpoint: the run starts over, and the metrics rows of "
                             "its earlier start (metrics.jsonl) are dropped")
        self.metrics.resume(self.global_step, self.summary["evals"])
        if self._staged is not None:
            distributed.barrier("tokenizer-loaded", "every process's copy of the new tokenizer")
            if self.primary:
                saved, old = self.run_dir / "tokenizer", self.run_dir / ".tokenizer.old"
                shutil.rmtree(old, ignore_errors=True)
                if saved.exists():
                    saved.rename(old)
                self._staged.rename(saved)
                shutil.rmtree(old, ignore_errors=True)
            self._staged = None
        if self.primary:
            config_yaml = self.run_dir / "config.yaml"
            if self.checkpoints.latest_step() is not None and config_yaml.is_file():  # a resume: kept until it steps
                self._refusable = (config_yaml.read_bytes(), self._progress())
            write_atomically(config_yaml, to_yaml(self.config))

    def _progress(self) -> tuple:
        """What a step leaves behind: the latest checkpoint and metrics.jsonl's size."""
        metrics = self.run_dir / "metrics.jsonl"
        return self.checkpoints.latest_step(), metrics.stat().st_size if metrics.exists() else 0

    def _unwrite_config(self) -> None:
        """A resume refused after `_begin` (its checkpoint's optimizer state or its sampled-ahead batches do
        not fit the changed config: both are read in the stage) leaves config.yaml as it was, as a start
        refused before `_begin` does: the run goes on under its saved config, not under the refused one."""
        if self._refusable is not None and self._progress() == self._refusable[1]:
            write_atomically(self.run_dir / "config.yaml", self._refusable[0])

    def _resume_position(self) -> Position:
        """Where the run stands; a resume's checks against its checkpoint, which write nothing (`_begin` does)."""
        step = self.checkpoints.latest_step()
        if step is None:  # a new run, or one stopped or killed before its first checkpoint: it starts over
            return Position()
        saved, meta = self.checkpoints.restore_config_and_meta(step)
        index, where = int(meta["stage_index"]), str(self.run_dir / "checkpoints" / str(step))
        theirs, ours = saved.stages[index], self.config.stages[index:index + 1]
        if [(s.name, s.kind) for s in ours] != [(theirs.name, theirs.kind)]:  # stages are resumed by position
            found = f"'{ours[0].name}' ({ours[0].kind})" if ours else "absent"
            raise UserError(f"checkpoint {where} was saved in stage {index + 1}, '{theirs.name}' ({theirs.kind}); "
                            f"the config's stage {index + 1} is {found}: resume with the run's stages (its "
                            "config.yaml), or start a new run directory")
        check_compatible(saved, stage_config(self.config, index), where, same_tokenizer=True)
        if meta["stage_done"] and self.config.stages[index].steps > theirs.steps:
            stage = self.config.stages[index]
            raise UserError(f"stages[{stage.name}].steps={stage.steps}: the stage finished at {theirs.steps} steps "
                            f"(checkpoint {where} holds its end, not its optimizer or data position); to train "
                            f"it longer, add a stage after it ({{name: {stage.name}_more, kind: {stage.kind}, "
                            f"steps: {stage.steps - theirs.steps}}}) or start a new run directory")
        done_in_stage = int(meta.get("stage_step", 0))
        if not meta["stage_done"] and self.config.stages[index].steps < done_in_stage:
            stage = self.config.stages[index]  # it would end as done, its checkpoint and config.yaml saying fewer
            raise UserError(f"stages[{stage.name}].steps={stage.steps}: checkpoint {where} is at step "
                            f"{done_in_stage} of the stage; resume with steps >= {done_in_stage} ({done_in_stage} "
                            "ends it at once), or start a new run directory")
        for ours, theirs in zip(self.config.stages[:index], saved.stages[:index]):  # finished before this one
            if ours.steps != theirs.steps:  # it trained nothing, and config.yaml then said it had
                raise UserError(f"stages[{ours.name}].steps={ours.steps}: the stage finished at {theirs.steps} steps "
                                f"before checkpoint {where}; resume with its {theirs.steps}, or start a new run "
                                "directory")
        changes = config_changes(saved, stage_config(self.config, index))
        if changes:  # allowed (a longer schedule, a new eval size), but the run is no longer the saved one's
            shown = "; ".join(changes[:12]) + (f"; and {len(changes) - 12} more" if len(changes) > 12 else "")
            self.console.log(rich.markup.escape(f"resuming under a config that differs from checkpoint {where}'s "
                                                f"(the run will not equal an uninterrupted one): {shown}"))
        self.global_step = int(meta["global_step"])
        self.summary = meta.get("summary", self.summary)
        self.graphdef, self.policy = self.checkpoints.restore_policy(step, self._model(index), self.mesh,
                                                                     self.rules)
        self.console.log(f"resuming {self.run_dir} from step {self.global_step} (stage {meta['stage_name']})")
        saved_on = (meta.get("devices"), meta.get("processes"))
        if saved_on[0] is not None and saved_on != (jax.device_count(), jax.process_count()):
            self.console.log(f"checkpoint {where} was saved on {saved_on[0]} devices in {saved_on[1]} process(es), "
                             f"this run has {jax.device_count()} in {jax.process_count()}: the same computation "
                             "laid out otherwise, equal to an uninterrupted run up to rounding")
        if meta["stage_done"]:  # its checkpoint's summary is the one the stage started with, plus its results
            self._record_stage(index)
            return Position(index + 1)
        return Position(index, {**meta, "checkpoint": step})

    def _run_stage(self, index: int, stage: StageConfig, resume: dict | None) -> None:
        if resume is None:  # a stage resumed inside goes on with its checkpoint's policy
            try:
                started = starting_policy(self.config, index, stage, self.tokenizer, self.policy, self.mesh,
                                          self.rules)
            except UserError:  # a stage's init_from that cannot be read (damaged, not a checkpoint)
                if not self.summary["stages"] and self.checkpoints.latest_step() is None:
                    self._begun = False  # nothing of the run yet: a refused start (release removes what it made)
                raise
            if started is not None:
                self.graphdef, self.policy = started
        self.console.log(f"stage {index + 1}/{len(self.config.stages)}: {stage.name} ({stage.kind}, "
                         f"{stage.steps} steps)")
        start = StageStart(self.policy, self.global_step, self.summary, resume)
        self._apply(STAGE_RUNNERS[stage.kind](self._context(index), index, stage, start))
        self._record_stage(index)

    def _record_stage(self, index: int) -> None:
        """The summary's entry for stage `index`, which has just ended (at the current global step)."""
        stage = self.config.stages[index]
        self.summary["stages"].append({"name": stage.name, "kind": stage.kind, "end_step": self.global_step})

    def _context(self, index: int) -> StageContext:
        if self._pool is None:
            # under several processes each scores its share of every batch (rl.rewards.share)
            share = ScoreShare.of_jax_processes(self.config.reward_pool.batch_deadline_s
                                                + distributed.peer_timeout_s())
            data = self.config.data  # generated tasks: their verifiers alone are warmed up; a data file's: all
            self._pool = RewardPool(self.config.rewards, self.config.reward_pool, share=share,
                                    tasks=None if data.path else data.tasks)
            if self._pool.sandbox is not None:  # the run's log and its summary say how programs ran
                self.console.log(f"code sandbox: {self._pool.sandbox}")
                self.summary["code_sandbox"] = self._pool.sandbox
            self._evaluate = HeldOutEval(self.config, self.run_dir, self.primary, self.tokenizer, self._pool,
                                         self.metrics, self.console, self._held_out)
        return StageContext(config=self.config, run_dir=self.run_dir, primary=self.primary, mesh=self.mesh,
                            rules=self.rules, tokenizer=self.tokenizer, pool=self._pool, model=self._model(index),
                            graphdef=self.graphdef, checkpoints=self.checkpoints, metrics=self.metrics,
                            console=self.console, stop=self.stop, place=self.place, evaluate=self._evaluate,
                            sampler_devices=tuple(self.sampler_devices))

    def _apply(self, result: StageResult) -> None:
        """Take on what a stage changed."""
        self.policy, self.global_step = result.policy, result.global_step
        self.summary = summary_with(self.summary, result.evals, result.datasets)

    def _write_summary(self) -> None:
        if not self.primary:
            return
        evals = self.summary["evals"]
        self.summary["final_step"] = self.global_step
        self.summary["host"] = host_info()  # the process that wrote it last: a resumed run's is its new host
        if evals:
            self.summary["final_eval"] = evals[-1]
        gain = rl_gain(evals, self.config.stages)
        if gain is not None:
            self.summary["rl_gain"] = gain
        write_atomically(self.run_dir / "summary.json", json.dumps(self.summary, indent=2))
