"""Rollouts sampled ahead of their update: the pipeline of `grpo.max_staleness` = k, and its checkpoint item.

A GRPO stage keeps a queue of sampled batches. At the start of step n (the policy has had n updates in the
stage: version n) it samples until the queue holds the batches of steps n..n+k (never past the stage's
last step), each with the weights of the moment, submits each to the reward pool at once, then updates on
the queue's head. So with k = 0 the step samples its own batch and updates on it (the on-policy loop,
in the same order); with k >= 1 step n updates on the batch sampled at step n-k by weights k versions old
(fewer in the stage's first k steps: `staleness` = updates between the sampler's weights and the weights
updated), and the host scores batch n+k in the pool's workers while the devices run update n.

Behaviour log-probs: a batch sampled ahead (k >= 1) carries `old_logp`, the log-probs of its targets under
the weights that sampled it as the trainer computes them, dispatched right after sampling. The GRPO ratio is
taken against them (pi_theta / pi_behaviour, as with mu > 1 updates per batch), and TIS and the token /
sequence masks compare them with the sampler's own log-probs (`sampler_logp`): the mismatch between trainer
and sampler for the same weights, which is what those corrections are for (rl.grpo.ratios).

Exact resume: a checkpoint holds the queue (the batches of the next k steps, sampled and scored by weights no
longer anywhere): the rollouts and behaviour log-probs as the Orbax item `ahead` (the routing record only
with `update.routing_replay`, its one reader), texts, scores and timings in the meta. Saving waits for the
queue's scores, so a resumed run never rescores. The training batches are rebuilt from the saved rollouts by
the same code and placed alike, so the resumed run's updates are the uninterrupted run's.

Resuming under another config: each queued batch records what its data means something under
(`sampled_under`: its shape, how it was sampled, how it was scored) and the data iterator's position before its
prompts. A restore keeps the queue's batches up to the first whose settings differ from the run's and drops that
one and every later one (a G = 2 batch's scores regrouped by G = 4 normalise different prompts together; scores
by a dropped reward train on a column no longer logged), with one log line; the iterator goes back to the first
dropped batch's prompts, which are sampled and scored again in order, so no problem is skipped. A queue longer
than `grpo.max_staleness` (a smaller k on resume, 0 included) is kept and drains: the next steps update on it,
their rows logging its staleness, and only then are batches sampled at most k steps ahead.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.errors import UserError
from r1jax.rl.rewards import BatchHandle, RewardPool, ScoreResult
from r1jax.rl.sampler import Rollout
from r1jax.sharding.distributed import replicated

ITEM = "ahead"  # the checkpoint's Orbax item of the queued rollouts
ROLLOUT_FIELDS = ("tokens_BT", "valid_BT", "positions_BT", "logprobs_BN", "lengths_B", "experts_LBTK")


@dataclasses.dataclass
class SampledBatch:
    """One step's rollout, from its sampling to its update."""

    rollout: Rollout
    texts: list[str]  # decoded responses (rl.train.rollouts.Sampled.texts)
    seconds: float  # encoding, generation and decoding
    generated: float  # completion tokens generated for it (with dynamic sampling: over all its rounds)
    extra: dict  # row metrics of its sampling (dynamic sampling's rounds)
    version: int  # the run's global step when sampled: the sampler's weights had that many updates
    batch: dict  # the training batch on the mesh, advantages still zero; `old_logp` when sampled ahead
    layout: dict  # padding metrics of its layout (rl.train.stage_grpo)
    pending: BatchHandle | None = None  # its scoring in the reward pool, until collected
    results: list[ScoreResult] | None = None
    settings: dict | None = None  # `sampled_under` the config it was sampled and scored under
    data_state: dict | None = None  # the data iterator's state before its prompts were drawn

    def collect(self, pool: RewardPool) -> list[ScoreResult]:
        """Its scores, waiting for the pool the first time."""
        if self.results is None:
            self.results = pool.collect(self.pending)
        return self.results


def sampled_under(config) -> dict:
    """The settings a sampled batch's data means something under, by config key ('grpo.group_size'), with
    JSON's types (as a checkpoint's meta gives them back): its shape (prompts x G: G groups its scores), how
    it was sampled (temperature, top-p / top-k, token budget, prompt template) and how it was scored (the
    `rewards` section: names, weights and the rewards' options). Settings of the update (the loss, the KL,
    the advantage estimator, packing) apply when it is updated on, under the run's config, and are not here."""
    g, s, t = config.grpo, config.sampling, config.tokenizer
    settings = {"grpo.group_size": g.group_size, "grpo.prompts_per_step": g.prompts_per_step,
                "grpo.temperature": g.temperature, "sampling.max_new_tokens": s.max_new_tokens,
                "sampling.top_p": s.top_p, "sampling.top_k": s.top_k, "tokenizer.template": t.template,
                "tokenizer.template_vars": dict(t.template_vars)}
    settings.update(_flat(dataclasses.asdict(config.rewards), "rewards"))
    return json.loads(json.dumps(settings, default=str))


def _flat(tree: dict, prefix: str) -> dict:
    return {key: value for k, v in tree.items()
            for key, value in (_flat(v, f"{prefix}.{k}") if isinstance(v, dict) else {f"{prefix}.{k}": v}).items()}


def settings_changes(saved: dict | None, current: dict | None) -> list[str]:
    """'key: saved -> current' for each setting a queued batch was sampled under that `current` changes. None
    for a batch saved before batches recorded their settings (or a caller with none): nothing to compare. Only
    keys both hold are compared, so a setting a later version records drops no batch saved without it."""
    if saved is None or current is None:
        return []
    return [f"{key}: {saved[key]!r} -> {current[key]!r}" for key in sorted(saved.keys() & current.keys())
            if saved[key] != current[key]]


