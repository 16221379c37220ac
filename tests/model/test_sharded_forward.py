"""The sharded forward pass (and its gradient) equals the single-device one, for every mesh shape.

Each family's policy, inputs and single-device results are computed once for all its meshes
(`single_device`): they do not depend on the mesh, and each jit of a new closure traces and lowers the model
again (the module, warm compilation cache: 38.8 s -> 28.0 s)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from r1jax.model.factory import init_policy
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import state_shardings
from r1jax.sharding.rules import Rules
from tests.model.tiny import FAMILIES

MESHES = [(8, 1, 1, 1), (2, 2, 2, 1), (1, 2, 2, 2), (1, 1, 8, 1)]


def _policy_with_bias(cfg):
    policy = init_policy(cfg, seed=3)
    for segment in policy.segments:  # a non-zero routing bias exercises selection-only bias
        mlp = segment.block.mlp
        if hasattr(mlp, "e_score_correction_bias"):
            bias = mlp.e_score_correction_bias
            bias[...] = 0.05 * jax.random.normal(jax.random.key(7), bias.shape)
    return policy


def _forward(graphdef):
    def run(state, tokens, valid):
        out = nnx.merge(graphdef, state)(tokens, valid_BT=valid)
        return out.logits_BTV, out.aux.counts_E, out.aux.load_balance_loss, out.aux.z_loss
    return run


def _inputs(cfg):
    tokens = jax.random.randint(jax.random.key(0), (8, 12), 0, cfg.vocab_size)
    valid = jnp.arange(12)[None, :] < jnp.array([12, 9, 12, 5, 12, 12, 7, 12])[:, None]
    return tokens, valid


def _probe(cfg):
    return jax.random.normal(jax.random.key(5), (8, 12, cfg.vocab_size))


@functools.cache
def single_device(family: str, what: str):
    """(graphdef, state, tokens, valid, the single-device forward or gradient) of a family, built once."""
    cfg = FAMILIES[family]
    graphdef, state = nnx.split(_policy_with_bias(cfg))
    tokens, valid = _inputs(cfg)
    if what == "forward":
        expected = jax.jit(_forward(graphdef))(state, tokens, valid)
    else:
        expected = jax.jit(_loss(graphdef))(state, tokens, valid, _probe(cfg))
    return graphdef, state, tokens, valid, expected


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("mesh_shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_forward_equals_single_device(family, mesh_shape):
    graphdef, state, tokens, valid, expected = single_device(family, "forward")
    mesh = build_mesh(ShardingConfig(*mesh_shape))
    rules = Rules.preset("fsdp_expert_tensor")
    sharded_state = jax.device_put(state, state_shardings(state, mesh, rules))
    batch = NamedSharding(mesh, P(("data", "fsdp", "expert")))
    with use_mesh(mesh, rules):
        got = jax.jit(_forward(graphdef))(sharded_state, jax.device_put(tokens, batch),
                                          jax.device_put(valid, batch))
    logits = np.asarray(got[0])
    valid_np = np.asarray(valid)
    np.testing.assert_allclose(logits[valid_np], np.asarray(expected[0])[valid_np], atol=1e-5, rtol=0)
    for name, a, b in zip(("counts", "load_balance_loss", "z_loss"), got[1:], expected[1:]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-6, err_msg=name)
    assert float(jnp.sum(got[1][0])) == 2 * int(valid.sum())  # counts are global: every real token x top-k


def _loss(graphdef):
    def loss(state, tokens, valid, probe):
        out = nnx.merge(graphdef, state)(tokens, valid_BT=valid)
        return jnp.sum(jnp.where(valid[..., None], out.logits_BTV * probe, 0.0)) + jnp.sum(
            out.aux.load_balance_loss)
    return jax.grad(loss)


@functools.cache
def sharded_gradient(family: str, mesh_shape: tuple[int, ...]):
    """(the sharded gradient, its compiled program's text) of a family on a mesh, compiled once: the gradient
    test and the reduce-scatter test read the same program (each compile of it took about 8 s)."""
    graphdef, state, tokens, valid, _ = single_device(family, "gradient")
    mesh = build_mesh(ShardingConfig(*mesh_shape))
    rules = Rules.preset("fsdp_expert_tensor")
    sharded_state = jax.device_put(state, state_shardings(state, mesh, rules))
    batch = NamedSharding(mesh, P(("data", "fsdp", "expert")))
    args = (sharded_state, *(jax.device_put(x, batch) for x in (tokens, valid, _probe(FAMILIES[family]))))
    with use_mesh(mesh, rules):
        compiled = jax.jit(_loss(graphdef)).lower(*args).compile()
        return compiled(*args), compiled.as_text()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("mesh_shape", [(2, 2, 2, 1), (1, 2, 2, 2)], ids=lambda s: "x".join(map(str, s)))
def test_sharded_gradient_equals_single_device(family, mesh_shape):
    expected = single_device(family, "gradient")[-1]
    got, _ = sharded_gradient(family, mesh_shape)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
        scale = max(1.0, float(np.abs(np.asarray(b)).max()))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5 * scale, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))


def _collectives(hlo_text: str, opcode: str) -> list[str]:
    """The result shapes (tuple elements one by one) of `opcode`'s instructions in a compiled program."""
    lines = [line for line in hlo_text.splitlines() if re.search(rf" {opcode}(-start)?\(", line)]
    return [shape for line in lines for shape in re.findall(r"f32\[[\d,]*\]", line.split(" = ")[1].split(opcode)[0])]


def test_the_experts_weight_gradient_is_reduce_scattered_to_each_devices_shard():
    """The dispatch gathers the experts' hidden axis (FSDP) inside its shard_map: the gradient goes back by a
    reduce-scatter over fsdp and a sum over data of each device's shard. Gathered outside, it was an
    all-reduce of the whole [local experts, D, F] gradient (twice a reduce-scatter's interconnect bytes)."""
    cfg = FAMILIES["qwen3_moe"]
    _, text = sharded_gradient("qwen3_moe", (2, 2, 2, 1))  # data, fsdp, expert, tensor
    e, d, f = cfg.n_routed_experts // 2, cfg.hidden_size, cfg.moe_intermediate_size
    whole = {f"f32[{e},{d},{f}]", f"f32[{e},{f},{d}]"}
    shards = {f"f32[{e},{d // 2},{f}]", f"f32[{e},{f},{d // 2}]"}  # gate and up; down
    assert not whole & set(_collectives(text, "all-reduce") + _collectives(text, "reduce-scatter"))
    assert shards <= set(_collectives(text, "reduce-scatter"))
    assert shards <= set(_collectives(text, "all-reduce"))  # the sum over data, on the shard


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_moe_layer_over_split_rows_gathers_its_tokens_and_routes_once(family):
    """The sampler's layout over 8 devices (rows over data 2 x expert 4, tensor 1): each MoE layer's forward
    gathers its tokens with their experts and combine weights in one all-gather and sums the outputs back
    with one reduce-scatter; the router's top-k runs on each device's rows. Before, `lax.top_k` gathered every
    row's scores to every device, the tokens, experts and weights were gathered one by one, and a sum over
    `tensor` (one device) added an all-reduce: six collectives per layer at every decode step."""
    graphdef, state, tokens, valid, expected = single_device(family, "forward")
    mesh = build_mesh(ShardingConfig(2, 1, 4, 1))
    rules = Rules.preset("inference")
    sharded_state = jax.device_put(state, state_shardings(state, mesh, rules))
    batch = NamedSharding(mesh, P(("data", "expert")))
    forward = jax.jit(_forward(graphdef))
    with use_mesh(mesh, rules):
        sharded = (sharded_state, jax.device_put(tokens, batch), jax.device_put(valid, batch))
        got = forward(*sharded)
        text = forward.lower(*sharded).compile().as_text()
    valid_np = np.asarray(valid)
    np.testing.assert_allclose(np.asarray(got[0])[valid_np], np.asarray(expected[0])[valid_np], atol=1e-5, rtol=0)
    assert np.array_equal(np.asarray(got[1]), np.asarray(expected[1]))  # every token routed as on one device
    # per MoE layer in the program (a scanned segment's layers share one): an all-gather and a reduce-scatter
    routed = [(found.group(1), line) for line in text.splitlines() if re.search(r"/(dispatch|routing)/", line)
              for found in [re.search(r" (all-gather|all-reduce|reduce-scatter|all-to-all)(?:-start)?\(", line)]
              if found]
    kinds = [kind for kind, _ in routed]
    assert kinds and set(kinds) == {"all-gather", "reduce-scatter"}, "\n".join(line for _, line in routed)
    assert kinds.count("all-gather") == kinds.count("reduce-scatter")
    assert not [line for _, line in routed if "/routing/" in line]
