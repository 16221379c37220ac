"""`sampling.devices` (rl.sampler_devices): the sampler on devices of its own, generating the batch sampled ahead
while the trainer's devices update. A run on 2 CPU devices (trainer on device 0, sampler on device 1) gives the
rows and final weights of the shared-device run on 1 device, to the last digit, with its arrays where they
belong and the generation dispatched before the update; under several processes each gives the sampler an even
share of its devices; bad values are UserErrors naming the key. The runs are real `r1jax train` processes on
tests/rl/data/stale_tiny.yaml (max_staleness 1)."""

import dataclasses
import json
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from flax import nnx

from r1jax.errors import UserError
from r1jax.rl.checkpoint import load_policy
from r1jax.rl.config import load_config
from r1jax.rl.sampler import SamplingConfig
from r1jax.rl.sampler_devices import id_ranges, own_devices_layout, split_devices
from r1jax.sharding.mesh import ShardingConfig, build_mesh

from tests.model.tiny import QWEN
from tests.rl.conftest import REPO, comparable, metrics_rows, subprocess_env
from tests.rl.test_staleness import CONFIG

# eval.top_p 1: the closing evaluation samples with the rollouts' compiled program (R1's 0.95 compiles the
# sampler's filters, one more program in each of the two runs; nothing here reads the evaluation)
OPTIONS = ["stages.0.steps=3", "checkpoint.every=100", "eval.top_p=1.0"]


def train(run_dir, cpu_devices: int, *overrides, probe=()):
    """`r1jax --cpu-devices N train CONFIG` (under tests/rl/sampler_devices_probe.py's `probe` arguments); its
    exit code and stderr."""
    entry = ["tests.rl.sampler_devices_probe", *probe] if probe else ["r1jax"]
    command = [sys.executable, "-m", *entry, "--cpu-devices", str(cpu_devices), "train", str(CONFIG), *OPTIONS,
               *overrides, "--run-dir", str(run_dir)]
    result = subprocess.run(command, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    return result.returncode, result.stderr


def final_params(run_dir):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(load_policy(run_dir)[1]))]


def test_own_sampler_devices_equal_the_shared_run(tmp_path):
    """The trainer on device 0 and the sampler on device 1 against both on one device: the same batches (same
    key, prompts and weights versions), so the same rows and weights to the last digit (both devices are this
    CPU, and each side's programs are the one-device programs of the shared run). A stop and resume with
    devices of its own runs in tests/rl/test_multihost.py (two processes)."""
    shared, own, events = tmp_path / "shared", tmp_path / "own", tmp_path / "events.jsonl"
    code, err = train(shared, 1)
    assert code == 0, err[-3000:]
    code, err = train(own, 2, "sampling.devices=1", probe=(str(events), "TERM", "99"))  # no signal: 3 steps
    assert code == 0, err[-3000:]
    seen = [json.loads(line) for line in events.read_text().splitlines()]
    # step n < 3 samples batch n (step 1's own: batch 0, sampled before it) on device 1 while device 0 updates;
    # step 3 has its batch
    assert [e["event"] for e in seen if e["event"] != "reshard"] == ["generate", "update", "decode"] * 2 + ["update"]
    for e in seen:
        expected = {"reshard": [1], "generate": [0], "update": [0], "decode": None}[e["event"]]
        assert e["devices"] == expected, e  # the sampler's copy on 1; the state and the rollout it gets on 0
    rows = metrics_rows(own)
    assert [r["staleness"] for r in rows] == [0, 1, 1]
    # the weights cross to the sampler's device in each step that samples (the last one has its batch)
    assert [r["time/reshard_s"] > 0 for r in rows] == [True, True, False]
    assert comparable(rows) == comparable(metrics_rows(shared))
    for a, b in zip(final_params(own), final_params(shared)):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("overrides, message", [
    (["sampling.devices=-1"], r"sampling.devices=-1: must be an integer >= 0"),
    (["sampling.devices=1.5"], r"key 'sampling.devices'"),
    (["sampling.devices=1", "grpo.max_staleness=0"],
     r"sampling.devices=1: needs grpo.max_staleness >= 1; at 0 .* no generation to overlap")])
