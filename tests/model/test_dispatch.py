"""`expert_ffn` under the 8-device CPU mesh for any token count: the training layouts (weights split over
`fsdp`, gathered inside the dispatch) pad the tokens to a multiple of the batch's axes (`_pad_tokens`) and
equal the dense reference, forward and backward; padded copies route to no expert on any kernel path,
the exchange's included."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.model import dispatch
from r1jax.model.dispatch import expert_ffn
from r1jax.rl.sampler_layout import EXPERTS_OVER_TENSOR
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.rules import Rules
from tests.model.test_moe import dense_reference, dispatch_case

# (data, fsdp, expert, tensor), preset: the training layouts, and the sampler's (tokens whole when they do
# not divide its batch axes: no weight is split over `fsdp` there, so nothing is padded)
MESHES = [((1, 2, 2, 2), "fsdp_expert_tensor"), ((2, 2, 2, 1), "fsdp_expert_tensor"), ((1, 8, 1, 1), "fsdp"),
          ((2, 2, 2, 1), "inference")]
KERNELS = [("blocked", False), ("ragged", True)]  # an update's forward; a TPU decode step's chunks
exchange = dispatch._exchange


def _mesh(shape):
    return build_mesh(ShardingConfig(data=shape[0], fsdp=shape[1], expert=shape[2], tensor=shape[3]))


@pytest.mark.parametrize("impl,chunked", KERNELS, ids=lambda v: str(v))
@pytest.mark.parametrize("tokens", [1, 6, 8, 13])
@pytest.mark.parametrize("shape,preset", MESHES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_any_token_count_under_a_mesh_equals_the_dense_reference(shape, preset, tokens, impl, chunked):
    """1, 6 and 13 tokens do not divide data x fsdp x expert (8 or 4 devices): under FSDP that was a trace-time
    error (the gathered weights made the output vary over `fsdp`, the tokens whole)."""
    x, chosen, weights, wg, wu, wd = dispatch_case(tokens, 16, 2)
    with use_mesh(_mesh(shape), Rules.preset(preset)):
        got = jax.jit(lambda *a: expert_ffn(*a, impl=impl, block_size=8, chunked=chunked))(x, chosen, weights,
                                                                                            wg, wu, wd)
    assert got.shape == x.shape
    np.testing.assert_allclose(np.asarray(got), dense_reference(x, chosen, weights, wg, wu, wd), atol=1e-5)


def _loss(impl):
    return lambda x, chosen, weights, *w: jnp.sum(jnp.sin(expert_ffn(x, chosen, weights, *w, impl=impl,
                                                                      block_size=8)))


@functools.cache
def _unsharded_gradient(impl):
    """(the jitted value and gradient of 13 tokens' loss, its unsharded result), once per kernel for every mesh
    (each mesh's shape differs: JAX's jit cache keys on the mesh, not on r1jax's rules)."""
    grads = jax.jit(jax.value_and_grad(_loss(impl), argnums=(0, 2, 3, 4, 5)))
    return grads, grads(*dispatch_case(13, 16, 2))


@pytest.mark.parametrize("impl", ["blocked", "blocked_autodiff"])
@pytest.mark.parametrize("shape,preset", MESHES[:3], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v)
def test_the_gradient_of_an_odd_token_count_under_fsdp_equals_unsharded(shape, preset, impl):
    """An update over 13 tokens (packed rows, a last partial batch): the gradients of the tokens, combine
    weights and experts' weights equal the unsharded ones; the padded rows' gradients are dropped."""
    grads, expected = _unsharded_gradient(impl)
    x, chosen, weights, wg, wu, wd = dispatch_case(13, 16, 2)
    with use_mesh(_mesh(shape), Rules.preset(preset)):
        got = grads(x, chosen, weights, wg, wu, wd)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_padded_tokens_stay_split_and_the_weight_gradient_is_reduce_scattered():
    """13 tokens over data 2 x fsdp 2 x expert 2: padded to 16, two per device, so the experts' weights are
    still gathered inside the dispatch and their gradient goes back as a reduce-scatter of each device's
    shard; no all-reduce of a whole [local experts, D, F] gradient (the cost of gathering them outside)."""
    x, chosen, weights, wg, wu, wd = dispatch_case(13, 16, 2)
    with use_mesh(_mesh((2, 2, 2, 1)), Rules.preset("fsdp_expert_tensor")):
        text = jax.jit(jax.grad(_loss("blocked"), argnums=(3, 4, 5))).lower(
            x, chosen, weights, wg, wu, wd).compile().as_text()
    scattered = {s for line in text.splitlines() if re.search(r" reduce-scatter(-start)?\(", line)
                 for s in re.findall(r"f32\[[\d,]*\]", line.split(" = ")[1].split("reduce-scatter")[0])}
    reduced = {s for line in text.splitlines() if re.search(r" all-reduce(-start)?\(", line)
               for s in re.findall(r"f32\[[\d,]*\]", line.split(" = ")[1].split("all-reduce")[0])}
    assert {"f32[8,8,12]", "f32[8,12,8]"} <= scattered  # 8 local experts, D 16 / fsdp 2, F 12
    assert not {"f32[8,16,12]", "f32[8,12,16]"} & (scattered | reduced)


def _exchange_mesh():
    """expert 4 x tensor 2, whole experts over both (DeepSeek-V3's sampler layout): 72 tokens top-1 exchange
    their copies (18 rows a device; test_moe_decode's exchange tests)."""
    return _mesh((1, 1, 4, 2)), Rules.preset("inference", EXPERTS_OVER_TENSOR)


@pytest.mark.parametrize("impl,chunked", KERNELS + [("blocked", True), ("blocked_autodiff", False)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("where", ["fsdp", "fsdp_expert_tensor", "exchange"])
def test_padded_copies_route_to_no_expert(where, impl, chunked, monkeypatch):
    """64 tokens and the 8 rows `_pad_tokens` appends (expert E, weight 0), given to the dispatch as tokens
    (they take part in every sort, layout, chunk and exchange): the 64 rows' outputs are those of the dense
    reference, and the 8 read exactly 0 though they hold infinities (whatever a kernel made of them).
    fsdp 8: every expert on each device (no expert offset, no mask); fsdp 2 x expert 2 x tensor 2: E/2
    experts each; the exchange: one expert each."""
    calls = []
    monkeypatch.setattr(dispatch, "_exchange", lambda *a, **k: calls.append(k) or exchange(*a, **k))
    x, chosen, weights, wg, wu, wd = dispatch_case(64, 8, 1)
    shape = {"fsdp": (1, 8, 1, 1), "fsdp_expert_tensor": (1, 2, 2, 2)}.get(where)
    mesh, rules = _exchange_mesh() if where == "exchange" else (_mesh(shape), Rules.preset(where))
    with use_mesh(mesh, rules):
        padded = dispatch._pad_tokens(x, chosen, weights, ("expert",), {"expert": 72}, 8)
        padded = (padded[0].at[64:].set(jnp.inf), *padded[1:])
        got = jax.jit(lambda *a: expert_ffn(*a, impl=impl, block_size=8, chunked=chunked))(*padded, wg, wu, wd)
    assert padded[0].shape == (72, 16) and np.all(np.asarray(padded[1][64:]) == 8)
    assert bool(calls) == (where == "exchange" and chunked)
    np.testing.assert_allclose(np.asarray(got)[:64], dense_reference(x, chosen, weights, wg, wu, wd), atol=1e-5)
    assert np.all(np.asarray(got)[64:] == 0)


@pytest.mark.parametrize("where", [None, "fsdp", "fsdp_expert_tensor"])
def test_whatever_a_kernel_leaves_in_padded_rows_reads_zero(where, monkeypatch):
    """A TPU kernel may leave anything in the rows it was given no copy for (CPU's kernels leave 0): a NaN there,
    times combine weight 0, would still reach real tokens through attention's values. The local kernel is made
    to write NaN into the padded rows (every copy to expert E = 8); the dispatch's output reads exactly 0 there
    and the dense reference elsewhere, with no mesh and under one."""
    real = dispatch.local_expert_ffn

    def leaves_nan(x_TD, experts_TK, *args, **kwargs):
        y_TD = real(x_TD, experts_TK, *args, **kwargs)
        return jnp.where((experts_TK == 8).all(axis=1, keepdims=True), jnp.nan, y_TD)

    monkeypatch.setattr(dispatch, "local_expert_ffn", leaves_nan)
    x, chosen, weights, wg, wu, wd = dispatch_case(64, 8, 1)
    shape = {"fsdp": (1, 8, 1, 1), "fsdp_expert_tensor": (1, 2, 2, 2)}.get(where, (1, 8, 1, 1))
    run = jax.jit(lambda *a: expert_ffn(*a, impl="blocked", block_size=8))
    with use_mesh(_mesh(shape), Rules.preset(where or "fsdp")):
        padded = dispatch._pad_tokens(x, chosen, weights, ("expert",), {"expert": 72}, 8)
        if where is not None:
            got = run(*padded, wg, wu, wd)
    if where is None:  # no mesh: the dispatch's single-device path
        got = run(*(jax.device_put(a, jax.devices()[0]) for a in padded), wg, wu, wd)
    np.testing.assert_allclose(np.asarray(got)[:64], dense_reference(x, chosen, weights, wg, wu, wd), atol=1e-5)
    assert np.all(np.asarray(got)[64:] == 0)


def test_bfloat16_tokens_gathered_over_the_expert_axis_come_back_bfloat16():
    """bfloat16 tokens are all-gathered apart from their float32 routes (one array with them would be float32):
    the output keeps the tokens' dtype and equals the dense reference to bfloat16's precision."""
    x, chosen, weights, wg, wu, wd = dispatch_case(8, 16, 2)
    x, wg, wu, wd = (a.astype(jnp.bfloat16) for a in (x, wg, wu, wd))
    with use_mesh(_mesh((1, 2, 2, 2)), Rules.preset("fsdp_expert_tensor")):
        got = jax.jit(lambda *a: expert_ffn(*a, impl="blocked", block_size=8))(x, chosen, weights, wg, wu, wd)
    assert got.dtype == jnp.bfloat16
    x, wg, wu, wd = (np.asarray(a, np.float32) for a in (x, wg, wu, wd))
    want = dense_reference(x, chosen, weights, wg, wu, wd)
    np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=3e-2, rtol=3e-2)
