"""The Pallas decode-attention kernel (model.pallas_attention) against a NumPy dense softmax and the XLA
block-wise read: run in Pallas's TPU interpret mode on the CPU, and compiled by Mosaic for a TPU topology
with libtpu's compile-only devices (no TPU needed)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from r1jax.errors import UserError
from r1jax.model.attention import GQAttention
from r1jax.model.kv_cache import KVRead
from r1jax.model.factory import init_policy
from r1jax.model.pallas_attention import decode_attention, decode_attention_local
from r1jax.sharding.context import use_mesh
from r1jax.sharding.decode_stats import decode_stats
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.topology import abstract_devices
from tests.model.test_decode_attention import decode_logits, decode_step, filled_cache
from tests.model.tiny import QWEN

# No `optimized_xla_compile` here: libtpu's compile for TPU is the same with or without it (`r1jax compile`'s
# report on the tiny aot config: equal figures, equal time), while the interpreted kernel's CPU programs took
# 72 s to compile optimised against 22 s for the whole module as the suite compiles (tests/conftest.py).

LAYERS, SLOTS, KV_HEADS, GROUP, HEAD_DIM = 3, 37, 2, 3, 16
# one filled slot, the whole cache, mid-block, a block's end (blocks of 8), none (gives zeros, as the XLA read)
LENGTHS = (1, SLOTS, 9, 16, 0)


def cache_and_query(seed: int, lengths=LENGTHS):
    """q [B, kv_heads, G, head_dim], K and V [L, B, S, kv_heads, head_dim] (`in_cache_layout` gives the
    cache's), and the visible slots: each row's first lengths[b] slots, less a left-padding hole in row 2."""
    rng = np.random.default_rng(seed)
    rows = len(lengths)
    q = rng.normal(size=(rows, KV_HEADS, GROUP, HEAD_DIM)).astype(np.float32)
    k, v = rng.normal(size=(2, LAYERS, rows, SLOTS, KV_HEADS, HEAD_DIM)).astype(np.float32)
    visible = np.arange(SLOTS)[None, :] < np.array(lengths)[:, None]
    visible[2, :3] = False
    return q, k, v, visible


def in_cache_layout(k, v):
    """K [L, B, kv_heads, head_dim, S] and V [L, B, kv_heads, S, head_dim], as model.attention caches them."""
    return np.transpose(k, (0, 1, 3, 4, 2)), np.transpose(v, (0, 1, 3, 2, 4))


def dense_reference(q, k, v, visible, layer):
    scores = np.einsum("bkgh,bskh->bkgs", q, k[layer]) * HEAD_DIM ** -0.5
    scores = np.where(visible[:, None, None], scores, -np.inf)
    with np.errstate(invalid="ignore"):  # a row with no visible slot: NaN, then zeros
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs = np.nan_to_num(probs / probs.sum(-1, keepdims=True))
    return np.einsum("bkgs,bskh->bkgh", probs, v[layer])


def xla_read(q, k, v, visible, layer, block):
    cfg = dataclasses.replace(QWEN, num_attention_heads=KV_HEADS * GROUP, num_key_value_heads=KV_HEADS,
                              head_dim=HEAD_DIM)
    attention = GQAttention(cfg, nnx.Rngs(0))
    return attention._read_blocks(q, *in_cache_layout(k, v), layer, visible, read=KVRead(jnp.int32(SLOTS), block))


@pytest.mark.parametrize("layer,block", [(0, 8), (2, 64)])  # a short last block; one block for the cache
def test_kernel_equals_the_dense_softmax_and_the_xla_read(layer, block):
    """Only layer `layer`'s visible slots count: every other layer and every slot past a row's last visible
    one is NaN, and the kernel's output is finite and equal to the dense softmax over the clean cache."""
    q, k, v, visible = cache_and_query(seed=layer)
    expected = dense_reference(q, k, v, visible, layer)
    past_live = np.arange(SLOTS)[None, :] >= np.array(LENGTHS)[:, None]
    poisoned = []
    for cache in (k, v):
        cache = cache.copy()
        cache[np.arange(LAYERS) != layer] = np.nan
        cache[layer][past_live] = np.nan
        poisoned.append(cache)
    got = np.asarray(decode_attention_local(q, *in_cache_layout(*poisoned), jnp.int32(layer), visible, block=block,
                                            scale=HEAD_DIM ** -0.5, interpret=True))
    np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)
    xla = np.asarray(xla_read(q, k, v, visible, layer, block))
    np.testing.assert_allclose(got, xla, atol=2e-6, rtol=1e-5)


