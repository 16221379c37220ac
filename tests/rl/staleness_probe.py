"""`r1jax` runs for tests/rl/test_staleness.py, in a real process (the runs share the test session's compilation
cache, so the programs they have in common compile once):

- `python -m tests.rl.staleness_probe run ARGS...` is `r1jax ARGS...`;
- `python -m tests.rl.staleness_probe sequential ARGS...` runs `r1jax ARGS...` with GRPO's loop replaced by
  `sequential_grpo`, the loop as it was before `grpo.max_staleness`: the reference max_staleness 0 reproduces;
- `python -m tests.rl.staleness_probe both DIR SEQUENTIAL_DIR ARGS...` runs `r1jax ARGS... --run-dir DIR`, then
  in the same process `sequential`'s run into SEQUENTIAL_DIR (the second run reuses the first's traced and
  compiled programs: one process start and one tracing of the trainer instead of two);
- `python -m tests.rl.staleness_probe both-then-watch DIR SEQUENTIAL_DIR WATCH_DIR OUT SIGNAL STEP OPTIONS AHEAD
  ARGS...` runs `both`'s two runs of `r1jax ARGS... OPTIONS...` (OPTIONS: a JSON list), then (AHEAD: JSON,
  {"dir", "out", "options"} or null) `r1jax ARGS... OPTIONS... --run-dir DIR` recording as `record_ahead` does
  into OUT, then in the same process `watch`'s run of `r1jax ARGS... --run-dir WATCH_DIR` (each run reusing the
  programs the runs before it traced);
- `python -m tests.rl.staleness_probe watch OUT SIGNAL STEP ARGS...` runs `r1jax ARGS...` as
  tests/rl/signal_at_step.py does (SIGNAL after the row of global step STEP) and writes one JSON line per
  GRPO update to OUT, found without the trainer's own bookkeeping: which generate call sampled the batch
  (matched by its tokens), the version of the weights that call was given (the update whose starting weights
  they equal), and the largest differences on completion tokens between the batch's `old_logp`, the
  sampler's log-probs, and fresh log-probs under the sampling weights and under the weights being updated;
- `python -m tests.rl.staleness_probe groups OUT STEP ARGS...` runs `r1jax ARGS...` (STEP > 0: SIGTERM after the
  row of global step STEP, as `watch`) and writes one JSON line to OUT per generate call (its G and a hash of
  each prompt) and per GRPO update (its rows, and whether each run of `grpo.group_size` rows, the rows its
  advantages normalise together, holds one prompt);
- `python -m tests.rl.staleness_probe groups-series SPEC` runs `groups` once per item of the JSON list SPEC
  ({"out", "step", "argv", "copies": [[FROM, TO], ...]}) one after another in this process (the later runs
  reuse the earlier ones' traced and compiled programs), printing signal_at_step.SERIES_MARK to stderr
  before each and copying each run directory FROM to TO after it, until one fails.

The runs of one process (`both`, `both-then-watch`, `groups-series`) go through signal_at_step.run_in_turn, which
puts back what the run before wrapped (WRAPPED) before each.
"""

import functools
import hashlib
import json
import shutil
import signal
import sys

import jax
import numpy as np

from r1jax.rl.cli.main import main
from r1jax.rl.data import make_iterator
from r1jax.rl.grpo.advantages import compute_advantages
from r1jax.rl.grpo.step import make_grpo_step, reference_logprobs, rollout_batch
from r1jax.rl.sampler import Sampler
from r1jax.rl.sampler_layout import reshard_metrics
from r1jax.rl.train import stage_grpo
from r1jax.rl.train.metrics import MetricsWriter
from r1jax.rl.train.rollouts import length_metrics, reflection_rate, reward_metrics
from r1jax.rl.train.stages import STAGE_RUNNERS
from r1jax.rl.train.update_stage import UpdateStage
from r1jax.rl.update import reference_due, reset_reference

from tests.rl.signal_at_step import SeriesRun, run_in_turn, signal_after_row


