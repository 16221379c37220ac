"""Resuming over a queue of batches sampled ahead (rl.train.ahead) under a changed config: a batch sampled or
scored under settings the run changed (G, the rewards, the sampling) is dropped with a log line and its prompts
drawn again in order; the batches that still match are kept; a queue longer than a smaller max_staleness drains,
said in a log line. The unit tests restore a checkpoint's meta with stand-ins for the reads; the end-to-end one
runs tests/rl/data/stale_tiny.yaml at max_staleness 2 in a real process (tests/rl/staleness_probe.py)."""

import copy
import functools
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.errors import UserError
from r1jax.rl.config import load_config
from r1jax.rl.train.ahead import ITEM, restore_queue

from tests.rl.conftest import REPO, latest_checkpoint, metrics_rows, subprocess_env
from tests.rl.signal_at_step import SERIES_MARK
from tests.rl.test_staleness import CONFIG


def entry(settings, next_index):
    """A queued batch's meta as save_queue writes it: 2 prompts x G 2, drawn at data position `next_index`."""
    return {"texts": ["a", "b", "c", "d"], "seconds": 0.1, "generated": 4.0, "extra": {}, "version": 0, "steps": 1,
            "results": [{"total": float(i), "rewards": {}, "status": "ok"} for i in range(4)], "settings": settings,
            "data_state": {"next_index": next_index},
            "shapes": {"tokens_BT": [[4, 3], "int32"], "valid_BT": [[4, 3], "bool"], "positions_BT": [[4, 3], "int32"],
                       "logprobs_BN": [[4, 1], "float32"], "lengths_B": [[4], "int32"],
                       "old_logp": [[4, 2], "float32"]}}


def restore(entries, settings, with_experts=False):
    """restore_queue over `entries` (a checkpoint 7's meta) and how many times it read the checkpoint."""
    reads = []

    def restore_trees(targets):
        reads.append(sorted(targets[ITEM]))
        return targets

    def place(rollout, ahead):
        reads.append(("placed ahead", ahead))  # each batch for its own step: 0 for the next, 1 after it, ...
        return {"mask": jnp.zeros((4, 2), bool)}, {"padding_fraction": 0.0}

    meta = {"checkpoint": 7, ITEM: entries}
    restored = restore_queue(meta, restore_trees, place, with_experts, settings)
    placed = [r[1] for r in reads if r[0] == "placed ahead"]
    assert placed == list(range(len(placed)))
    return restored, [r for r in reads if r[0] != "placed ahead"]


def settings(*overrides):
    """The settings a batch records, for CONFIG under `overrides`: a fresh copy of each computed once (a
    load_config costs ~0.1 s and the tests ask for the same ones ~20 times)."""
    return copy.deepcopy(_settings(overrides))


@functools.cache
def _settings(overrides: tuple[str, ...]) -> dict:
    from r1jax.rl.train.ahead import sampled_under

    return sampled_under(load_config(CONFIG, list(overrides)))


def test_a_batch_remembers_the_settings_its_data_means_something_under():
    from r1jax.rl.train.ahead import settings_changes

    saved = settings()
    assert saved["grpo.group_size"] == 2 and saved["grpo.prompts_per_step"] == 4
    assert saved["rewards.names"] == ["accuracy", "format", "has_digit"] and saved["rewards.weights"] == [1.0] * 3
    assert json.loads(json.dumps(saved)) == saved  # as a checkpoint's meta gives it back
    for override, key in [("grpo.group_size=4", "grpo.group_size"), ("grpo.temperature=1.0", "grpo.temperature"),
                          ("grpo.prompts_per_step=8", "grpo.prompts_per_step"),
                          ("sampling.max_new_tokens=16", "sampling.max_new_tokens"),
                          ("sampling.top_p=0.9", "sampling.top_p"), ("sampling.top_k=5", "sampling.top_k"),
                          ("rewards.code.wall_s=5.0", "rewards.code.wall_s"),  # nested sections by full key
                          ("tokenizer.template=r1_zero", "tokenizer.template"),
                          ("rewards.weights=[1.0,0.5,1.0]", "rewards.weights"),
                          ("rewards.max_length=512", "rewards.max_length")]:
        assert [c.split(":")[0] for c in settings_changes(saved, settings(override))] == [key], override
    # the update's settings apply when it is updated on: they keep a batch
    assert settings_changes(saved, settings("grpo.kl_coef=0.1", "grpo.max_staleness=0", "optimizer.lr=0.1")) == []
    assert settings_changes(None, saved) == [] and settings_changes(saved, None) == []
    # a setting one side does not record (a later version's) drops nothing
    assert settings_changes(saved, {**saved, "sampling.min_p": 0.1}) == []
    assert settings_changes({**saved, "sampling.min_p": 0.1}, saved) == []