def test_bad_sampling_devices_are_user_errors_naming_the_key(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(CONFIG, overrides)


def test_the_sampler_takes_the_last_devices_and_leaves_the_trainer_at_least_one():
    devices = jax.devices()  # 8 in the tests
    assert split_devices(SamplingConfig()) == (devices, [])
    assert split_devices(SamplingConfig(devices=3)) == (devices[:5], devices[5:])
    with pytest.raises(UserError, match=r"sampling.devices=8: leaves no trainer device of the 8; at most 7"):
        split_devices(SamplingConfig(devices=8))


@dataclasses.dataclass(frozen=True)
class Fake:
    id: int
    process_index: int


def test_under_several_processes_each_gives_the_sampler_an_even_share():
    """2 processes of 4 devices (ids 0-3, 4-7): the sampler takes the last devices/2 of each; the trainer keeps a
    multiple of that share (the weights copy within each process, sharding.transfer)."""
    devices = [Fake(i, i // 4) for i in range(8)]
    train, own = split_devices(SamplingConfig(devices=2), devices)
    assert ([d.id for d in train], [d.id for d in own]) == ([0, 1, 2, 4, 5, 6], [3, 7])
    train, own = split_devices(SamplingConfig(devices=4), devices)
    assert ([d.id for d in train], [d.id for d in own]) == ([0, 1, 4, 5], [2, 3, 6, 7])
    assert split_devices(SamplingConfig(), devices) == (devices, [])
    for count in (3, 6, 8):  # odd; 3 per process would leave 1, not a multiple of 3; none left
        with pytest.raises(UserError, match=rf"sampling.devices={count}: under 2 processes of 4 devices each, "
                                            r".* one of \[2, 4\]"):
            split_devices(SamplingConfig(devices=count), devices)
    with pytest.raises(UserError, match=r"sampling.devices=2: .* 1 devices each, .* needs at least 2 devices per"):
        split_devices(SamplingConfig(devices=2), [Fake(0, 0), Fake(1, 1)])
    with pytest.raises(UserError, match=r"sampling.devices=2: the processes hold unequal device counts \(\[3, 4"):
        split_devices(SamplingConfig(devices=2), devices[1:])


@pytest.mark.parametrize("layout, shape", [("auto", {"expert": 2}), ("inference", {"expert": 2}),
                                           ("train", {"fsdp": 2})])
def test_the_sampler_layout_is_built_over_its_own_devices(layout, shape):
    """Every layout choice (rl.sampler_layout) over the sampler's 2 devices, the trainer's mesh over the other
    6; the training layout is the sharding config over the sampler's devices. Under bfloat16 compute each copy
    holds the weights the layers only use cast in bfloat16 (model.factory.in_compute_dtype), the training
    layout's too (it held float32 master weights: twice the bytes moved and held)."""
    from r1jax.model.factory import init_policy
    from r1jax.rl.update import split_policy

    train_devices, devices = split_devices(SamplingConfig(devices=2))
    sharding = ShardingConfig()
    train_mesh = build_mesh(sharding, train_devices)
    sampling = SamplingConfig(devices=2, layout=layout)
    model = dataclasses.replace(QWEN, compute_dtype="bfloat16")
    placed, note = own_devices_layout(sampling, sharding, model, train_mesh, sharding.logical_rules(), devices)
    assert list(placed.mesh.devices.flat) == devices and placed.train_mesh is train_mesh
    assert {k: v for k, v in placed.mesh.shape.items() if v > 1} == shape
    assert "on devices of its own: [6-7] (the trainer's: [0-5])" in note
    copy = placed.reshard(split_policy(init_policy(model, 0))[1])
    dtypes = {jax.numpy.dtype(x.dtype).name for x in jax.tree.leaves(copy)}
    assert dtypes == {"bfloat16", "float32"}  # (norms, routers and the LM head float32)


def test_device_ids_print_as_runs():
    fake = lambda *ids: [types.SimpleNamespace(id=i) for i in ids]
    assert id_ranges(fake(3, 0, 1, 2, 8, 10, 11)) == "[0-3, 8, 10-11]"
    assert id_ranges(fake(5)) == "[5]"
    assert id_ranges(fake(*range(2048, 2304))) == "[2048-2303]"


def test_a_training_layout_that_does_not_fit_the_sampler_devices_is_a_user_error():
    train_devices, devices = split_devices(SamplingConfig(devices=1), jax.devices()[:3])
    sharding = ShardingConfig(data=-1, fsdp=2)  # fits the trainer's 2 devices, not the sampler's 1
    train_mesh = build_mesh(sharding, train_devices)
    with pytest.raises(UserError, match=r"sampling.devices=1: the sampler's training layout .* does not fit"):
        own_devices_layout(SamplingConfig(devices=1, layout="train"), sharding, QWEN, train_mesh,
                           sharding.logical_rules(), devices)


def test_a_trainer_mesh_that_does_not_fit_the_devices_left_says_how_many_the_sampler_took(tmp_path):
    from r1jax.rl.train.trainer import Trainer

    config = load_config(CONFIG, ["sampling.devices=1", "grpo.max_staleness=1", "sharding.data=8",
                                  "sharding.fsdp=1"])
    with pytest.raises(UserError, match=r"needs 8 devices .* \(sampling.devices=1 leaves the trainer 7 of 8\)"):
        Trainer(config, tmp_path)


def test_a_training_layout_whose_weights_do_not_split_over_the_sampler_devices_is_named_at_once():
    """Trainer 4 devices (fsdp=4 divides the hidden size 32), sampler 3 (fsdp=3 does not): the mesh builds, the
    weights do not split, and that is said when the layout is chosen rather than when the weights move."""
    train_devices, devices = split_devices(SamplingConfig(devices=3), jax.devices()[:7])
    sharding = ShardingConfig(data=1, fsdp=-1)
    train_mesh = build_mesh(sharding, train_devices)
    with pytest.raises(UserError, match=r"sampling.devices=3: the sampler's training layout .* does not fit its 3 "
                                        r"devices: .*\('embed', size 32\) does not divide by mesh axes fsdp of size 3"):
        own_devices_layout(SamplingConfig(devices=3, layout="train"), sharding, QWEN, train_mesh,
                           sharding.logical_rules(), devices)