def sequential_grpo(ctx, index, stage, start):
    """Sample, score, update in turn (no dynamic sampling, packing or resume): the GRPO loop before
    `max_staleness`, the same calls in the same order."""
    g = ctx.config.grpo
    iterator = make_iterator(ctx.config.data, batch_size=g.prompts_per_step)
    sampler = ctx.sampler(ctx.config.seed * 1000 + index)
    make_step = lambda graphdef, opt, clip: make_grpo_step(graphdef, opt, g, ctx.config.update, ctx.model, clip)
    runner = UpdateStage(ctx, index, stage, start, with_ref=g.kl_coef > 0, make_step=make_step)
    ref_fn = jax.jit(reference_logprobs, static_argnums=(0, 3))
    while runner.stage_step < stage.steps:
        sampled = stage_grpo._sample(ctx, next(iterator), sampler, runner)
        rollout = sampled.rollout
        batch = rollout_batch(rollout, np.zeros((rollout.tokens_BT.shape[0],), np.float32), g,
                              ctx.config.sampling.max_new_tokens, with_replay=ctx.config.update.routing_replay)
        batch = ctx.place(batch, runner.global_step + 1)
        ref_logp = ref_fn(ctx.graphdef, runner.state.ref, batch, g.temperature) if g.kl_coef > 0 else None
        results = ctx.pool.collect(sampled.pending)
        rewards_PG = np.array([r.total for r in results], np.float32).reshape(-1, g.group_size)
        adv_PG, adv_metrics = compute_advantages(rewards_PG, g.advantage_estimator, g.adv_eps, g.adv_std)
        batch["adv"] = ctx.place({"adv": adv_PG.reshape(-1)}, runner.global_step + 1)["adv"]
        if ref_logp is not None:
            batch["ref_logp"] = ref_logp
        if g.num_iterations > 1:
            batch["old_logp"] = ref_fn(ctx.graphdef, runner.policy, batch, g.temperature)
        metrics = runner.update(batch, g.num_iterations)
        if runner.state.ref is not None and reference_due(runner.stage_step, g.ref_reset_every):
            runner.state = reset_reference(runner.state)
        row = {**metrics, **reward_metrics(results, ctx.config.rewards.names),
               **length_metrics(rollout, ctx.config.sampling.max_new_tokens, ctx.tokenizer.eos_ids),
               **{k: float(v) for k, v in adv_metrics.items()},
               "padding_fraction": float(1 - np.asarray(rollout.valid_BT).mean()),
               "reflection_rate": reflection_rate(sampled.texts, ctx.config.eval.reflection_words),
               "pool/recycled": ctx.pool.metrics()["reward_pool/recycled"], **reshard_metrics(sampler)}
        runner.finish_step(row, {})
    return runner.finish_stage({}, sampler)


def _fingerprint(policy) -> str:
    return hashlib.sha1(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(policy))).hexdigest()


def watch_grpo(out_path: str) -> None:
    """Wrap Sampler.generate and UpdateStage.update to write the lines the module docstring describes."""
    generate, update = Sampler.generate, UpdateStage.update
    calls, versions = [], []  # (weights fingerprint, host weights, tokens) per generate call; per update
    logprobs = jax.jit(reference_logprobs, static_argnums=(0, 3))

    def watched_generate(self, state, *args, **kwargs):
        rollout = generate(self, state, *args, **kwargs)
        calls.append((_fingerprint(state), jax.tree.map(np.asarray, state), np.asarray(rollout.tokens_BT)))
        return rollout

    def watched_update(self, batch, iterations=1, **options):
        versions.append(_fingerprint(self.policy))
        host = jax.tree.map(np.asarray, batch)
        call = next(i for i, (_, _, tokens) in enumerate(calls) if np.array_equal(tokens, host["tokens"]))
        fingerprint, weights, _ = calls[call]
        mask, temperature = host["mask"], self.ctx.config.grpo.temperature
        sampling = np.asarray(logprobs(self.ctx.graphdef, weights, host, temperature))
        updated = np.asarray(logprobs(self.ctx.graphdef, jax.tree.map(np.asarray, self.policy), host, temperature))
        largest = lambda a, b: float(np.abs(a - b)[mask].max())
        line = {"step": len(versions) - 1, "sampled_by_call": call,
                "sampler_weights_version": versions.index(fingerprint) if fingerprint in versions else None,
                "old_vs_sampling_weights": largest(host["old_logp"], sampling),
                "old_vs_sampler": largest(host["old_logp"], host["sampler_logp"]),
                "updated_vs_sampler": largest(updated, host["sampler_logp"])}
        with open(out_path, "a") as f:
            f.write(json.dumps(line) + "\n")
        return update(self, batch, iterations, **options)

    Sampler.generate, UpdateStage.update = watched_generate, watched_update


def record_groups(out_path: str) -> None:
    """Wrap Sampler.generate and UpdateStage.update to write the `groups` lines the module docstring describes."""
    generate, update = Sampler.generate, UpdateStage.update

    def write(line: dict) -> None:
        with open(out_path, "a") as f:
            f.write(json.dumps(line) + "\n")

    def recorded_generate(self, state, prompts, samples=1, **kwargs):
        write({"call": "generate", "samples": samples,
               "prompts": [hashlib.sha1(np.asarray(p, np.int64).tobytes()).hexdigest() for p in prompts]})
        return generate(self, state, prompts, samples, **kwargs)

    def recorded_update(self, batch, iterations=1, **options):
        tokens, mask = np.asarray(batch["tokens"]), np.asarray(batch["mask"])
        prompt_length = int(mask.argmax(axis=1).min()) + 1  # mask[:, t] is token t + 1 a completion's
        group_size = self.ctx.config.grpo.group_size
        groups = tokens[:, :prompt_length].reshape(-1, group_size, prompt_length)
        write({"call": "update", "rows": len(tokens),
               "groups_of_one_prompt": bool((groups == groups[:, :1]).all()),
               "prompts": len({g[0].tobytes() for g in groups})})
        return update(self, batch, iterations, **options)

    Sampler.generate, UpdateStage.update = recorded_generate, recorded_update