def test_kernel_scores_far_below_zero_still_weigh_their_values():
    """Every score about -200 (exp underflows to 0 in float32 unless the running max starts below them): the
    kernel equals NumPy's softmax; a running max started at 0 read zeros (survived the tests' scores of ~1)."""
    q, k, v, visible = cache_and_query(seed=5)
    noise = np.random.default_rng(6).normal(size=k.shape).astype(np.float32)
    k = 1.0 + 0.05 * noise
    q = np.full_like(q, -50.0)  # q . k * 16 ** -0.5 = about -200
    got = np.asarray(decode_attention_local(q, *in_cache_layout(k, v), jnp.int32(1), visible, block=8,
                                            scale=HEAD_DIM ** -0.5, interpret=True))
    # scores of ~200 carry float32 rounding of ~1.5e-5 (one ulp) into the weights: 1.4e-5 measured
    np.testing.assert_allclose(got, dense_reference(q, k, v, visible, 1), atol=1e-4, rtol=1e-4)
    assert np.abs(got[0]).max() > 0.1  # row 0 sees one slot: its value, not zeros


def test_under_a_mesh_the_kernel_runs_per_shard_without_gathering_the_cache():
    """Rows over data x fsdp, kv heads over tensor: the shard_map's layout is the cache's own, so the
    compiled program moves no cache between devices, and the result is the single-device one."""
    q, k, v, visible = cache_and_query(seed=7, lengths=LENGTHS[:4])  # rows divide the batch axes (4)
    config = ShardingConfig(data=2, fsdp=2, tensor=2)
    mesh, rules = build_mesh(config), config.logical_rules()
    place = lambda x, axes: jax.device_put(x, NamedSharding(mesh, rules.spec(axes, x.shape, mesh.shape)))
    run = jax.jit(lambda *args: decode_attention(*args, block=8, scale=HEAD_DIM ** -0.5, interpret=True))
    k_cache, v_cache = in_cache_layout(k, v)
    cache_axes = (None, "batch", "act_kv_heads", None, None)
    args = (place(q, ("batch", "act_kv_heads", None, None)), place(k_cache, cache_axes), place(v_cache, cache_axes),
            jnp.int32(1), place(visible, ("batch", None)))
    with use_mesh(mesh, rules):
        hlo = run.lower(*args).compile().as_text()
        got = np.asarray(run(*args))
    assert not any(op in hlo for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce"))
    np.testing.assert_allclose(got, dense_reference(q, k, v, visible, 1), atol=2e-6, rtol=1e-5)


def test_decoding_with_the_kernel_equals_the_xla_read_and_auto_is_the_xla_read_off_tpu():
    """Through the whole model's decode step: `decode_attention: pallas` (the kernel, interpreted) equals
    `xla` up to float rounding; `auto` on the CPU is the XLA read, bit for bit."""
    logits = {}
    for impl in ("xla", "auto", "pallas"):
        policy = init_policy(dataclasses.replace(QWEN, decode_attention=impl), seed=0)
        caches, valid_BS = filled_cache(policy, seed=1)
        logits[impl] = np.asarray(decode_logits(policy, caches, valid_BS, (2, 12, 5), 4)[0])
    assert np.array_equal(logits["auto"], logits["xla"])
    np.testing.assert_allclose(logits["pallas"], logits["xla"], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("topology", ["v5p:1x1x1", "v6e:1x1"])
def test_mosaic_compiles_the_kernel_for_tpu_reading_the_cache_in_place(topology):
    """Compiled for one chip (bfloat16, 4 kv heads of 128, 384 slots in blocks of 256: a short last block): one
    Mosaic kernel call, and no copy or transpose of a cache-shaped array before it. (A cache passed in as an
    argument with slots that do not fill K's 128-slot lane tiles is laid out by XLA to avoid the padding,
    then copied to the kernel's layout; the sampler's caches are made inside its program, laid out for it.)"""
    device = abstract_devices(topology)[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    k_cache = jax.ShapeDtypeStruct((2, 8, 4, 128, 384), jnp.bfloat16, sharding=sharding)
    v_cache = jax.ShapeDtypeStruct((2, 8, 4, 384, 128), jnp.bfloat16, sharding=sharding)
    args = (jax.ShapeDtypeStruct((8, 4, 2, 128), jnp.bfloat16, sharding=sharding), k_cache, v_cache,
            jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding),
            jax.ShapeDtypeStruct((8, 384), jnp.bool_, sharding=sharding))
    run = jax.jit(lambda *a: decode_attention(*a, block=256, scale=128 ** -0.5))
    hlo = run.lower(*args).compile().as_text()
    assert hlo.count('custom_call_target="tpu_custom_call"') == 1
    moves = [line for line in hlo.splitlines() if ("bf16[2,8,4,128,384]" in line or "bf16[2,8,4,384,128]" in line)
             and any(op in line for op in (" copy(", " copy-start(", " transpose("))]
    assert not moves, moves


@pytest.mark.parametrize("impl,kernels", [("auto", 3), ("xla", 0)])
def test_a_decode_step_lowered_for_tpu_on_this_cpu_host_calls_the_kernel_per_layer(impl, kernels):
    """`auto` chooses by the platform the program is lowered for, not by the host's backend: lowered for a
    TPU chip here, each of the tiny model's three layers (three one-layer segments) calls the kernel."""
    policy = init_policy(dataclasses.replace(QWEN, decode_attention=impl), seed=0)
    sharding = jax.sharding.SingleDeviceSharding(abstract_devices("v5p:1x1x1")[0])
    graphdef, state = nnx.split(policy)
    caches, valid_BS = filled_cache(policy, seed=1)
    abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
    args = abstract((state, caches, jnp.asarray(valid_BS), jnp.asarray((2, 12, 5), jnp.int32)))
    hlo = decode_step.lower(graphdef, *args, kv_block=4).as_text()
    assert hlo.count("tpu_custom_call") == kernels


def test_an_unknown_decode_attention_names_the_field():
    with pytest.raises(UserError, match=r"model\.decode_attention='mosaic': must be one of auto, pallas, xla"):
        dataclasses.replace(QWEN, decode_attention="mosaic")


def test_the_decode_report_counts_the_kernel_reading_one_layer_up_to_the_live_slots():
    """sharding.decode_stats reads a compiled decode loop's HBM traffic: the kernel's call takes the whole
    stacked cache as operands but reads one layer's `dynamic_trips` blocks of each row, as the XLA read
    is counted (4 layers of 1,024 slots, blocks of 128, 2 live blocks: 1/16 of the stacked K and V)."""
    sharding = jax.sharding.SingleDeviceSharding(abstract_devices("v5p:1x1x1")[0])
    k_cache = jax.ShapeDtypeStruct((4, 8, 4, 128, 1024), jnp.bfloat16, sharding=sharding)
    v_cache = jax.ShapeDtypeStruct((4, 8, 4, 1024, 128), jnp.bfloat16, sharding=sharding)
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding)
    q = jax.ShapeDtypeStruct((8, 4, 2, 128), jnp.float32, sharding=sharding)

    def decode(q_BKGH, k_cache, v_cache, steps):
        def step(carry):
            i, q_BKGH = carry
            visible = jnp.arange(1024)[None, :] < 200 + i + jnp.arange(8)[:, None]
            return i + 1, decode_attention(q_BKGH, k_cache, v_cache, i % 4, visible, block=128, scale=0.1)
        with jax.named_scope("decode"):
            return jax.lax.while_loop(lambda c: c[0] < steps, step, (jnp.int32(0), q_BKGH))[1]

    hlo = jax.jit(decode).lower(q, k_cache, v_cache, scalar).compile().as_text()
    stats = decode_stats(hlo, dynamic_trips=2)
    live_kv = 2 * (8 * 256 * 4 * 128 * 2)  # K and V: 8 rows of 256 slots of 4 x 128 bfloat16
    assert live_kv <= stats.hbm_bytes < live_kv * 1.1, stats.hbm_bytes