def test_a_queue_sampled_under_the_same_settings_is_kept_whole():
    same = settings()
    restored, reads = restore([entry(same, 3), entry(same, 4)], settings())
    assert len(restored.batches) == 2 and restored.rewind is None and restored.note is None
    assert reads == [["0", "1"]] and [b.settings for b in restored.batches] == [same, same]
    assert [b.data_state for b in restored.batches] == [{"next_index": 3}, {"next_index": 4}]


def test_a_queue_sampled_under_another_group_size_is_dropped_and_its_prompts_drawn_again():
    restored, reads = restore([entry(settings(), 3), entry(settings(), 4)], settings("grpo.group_size=4"))
    assert len(restored.batches) == 0 and reads == []  # nothing read, nothing placed
    assert restored.rewind == {"next_index": 3}  # the first dropped batch's prompts come next
    assert restored.note == ("dropped 2 of the 2 batch(es) sampled ahead in checkpoint 7, sampled and scored under "
                             "other settings (grpo.group_size: 2 -> 4): their prompts are sampled and scored again "
                             "under this run's")


def test_a_changed_reward_set_names_names_and_weights():
    restored, _ = restore([entry(settings(), 3)], settings("rewards.names=[accuracy,format]",
                                                           "rewards.weights=[1.0,1.0]"))
    assert len(restored.batches) == 0 and restored.rewind == {"next_index": 3}
    assert ("rewards.names: ['accuracy', 'format', 'has_digit'] -> ['accuracy', 'format']; "
            "rewards.weights: [1.0, 1.0, 1.0] -> [1.0, 1.0]") in restored.note


def test_the_batches_before_the_first_that_differs_are_kept_and_the_rest_dropped_in_order():
    """A queue saved by a resumed run can hold batches of two configs: those before the first that differs are
    kept, it and every later one dropped (even one that matches: the iterator draws prompts in order)."""
    now, before = settings("sampling.max_new_tokens=16"), settings()
    restored, reads = restore([entry(now, 3), entry(before, 4), entry(now, 5)], now)
    assert len(restored.batches) == 1 and reads == [["0", "1", "2"]]
    assert restored.batches[0].data_state == {"next_index": 3} and restored.rewind == {"next_index": 4}
    assert restored.note.startswith("dropped 2 of the 3 batch(es)")
    assert "sampling.max_new_tokens: 8 -> 16" in restored.note


def test_batches_saved_before_settings_were_recorded_are_kept():
    restored, _ = restore([entry(None, 3)], settings("grpo.group_size=4"))
    assert len(restored.batches) == 1 and restored.note is None


def test_routing_is_required_of_the_kept_batches_only():
    """A dropped batch is never updated on: its missing routing record does not stop the resume."""
    restored, _ = restore([entry(settings(), 3)], settings("grpo.group_size=4"), with_experts=True)
    assert len(restored.batches) == 0
    routed = entry(settings(), 3)
    routed["shapes"]["experts_LBTK"] = [[1, 4, 3, 2], "int32"]
    with pytest.raises(UserError, match="routing_replay=true, but the checkpoint's 2 batch"):
        restore([routed, entry(settings(), 4)], settings(), with_experts=True)  # one kept batch lacks it