def behaviour_logp(ref_fn: Callable, graphdef, policy: tuple, batch: dict, temperature: float) -> jax.Array:
    """`batch`'s target log-probs under `policy` (the sampler's weights), laid out like its per-token
    arrays: the sharding a restored copy gets too, so an uninterrupted and a resumed run compile one step."""
    return jax.device_put(ref_fn(graphdef, policy, batch, temperature), batch["mask"].sharding)


def _host(x) -> np.ndarray:
    return np.asarray(replicated(x))


def save_queue(queue, pool: RewardPool, with_experts: bool) -> tuple[dict, dict]:
    """(trees, meta) that hold `queue` (SampledBatches in step order) in a checkpoint; scores are awaited.
    The routing record (`experts_LBTK`, the largest field) is kept only `with_experts` (routing replay)."""
    if not queue:
        return {}, {ITEM: []}
    fields = [f for f in ROLLOUT_FIELDS if with_experts or f != "experts_LBTK"]
    arrays = {str(i): {**{f: _host(getattr(b.rollout, f)) for f in fields},
                       "old_logp": _host(b.batch["old_logp"])} for i, b in enumerate(queue)}
    meta = [{"texts": list(b.texts), "seconds": b.seconds, "generated": b.generated, "extra": b.extra,
             "version": b.version, "steps": int(np.asarray(b.rollout.steps)),
             "results": [dataclasses.asdict(r) for r in b.collect(pool)],
             "settings": b.settings, "data_state": b.data_state,
             "shapes": {name: [list(a.shape), a.dtype.name] for name, a in arrays[str(i)].items()}}
            for i, b in enumerate(queue)]
    return {ITEM: arrays}, {ITEM: meta}


@dataclasses.dataclass
class RestoredQueue:
    batches: collections.deque  # the SampledBatches kept, in step order
    rewind: dict | None = None  # the data iterator's state before the first dropped batch's prompts
    note: str | None = None  # the log line: how many were dropped and why


def restore_queue(meta: dict, restore_trees: Callable[[dict], dict],
                  place: Callable[[Rollout, int], tuple[dict, dict]], with_experts: bool = False,
                  settings: dict | None = None) -> RestoredQueue:
    """The queue a checkpoint's `meta` describes (empty for a checkpoint without one). `restore_trees(targets)`
    reads the checkpoint's items; `place(rollout, ahead)` builds a rollout's training batch and layout metrics
    (`ahead`: its place in the queue, 0 for the next step's);
    `with_experts`: the run replays routing, so the queued batches must carry their routing record;
    `settings`: the run's `sampled_under`, which the batches kept were sampled under (module docstring)."""
    entries = meta.get(ITEM) or []
    queue: collections.deque = collections.deque()
    changes = [settings_changes(e.get("settings"), settings) for e in entries]
    kept = next((i for i, c in enumerate(changes) if c), len(entries))
    restored = RestoredQueue(queue)
    if kept < len(entries):
        reasons = list(dict.fromkeys(c for change in changes[kept:] for c in change))
        restored.rewind = entries[kept]["data_state"]
        restored.note = (f"dropped {len(entries) - kept} of the {len(entries)} batch(es) sampled ahead in checkpoint "
                         f"{meta.get('checkpoint')}, sampled and scored under other settings ({'; '.join(reasons)}):"
                         " their prompts are sampled and scored again under this run's")
        entries = entries[:kept]
    if not entries:
        return restored
    if with_experts and any("experts_LBTK" not in e["shapes"] for e in entries):
        raise UserError(f"update.routing_replay=true, but the checkpoint's {len(entries)} batch(es) sampled ahead "
                        "were saved without their routing record (update.routing_replay was false): resume with "
                        "update.routing_replay=false, or turn it on in a new run")
    all_entries = meta[ITEM]  # the checkpoint's item holds them all: read whole, the dropped ones left unused
    targets = {str(i): {name: np.zeros(shape, dtype) for name, (shape, dtype) in e["shapes"].items()}
               for i, e in enumerate(all_entries)}
    arrays = restore_trees({ITEM: targets})[ITEM]
    for i, entry in enumerate(entries):
        saved = arrays[str(i)]
        fields = {f: np.asarray(saved[f]) if f in saved else np.zeros((0,), np.int32) for f in ROLLOUT_FIELDS}
        rollout = Rollout(**fields, steps=np.int32(entry["steps"]))
        batch, layout = place(rollout, i)
        batch["old_logp"] = jax.device_put(jnp.asarray(saved["old_logp"]), batch["mask"].sharding)
        queue.append(SampledBatch(rollout, entry["texts"], entry["seconds"], entry["generated"], entry["extra"],
                                  entry["version"], batch, layout,
                                  results=[ScoreResult(**r) for r in entry["results"]],
                                  settings=entry.get("settings"), data_state=entry.get("data_state")))
    return restored


def dispatch_ahead(queued: int, max_staleness: int, remaining: int) -> bool:
    """With the sampler on devices of its own: whether a step whose queue holds `queued` batches (this one's
    included, `remaining` steps left in the stage) dispatches one more ahead. Only while the queue is no longer
    than k, so a queue saved under a larger max_staleness drains to k (it kept its length, and its staleness,
    for the rest of the stage: each step took one and dispatched one)."""
    return queued <= max_staleness and queued < remaining


def queue_saver(queue, pool: RewardPool, with_experts: bool) -> Callable[[], tuple[dict, Any]]:
    """What UpdateStage.finish_step calls when it saves: the queue's trees and meta at that moment."""
    return lambda: save_queue(list(queue), pool, with_experts)