def record_ahead(out_path: str) -> None:
    """Wrap stage_grpo._draw, stage_grpo.behaviour_logp and UpdateStage.update to write one JSON line to OUT per
    batch drawn (its `ahead`), per behaviour log-probs computed and per update (a digest of the log-probs, of the
    update's `old_logp`: equal digests, equal shapes, dtypes and bytes)."""
    draw, behaviour, update = stage_grpo._draw, stage_grpo.behaviour_logp, UpdateStage.update

    def write(line: dict) -> None:
        with open(out_path, "a") as f:
            f.write(json.dumps(line) + "\n")

    def digest(x) -> str:
        x = np.ascontiguousarray(np.asarray(x))
        return f"{x.dtype}{list(x.shape)}:{hashlib.sha1(x.tobytes()).hexdigest()}"

    def recorded_draw(*args, **kwargs):
        write({"call": "draw", "ahead": kwargs.get("ahead")})
        return draw(*args, **kwargs)

    def recorded_behaviour(*args, **kwargs):
        logp = behaviour(*args, **kwargs)
        write({"call": "behaviour", "logp": digest(logp)})
        return logp

    def recorded_update(self, batch, *args, **kwargs):
        write({"call": "update", "old_logp": digest(batch["old_logp"])})
        return update(self, batch, *args, **kwargs)

    stage_grpo._draw, stage_grpo.behaviour_logp, UpdateStage.update = recorded_draw, recorded_behaviour, recorded_update


# what the probes wrap: put back before each run of a series (signal_at_step.run_in_turn)
WRAPPED = ((MetricsWriter, "write"), (Sampler, "generate"), (UpdateStage, "update"), (STAGE_RUNNERS, "grpo"),
           (stage_grpo, "_draw"), (stage_grpo, "behaviour_logp"))


def use_sequential_grpo() -> None:
    STAGE_RUNNERS["grpo"] = sequential_grpo


def arm_watch(out: str, sig: str, step: int) -> None:
    """`watch`'s wrappers: the lines to OUT, and SIGNAL after the row of global step STEP."""
    watch_grpo(out)
    signal_after_row(signal.Signals[f"SIG{sig}"], step)


def arm_groups(out: str, step: int) -> None:
    """`groups`' wrappers: the lines to OUT, and (STEP > 0) SIGTERM after the row of global step STEP."""
    record_groups(out)
    if step > 0:
        signal_after_row(signal.SIGTERM, step)


def groups_series(spec: list[dict]) -> int:
    def copy_run_dirs(copies, code: int) -> None:
        for source, target in copies if code == 0 else ():
            shutil.copytree(source, target)

    return run_in_turn((SeriesRun(item["argv"], functools.partial(arm_groups, item["out"], item["step"]),
                                  functools.partial(copy_run_dirs, item.get("copies", ()))) for item in spec), WRAPPED)


def both_then_watch(run_dir: str, sequential_dir: str, args: list[str], options: list[str],
                    watch: tuple[str, str, str, int] | None = None, ahead: dict | None = None) -> int:
    """`both`'s two runs, (`ahead`: {"dir", "out", "options"}) a run recorded by `record_ahead`, and (`watch`:
    WATCH_DIR, OUT, SIGNAL, STEP) `watch`'s run after them."""
    runs = [SeriesRun([*args, *options, "--run-dir", run_dir]),
            SeriesRun([*args, *options, "--run-dir", sequential_dir], arm=use_sequential_grpo)]
    if ahead is not None:
        runs.append(SeriesRun([*args, *ahead["options"], "--run-dir", ahead["dir"]],
                              arm=functools.partial(record_ahead, ahead["out"])))
    if watch is not None:
        watch_dir, *probe = watch
        runs.append(SeriesRun([*args, "--run-dir", watch_dir], arm=functools.partial(arm_watch, *probe)))
    return run_in_turn(runs, WRAPPED)


if __name__ == "__main__":
    if sys.argv[1] == "groups-series":
        sys.exit(groups_series(json.loads(sys.argv[2])))
    if sys.argv[1] == "both":
        sys.exit(both_then_watch(sys.argv[2], sys.argv[3], sys.argv[4:], []))
    if sys.argv[1] == "both-then-watch":
        (run_dir, sequential_dir, watch_dir, out, sig, step, options, ahead), args = sys.argv[2:10], sys.argv[10:]
        sys.exit(both_then_watch(run_dir, sequential_dir, args, json.loads(options), (watch_dir, out, sig, int(step)),
                                 json.loads(ahead)))
    if sys.argv[1] in ("run", "sequential"):
        if sys.argv[1] == "sequential":
            use_sequential_grpo()
        sys.exit(main(sys.argv[2:], as_program=True))
    if sys.argv[1] == "groups":
        arm_groups(sys.argv[2], int(sys.argv[3]))
        sys.exit(main(sys.argv[4:], as_program=True))
    arm_watch(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    sys.exit(main(sys.argv[5:], as_program=True))
