"""The shipped Qwen3 presets' sampler copies (rl.sampler_layout's inference sharding, from each config's
sampling.mesh and rules) on their v5p slices, computed from the abstract policy's shapes: each device holds
about an even share of the weights. Sampling in the inference layout: test_sampler_layout.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.model.factory import abstract_policy, in_compute_dtype
from r1jax.rl.config import load_config
from r1jax.rl.sampler_layout import inference_sharding
from r1jax.sharding import MESH_AXES


def _held_per_device(config_name: str, devices: int) -> tuple[float, float]:
    """(bytes of the config's sampler copy each of `devices` devices holds, an even share of the whole copy)."""
    config = load_config(config_name)
    sharding = inference_sharding(config.sampling, config.model, devices)
    mesh_shape, rules = dict(zip(MESH_AXES, sharding.shape_for(devices))), sharding.logical_rules()
    copy = jax.eval_shape(lambda s: in_compute_dtype(config.model, s), nnx.state(abstract_policy(config.model)))
    total = held = 0
    for var in jax.tree.leaves(copy, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        spec = rules.spec(var.get_metadata()["axes"], var.shape, mesh_shape)
        split = [np.prod([mesh_shape[a] for a in ((p,) if isinstance(p, str) else p or ())]) for p in spec]
        size = jnp.dtype(var.get_value().dtype).itemsize
        total += np.prod(var.shape) * size
        held += np.prod([n // s for n, s in zip(var.shape, split + [1] * len(var.shape))]) * size
    return held, total / devices


@pytest.mark.parametrize("config_name, devices, bound",
                         [("qwen3_30b_a3b_r1zero", 32, 1.5), ("qwen3_30b_a3b", 8, 1.1)])
def test_the_qwen_presets_samplers_copy_on_their_v5p_slices_holds_each_device_about_an_even_share(
        config_name, devices, bound):
    """The family's default (experts over expert=devices, tensor=1) left every attention weight and the LM head
    whole on each device, read again at each decode step: qwen3_30b_a3b_r1zero on v5p-64's 32 chips 5.54 GB of
    weights per device against an even share of 1.93, qwen3_30b_a3b on v5p-16's 8 chips 10.33 GB against 7.63
    (1.35x). Their sampling.mesh and rules split heads, vocabulary and LM head over tensor: 2.75 and 8.0 GB."""
    held, even = _held_per_device(config_name, devices)
    assert held <= bound * even, (held / 1e9, even / 1e9)