def probe_series(*runs, copies=(), timeout=900):
    """tests/rl/staleness_probe.py's `groups` runs of CONFIG, one per (OUT, STEP, ARGS...) of `runs`, in one
    process (`groups-series`), the run directories `copies` ([(FROM, TO)]) copied after the first: each run's
    console output as one line (the console wraps its lines)."""
    spec = [{"out": str(out), "step": step, "argv": ["--cpu-devices", "2", "train", str(CONFIG), *map(str, args)],
             "copies": [list(map(str, c)) for c in copies] if i == 0 else []}
            for i, (out, step, *args) in enumerate(runs)]
    command = [sys.executable, "-m", "tests.rl.staleness_probe", "groups-series", json.dumps(spec)]
    result = subprocess.run(command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return [" ".join(err.split()) for err in result.stderr.split(SERIES_MARK)[1:]]


def lines(path, call):
    return [line for line in map(json.loads, path.read_text().splitlines()) if line["call"] == call]


def test_a_resume_with_another_group_size_groups_by_it_and_draws_the_dropped_prompts_again(tmp_path):
    """Stopped after step 1 at max_staleness 2 (the checkpoint holds batches 1 and 2, G = 2, sampled by version
    0). Resumed with G = 4: both are dropped, batches 1-3 sampled again at G = 4 from batch 1's prompts on, and
    every update's runs of 4 rows hold one prompt each (the queued G = 2 batches were reshaped by 4: two prompts
    normalised together). Resumed with max_staleness 0 instead: the queue drains, its staleness logged. The
    three runs are one process (the later ones reuse the first one's traced and compiled programs); the
    stopped run directory is copied for the second resume and as it was left."""
    run_dir, first, second = tmp_path / "run", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    _, out, drain_out = probe_series(
        (first, 1, "grpo.max_staleness=2", "--run-dir", run_dir),
        (second, 0, "grpo.max_staleness=2", "grpo.group_size=4", "--run-dir", run_dir),
        (tmp_path / "drain.jsonl", 0, "grpo.max_staleness=0", "--run-dir", tmp_path / "drain"),
        copies=[(run_dir, tmp_path / "drain"), (run_dir, tmp_path / "stopped")])
    assert latest_checkpoint(tmp_path / "stopped") == 1
    meta = json.loads((tmp_path / "stopped" / "checkpoints" / "1" / "meta" / "metadata").read_text())
    assert [b["version"] for b in meta[ITEM]] == [0, 0]

    assert ("dropped 2 of the 2 batch(es) sampled ahead in checkpoint 1, sampled and scored under other settings "
            "(grpo.group_size: 2 -> 4)") in out
    drawn_before, drawn = lines(first, "generate"), lines(second, "generate")
    assert [d["samples"] for d in drawn_before[:3]] == [2, 2, 2] and [d["samples"] for d in drawn[:3]] == [4, 4, 4]
    assert [d["prompts"] for d in drawn[:2]] == [d["prompts"] for d in drawn_before[1:3]]  # no prompt skipped
    updates = lines(second, "update")
    assert [(u["rows"], u["prompts"], u["groups_of_one_prompt"]) for u in updates] == [(16, 4, True)] * 3
    rows = metrics_rows(run_dir)
    assert [r["global_step"] for r in rows] == [1, 2, 3, 4]
    assert [r["staleness"] for r in rows[1:]] == [0, 1, 2]  # batches 1-3 sampled again by version 1

    assert ("grpo.max_staleness=0: the next 2 steps update on the checkpoint's 2 batch(es) sampled ahead "
            "(staleness up to 2, as their rows log)") in drain_out and "dropped" not in drain_out
    assert [r["staleness"] for r in metrics_rows(tmp_path / "drain")[1:]] == [1, 2, 0]


def test_a_saved_queue_restores_its_rollouts_scores_and_data_position():
    """save_queue then restore_queue by hand: the routing record only with routing replay, the behaviour
    log-probs, texts, scores, settings and each batch's data position come back as they went in."""
    from r1jax.rl.rewards import ScoreResult
    from r1jax.rl.sampler import Rollout
    from r1jax.rl.train.ahead import SampledBatch, save_queue

    class Pool:
        def collect(self, pending):
            return [ScoreResult({"accuracy": float(i % 2)}, float(i % 2), "ok") for i in range(4)]

    def batch(version):
        tokens = np.arange(12, dtype=np.int32).reshape(4, 3) + version
        rollout = Rollout(jnp.asarray(tokens), jnp.ones((4, 3), bool), jnp.zeros((4, 3), jnp.int32),
                          jnp.full((4, 1), -0.5), jnp.full((4,), 1, jnp.int32),
                          jnp.full((1, 4, 3, 2), version, jnp.int32), np.int32(version + 2))
        return SampledBatch(rollout, ["a", "b", "c", "d"], 0.1, 4.0, {}, version,
                            {"mask": jnp.zeros((4, 2), bool), "old_logp": jnp.full((4, 2), -float(version))}, {},
                            pending="handle", settings=settings(), data_state={"next_index": 2 * version})

    for with_experts in (False, True):
        trees, meta = save_queue([batch(1), batch(2)], Pool(), with_experts)
        assert ("experts_LBTK" in trees[ITEM]["0"]) == with_experts
        json.dumps(meta)  # the checkpoint's meta is JSON
        restored = restore_queue({"checkpoint": 7, **meta}, lambda targets: trees,
                                 lambda rollout, ahead: ({"mask": jnp.zeros((4, 2), bool)}, {}), with_experts,
                                 settings())
        assert restored.note is None
        got = list(restored.batches)
        assert [b.version for b in got] == [1, 2] and [int(b.rollout.tokens_BT[0, 0]) for b in got] == [1, 2]
        assert [b.data_state for b in got] == [{"next_index": 2}, {"next_index": 4}]
        assert [int(b.rollout.steps) for b in got] == [3, 4]  # each batch's own decode steps
        assert [r.total for r in got[1].results] == [0.0, 1.0, 0.0, 1.0] and got[0].texts == ["a", "b", "c", "d"]
        np.testing.assert_array_equal(np.asarray(got[1].batch["old_logp"]), np.full((4, 2), -2.0))
    # the queue restored by a run that replays routing carries each batch's own record
    assert {int(np.asarray(b.rollout.experts_LBTK).max()) for b in got} == {1, 2}
