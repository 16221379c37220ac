"""The blocked MoE kernels' loop over only the non-empty blocks (always for `blocked`, forward and backward; in
decode steps for `blocked_autodiff` with `model.moe_decode_used_blocks`) against the scan over every block: the
same outputs (to the bit for `blocked_autodiff`, to float rounding for `blocked`, whose sums run in another
order) and gradients, the same rollouts, and the trip count the compile estimate assumes.
The ragged kernel's decode chunks (under expert parallelism) against one pass and a NumPy reference."""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.model.blocked import block_layout, swiglu_blocked, swiglu_blocked_to_tokens
from r1jax.model import dispatch
from r1jax.model.dispatch import chunk_rows, exchange_capacity, expert_ffn, local_expert_ffn
from r1jax.model.factory import init_policy
from r1jax.rl.sampler import Sampler, SamplingConfig
from r1jax.rl.sampler_layout import EXPERTS_OVER_TENSOR
from r1jax.sharding.context import use_mesh
from r1jax.sharding.mesh import ShardingConfig, build_mesh
from r1jax.sharding.params import state_shardings
from r1jax.sharding.rules import Rules
from r1jax.sharding.update_stats import StepStats
from tests.model.test_moe import dense_reference, dispatch_case
from tests.model.tiny import FAMILIES

exchange = dispatch._exchange


@pytest.mark.parametrize("impl", ["blocked", "blocked_autodiff"])
@pytest.mark.parametrize("tokens,experts,block,offset", [(64, 16, 128, 0), (5, 8, 8, 0), (24, 8, 16, 4)])
def test_used_blocks_equal_the_full_scan_to_the_bit(impl, tokens, experts, block, offset):
    """The full scan: `blocked_autodiff` without the option (`blocked` always loops over the used blocks)."""
    x, chosen, weights, wg, wu, wd = dispatch_case(tokens, experts, 2)
    local = (wg, wu, wd) if offset == 0 else tuple(w[offset:] for w in (wg, wu, wd))  # other experts elsewhere
    run = jax.jit(lambda impl, used: local_expert_ffn(x, chosen, weights, *local, expert_offset=offset, impl=impl,
                                                      block_size=block, used_blocks_only=used), static_argnums=(0, 1))
    full, used = np.asarray(run("blocked_autodiff", False)), np.asarray(run(impl, True))
    np.testing.assert_array_equal(used, full)
    if offset == 0:
        np.testing.assert_allclose(used, dense_reference(x, chosen, weights, wg, wu, wd), atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rollouts_with_the_decode_kernel_equal_the_default(family):
    """Greedy and sampled rollouts: tokens equal, log-probs equal (tolerance 0: the blocks run the same
    products)."""
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20], [30, 31]]
    config = SamplingConfig(max_new_tokens=8, prompt_buckets=(8,))
    rollouts = []
    for used in (False, True):
        model = dataclasses.replace(FAMILIES[family], moe_impl="blocked_autodiff", moe_decode_used_blocks=used,
                                    num_hidden_layers=2)  # one MoE, one dense layer: each decoded layer compiles
        graphdef, state = nnx.split(init_policy(model, 0))
        sampler = Sampler(graphdef, config, stop_ids=(3,), pad_id=0)
        rollouts.append([sampler.generate(state, prompts, samples=2, key=jax.random.key(1), temperature=t)
                         for t in (0.0, 1.0)])
    for default, decode_kernel in zip(*rollouts):
        np.testing.assert_array_equal(np.asarray(decode_kernel.tokens_BT), np.asarray(default.tokens_BT))
        np.testing.assert_array_equal(np.asarray(decode_kernel.logprobs_BN), np.asarray(default.logprobs_BN))
        np.testing.assert_array_equal(np.asarray(decode_kernel.experts_LBTK), np.asarray(default.experts_LBTK))


@pytest.mark.parametrize("sizes,rows,block", [
    ([5, 0, 17, 3], 40, 8),  # an expert without rows; 15 rows for other devices' experts sort last
    ([0, 0, 9, 0], 64, 16),  # one used block of an 8-block layout
    ([8, 8, 8, 8], 32, 8),  # every block full
    ([0, 0, 0, 0], 16, 8),  # no local row: no block runs
])
def test_the_kernel_that_adds_into_the_tokens_equals_the_full_scan(sizes, rows, block):
    """`blocked`'s kernel (each used block gathers its rows and adds its weighted output into the tokens, with a
    written-out backward) against JAX's autodiff of the scan over every block of the static layout, the
    outputs weighted and added by hand: outputs and gradients (rows, routing weights, three weights) to float
    rounding (the sums run in another order). Here each copy is its own token (top-1, in sorted order)."""
    keys = jax.random.split(jax.random.key(rows + block), 6)
    x_AD = jax.random.normal(keys[0], (rows, 16))
    wg, wu = (0.3 * jax.random.normal(k, (4, 16, 12)) for k in keys[1:3])
    wd = 0.3 * jax.random.normal(keys[3], (4, 12, 16))
    weights_A = jax.random.uniform(keys[4], (rows,))
    probe = jax.random.normal(keys[5], (rows, 16))
    group_sizes = jnp.array(sizes, jnp.int32)
    lay = block_layout(group_sizes, rows, block)
    kernel = lambda x, w, *ws: swiglu_blocked_to_tokens(x, w, jnp.arange(rows), 1, lay, *ws)
    scan = lambda x, w, *ws: swiglu_blocked(x, group_sizes, *ws, block_size=block) * w[:, None]
    got, want = ([jax.jit(jax.value_and_grad(lambda *a: jnp.sum(jnp.sin(f(*a)) * probe), argnums=range(5)))(
        x_AD, weights_A, wg, wu, wd)] for f in (kernel, scan))
    for name, a, b in zip(("loss", "x", "weights", "w_gate", "w_up", "w_down"), jax.tree.leaves(got),
                          jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.any(np.asarray(got[0][1][0]) != 0) == (sum(sizes) > 0)
    assert int(lay.used) == sum(-(-n // block) for n in sizes)


def test_under_expert_parallelism_the_loops_state_the_even_share_of_blocks_and_the_estimate_counts_it():
    """8 devices (fsdp 2 x expert 4), 8 experts top-2: each device gathers 4 x 8 tokens x 2 = 64 copies, of
    which its 2 experts expect 64 x 2 / 8 = 16, i.e. 2 blocks of 8 rows plus one partial block per local
    expert: 4 of the static layout's 64 / 8 + 2 = 10. The forward and backward loops state it, the update
    estimate counts each block's products that many times (forward 3, backward 8 [8, 16] x [16, 12]-sized
    products: gate and up again, dout Wd^T, then 5), and the gradients equal the unsharded kernel's."""
    tokens, experts, d, f, block, devices_per_expert_group = 64, 8, 16, 12, 8, 4
    x, chosen, weights, wg, wu, wd = dispatch_case(tokens, experts, 2)
    mesh = build_mesh(ShardingConfig(data=1, fsdp=2, expert=4, tensor=1))
    rules = ShardingConfig(preset="fsdp_expert_tensor").logical_rules()
    loss = lambda x, weights, *w: jnp.sum(jnp.sin(expert_ffn(x, chosen, weights, *w, impl="blocked", block_size=block)))
    grads = jax.jit(jax.value_and_grad(loss, argnums=range(5)))
    expected = grads(x, weights, wg, wu, wd)
    with use_mesh(mesh, rules):
        compiled = grads.lower(x, weights, wg, wu, wd).compile()
        got = compiled(x, weights, wg, wu, wd)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
    text = compiled.as_text()
    gathered_copies = tokens // 8 * 4 * 2  # tokens sharded over fsdp x expert (8), gathered over expert (4)
    local = experts // devices_per_expert_group
    trips = -(-gathered_copies * local // experts // block) + local
    assert trips == 2 + 2 < gathered_copies // block + local
    assert sorted(set(re.findall(r"expected_trips_(\d+)/while", text))) == [str(trips)]
    assert StepStats.from_hlo(text).flops == trips * (3 + 2 + 6) * 2 * block * d * f


def test_the_option_leaves_multi_token_forwards_alone():
    """A forward of several tokens per row (training, prefill) never takes `blocked_autodiff`'s used-blocks
    loop (it has no gradient): its gradient traces to the very program of the policy without the option
    (traced only: the program's numbers are the default kernel's, checked in test_moe)."""
    tokens = jnp.arange(12).reshape(2, 6) + 4
    programs = []
    for used in (False, True):
        model = dataclasses.replace(FAMILIES["qwen3_moe"], moe_impl="blocked_autodiff", moe_decode_used_blocks=used)
        graphdef, state = nnx.split(init_policy(model, 0))
        loss = lambda s: jnp.sum(nnx.merge(graphdef, s)(tokens).logits_BTV ** 2)
        programs.append(str(jax.make_jaxpr(jax.grad(loss))(state)))
    assert programs[0] == programs[1]


def test_the_decode_kernel_under_an_expert_parallel_mesh_equals_unsharded():
    """Inside the dispatch's shard_map (each device its own experts and token shards)."""
    model = dataclasses.replace(FAMILIES["deepseek_v3"], moe_impl="blocked", moe_decode_used_blocks=True,
                                num_hidden_layers=2)  # one dense, one MoE layer
    graphdef, state = nnx.split(init_policy(model, 0))
    sampler = Sampler(graphdef, SamplingConfig(max_new_tokens=6, prompt_buckets=(8,)), stop_ids=(3,), pad_id=0)
    prompts, key = [[5, 6, 7], [9, 10, 11, 12], [20], [30, 31]] * 2, jax.random.key(2)  # 8 rows over 8 devices
    expected = sampler.generate(state, prompts, key=key, ignore_eos=True)
    mesh = build_mesh(ShardingConfig(data=2, fsdp=2, expert=2, tensor=1))
    rules = ShardingConfig(preset="fsdp_expert_tensor").logical_rules()
    with use_mesh(mesh, rules):
        got = sampler.generate(jax.device_put(state, state_shardings(state, mesh, rules)), prompts, key=key,
                               ignore_eos=True)
    np.testing.assert_array_equal(np.asarray(got.tokens_BT), np.asarray(expected.tokens_BT))
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(expected.logprobs_BN), atol=1e-5)


def test_decode_steps_take_the_decode_kernel_and_training_forwards_the_update_kernel():
    """`model.moe_decode_impl`: a one-token-per-row forward runs it, a multi-token forward runs `moe_impl`
    (read from the traced programs: ragged_dot appears only where `ragged` runs); rollouts agree with the
    all-`blocked` policy (the kernels sum the same products in another order)."""
    model = dataclasses.replace(FAMILIES["qwen3_moe"], moe_impl="blocked", moe_decode_impl="ragged",
                                num_hidden_layers=2)  # one MoE, one dense layer
    policy = init_policy(model, 0)
    tokens = jnp.arange(12).reshape(2, 6) + 4
    graphdef, state = nnx.split(policy)
    forward = lambda t: lambda s: nnx.merge(graphdef, s)(t).logits_BTV
    assert "ragged_dot" in str(jax.make_jaxpr(forward(tokens[:, :1]))(state))
    assert "ragged_dot" not in str(jax.make_jaxpr(jax.grad(lambda s: jnp.sum(forward(tokens)(s))))(state))
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20], [30, 31]]
    config = SamplingConfig(max_new_tokens=8, prompt_buckets=(8,))
    rollouts = []
    for decode_impl in ("ragged", ""):
        graphdef, state = nnx.split(init_policy(dataclasses.replace(model, moe_decode_impl=decode_impl), 0))
        rollouts.append(Sampler(graphdef, config, stop_ids=(3,), pad_id=0).generate(state, prompts, samples=2))
    np.testing.assert_array_equal(np.asarray(rollouts[0].tokens_BT), np.asarray(rollouts[1].tokens_BT))
    np.testing.assert_allclose(np.asarray(rollouts[0].logprobs_BN), np.asarray(rollouts[1].logprobs_BN), atol=1e-5)


def test_an_unknown_decode_kernel_is_refused_by_name():
    with pytest.raises(ValueError, match="moe_decode_impl"):
        dataclasses.replace(FAMILIES["qwen3_moe"], moe_decode_impl="dense")


@pytest.mark.parametrize("copies,expected,rows", [(512, 16, 64), (4096, 512, 2048), (512, 200, None), (24, 1, 8),
                                                   (64, 16, None)])
def test_a_decode_chunk_holds_four_even_shares_and_is_not_taken_when_it_would_hold_every_copy(copies, expected, rows):
    assert chunk_rows(copies, expected) == rows


@pytest.mark.parametrize("tokens,per_device,crowded", [(36, 1, False), (40, 2, False), (40, 2, True)])
def test_ragged_decode_chunks_equal_one_pass_and_the_dense_reference(tokens, per_device, crowded):
    """Top-3 of 8 experts, one or two per device: each device's tokens x local-experts copies (36 or 80) run in
    chunks of 8 (the last of 36 padded with 4), stating 1 trip where the local copies (about 13 or 30) take 2
    to 4. Crowded: every token sends two copies to the first device's two experts (80 copies, 10 trips):
    nothing is dropped, the sum is the same."""
    x, chosen, weights, wg, wu, wd = dispatch_case(tokens, 8, 3)
    if crowded:
        chosen = jnp.tile(jnp.array([[0, 1, 5]]), (tokens, 1))
    total = jnp.zeros_like(x)
    for start in range(0, 2 if crowded else 8, per_device):
        part = lambda chunked: local_expert_ffn(
            x, chosen, weights, wg[start:start + per_device], wu[start:start + per_device],
            wd[start:start + per_device], expert_offset=start, impl="ragged", expected_copies=1, chunked=chunked)
        chunked = jax.jit(lambda: part(True))
        assert "expected_trips_1/while" in chunked.lower().as_text(debug_info=True)
        np.testing.assert_allclose(np.asarray(chunked()), np.asarray(part(False)), atol=1e-6)
        total = total + chunked()
    if crowded:
        chosen, weights = chosen.at[:, 2].set(0), weights.at[:, 2].set(0)  # expert 5 lives on no device here
    np.testing.assert_allclose(np.asarray(total), dense_reference(x, chosen, weights, wg, wu, wd), atol=1e-4)


def test_ragged_decode_under_expert_parallelism_runs_chunks_and_samples_as_unsharded():
    """16 experts top-2 over expert 8: each device gathers all 128 tokens (256 copies) and expects 32 on its 2
    experts, so it runs chunks of 128 copies, stating 1 trip; the sum over devices equals the reference.
    DeepSeek-V3's tiny policy with 16 experts decodes so (16 rows: 32 copies, chunks of 16) and samples as
    the unsharded policy."""
    x, chosen, weights, wg, wu, wd = dispatch_case(128, 16, 2)
    mesh = build_mesh(ShardingConfig(data=1, fsdp=1, expert=8, tensor=1))
    rules = ShardingConfig(preset="fsdp_expert_tensor").logical_rules()
    ffn = jax.jit(lambda *a: expert_ffn(*a, impl="ragged", chunked=True))
    with use_mesh(mesh, rules):
        assert "expected_trips_1/while" in ffn.lower(x, chosen, weights, wg, wu, wd).as_text(debug_info=True)
        got = ffn(x, chosen, weights, wg, wu, wd)
    np.testing.assert_allclose(np.asarray(got), dense_reference(x, chosen, weights, wg, wu, wd), atol=1e-4)

    model = dataclasses.replace(FAMILIES["deepseek_v3"], n_routed_experts=16, num_hidden_layers=2,
                                moe_impl="blocked", moe_decode_impl="ragged")  # one dense, one MoE layer
    graphdef, state = nnx.split(init_policy(model, 0))
    sampler = Sampler(graphdef, SamplingConfig(max_new_tokens=4, prompt_buckets=(8,)), stop_ids=(3,), pad_id=0)
    prompts, key = [[5, 6, 7], [9, 10, 11, 12], [20], [30, 31]] * 4, jax.random.key(2)  # 16 rows over 8 devices
    expected = sampler.generate(state, prompts, key=key, ignore_eos=True)
    with use_mesh(mesh, rules):
        got = sampler.generate(jax.device_put(state, state_shardings(state, mesh, rules)), prompts, key=key,
                               ignore_eos=True)
    np.testing.assert_array_equal(np.asarray(got.tokens_BT), np.asarray(expected.tokens_BT))
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(expected.logprobs_BN), atol=1e-5)


@pytest.mark.parametrize("rows,top_k,destinations,columns,capacity", [
    (32, 8, 16, 16, 8),  # DeepSeek-V3's sampler on v5p-512: about 1 copy per destination, 8 rows sent, not 32
    (64, 8, 8, 1, None),  # Qwen3's on v5p-16: 64 copies per destination; gathering the 64 tokens moves less
    (16, 1, 4, 2, 8), (16, 2, 4, 2, None), (128, 1, 4, 2, 64),
    (16, 1, 2, 3, None)])  # an even share of 16/6 rounds up to 3: 4 x 3 -> 16 rows, not fewer than 16
def test_the_exchange_sends_four_even_shares_per_destination_where_that_is_fewer_than_the_rows(
        rows, top_k, destinations, columns, capacity):
    assert exchange_capacity(rows, top_k, destinations, columns) == capacity


def _experts_over_expert_and_tensor():
    """8 devices (expert 4 x tensor 2), the sampler's layout for DeepSeek-V3: tokens over `expert`, replicated
    over `tensor`; whole experts over both."""
    mesh = build_mesh(ShardingConfig(data=1, fsdp=1, expert=4, tensor=2))
    return mesh, Rules.preset("inference", EXPERTS_OVER_TENSOR)


@pytest.mark.parametrize("impl", ["ragged", "blocked"])
@pytest.mark.parametrize("experts,crowded", [(8, False), (8, True), (16, False), (16, True)])
def test_an_exchanged_decode_step_equals_the_dense_reference_and_moves_copies_not_tokens(impl, experts, crowded):
    """64 tokens top-1 (16 per `expert` group): each device sends 8 rows to each of the 4 devices of its
    `tensor` column and gets their outputs back, no token gathered. Crowded, 40 tokens pick expert 3 (one
    device's), 10 of each group's: they take a second trip (the loop past the first states none), and none
    is dropped.
    With 16 experts a device holds 2 and sorts what it gets; with 8 it holds one and multiplies what it gets."""
    x, chosen, weights, wg, wu, wd = dispatch_case(64, experts, 1)
    if crowded:
        chosen = jnp.where(jnp.arange(64)[:, None] % 8 < 5, 3, chosen)
    mesh, rules = _experts_over_expert_and_tensor()
    ffn = jax.jit(lambda *a: expert_ffn(*a, impl=impl, chunked=True))
    with use_mesh(mesh, rules):
        lowered = ffn.lower(x, chosen, weights, wg, wu, wd)
        got = ffn(x, chosen, weights, wg, wu, wd)
    np.testing.assert_allclose(np.asarray(got), dense_reference(x, chosen, weights, wg, wu, wd), atol=1e-5)
    assert "exchange/expected_trips_0/while" in lowered.as_text(debug_info=True)
    text = lowered.compile().as_text()
    assert re.findall(r"all-to-all\(", text) and not re.findall(r"all-gather\(|reduce-scatter\(", text)
    # the rows and their outputs, each [destinations 4, capacity 8, D 16] floats (on a CPU, a tuple of pieces):
    # the first trip's and, in the loop, those of the trips past it
    moved = [sum(math.prod(map(int, dims.split(",")))
                 for dims in re.findall(r"f32\[([\d,]+)\]", line.split(" all-to-all(")[0]))
             for line in text.splitlines() if " all-to-all(" in line]
    assert sorted(m for m in moved if m) == [4 * 8 * 16] * 4


def test_an_exchange_where_one_group_alone_needs_a_second_trip_equals_the_dense_reference():
    """The first `expert` group's 16 tokens all pick expert 3 (2 trips of 8 rows to its device), the other
    groups' copies fit one trip: every device runs the most trips any needs (each trip's all-to-all takes all
    of them), and nothing is dropped."""
    x, chosen, weights, wg, wu, wd = dispatch_case(64, 8, 1)
    chosen = jnp.where(jnp.arange(64)[:, None] < 16, 3, chosen)
    mesh, rules = _experts_over_expert_and_tensor()
    with use_mesh(mesh, rules):
        got = jax.jit(lambda *a: expert_ffn(*a, impl="ragged", chunked=True))(x, chosen, weights, wg, wu, wd)
    np.testing.assert_allclose(np.asarray(got), dense_reference(x, chosen, weights, wg, wu, wd), atol=1e-5)


def test_the_sampler_decodes_with_the_exchange_as_unsharded(monkeypatch):
    """DeepSeek-V3's tiny policy, 8 experts top-1, one per device: 64 rows decode through the exchange (seen
    at trace time) and sample the unsharded policy's tokens."""
    calls = []
    monkeypatch.setattr(dispatch, "_exchange", lambda *a, **k: calls.append(k["capacity"]) or exchange(*a, **k))
    model = dataclasses.replace(FAMILIES["deepseek_v3"], num_hidden_layers=2, num_experts_per_tok=1,
                                moe_decode_impl="ragged")  # one dense, one MoE layer
    graphdef, state = nnx.split(init_policy(model, 0))
    sampler = Sampler(graphdef, SamplingConfig(max_new_tokens=4, prompt_buckets=(8,)), stop_ids=(3,), pad_id=0)
    prompts, key = [[5, 6, 7], [9, 10, 11, 12], [20], [30, 31]] * 16, jax.random.key(2)
    expected = sampler.generate(state, prompts, key=key, ignore_eos=True)
    assert not calls
    mesh, rules = _experts_over_expert_and_tensor()
    with use_mesh(mesh, rules):
        got = sampler.generate(jax.device_put(state, state_shardings(state, mesh, rules)), prompts, key=key,
                               ignore_eos=True)
    assert calls == [8]
    np.testing.assert_array_equal(np.asarray(got.tokens_BT), np.asarray(expected.tokens_BT))
    np.testing.assert_array_equal(np.asarray(got.experts_LBTK), np.asarray(expected.experts_LBTK))
    np.testing.assert_allclose(np.asarray(got.logprobs_BN), np.asarray(expected.logprobs_BN), atol=1e-5)


@pytest.mark.parametrize("chunked", [True, False])
def test_ragged_decode_drops_whatever_a_kernel_leaves_in_rows_past_its_groups(monkeypatch, chunked):
    """A TPU ragged dot may leave anything in the rows past its groups (CPU's leaves 0): the rows of other
    devices' experts and a chunk's padding. The kernel is made to write NaN there; each device's output, in
    chunks or in one pass, still equals its share of the dense reference (adding those rows, times weight 0,
    gave NaN)."""
    real = dispatch.swiglu_ragged

    def leaves_nan(x_AD, group_sizes_E, *weights):
        past_groups = jnp.arange(x_AD.shape[0])[:, None] >= jnp.sum(group_sizes_E)
        return jnp.where(past_groups, jnp.nan, real(x_AD, group_sizes_E, *weights))

    monkeypatch.setattr(dispatch, "swiglu_ragged", leaves_nan)
    x, chosen, weights, wg, wu, wd = dispatch_case(36, 8, 3)
    for start in (0, 4):  # two devices of 4 experts each: about half of each chunk is the other's copies
        local = [start <= e < start + 4 for e in np.asarray(chosen).ravel()]
        got = local_expert_ffn(x, chosen, weights, wg[start:start + 4], wu[start:start + 4], wd[start:start + 4],
                               expert_offset=start, impl="ragged", expected_copies=2, chunked=chunked)
        mine = jnp.where(jnp.asarray(local).reshape(chosen.shape), weights, 0)
        np.testing.assert_allclose(np.asarray(got), dense_reference(x, chosen, mine, wg, wu, wd), atol=1e-5)


def test_ragged_decode_chunks_pad_a_last_partial_chunk_that_holds_copies():
    """Every expert local (offset 0): 5 tokens x top-2 = 10 copies in chunks of 8, the second chunk holding 2
    copies and 6 padded rows; unpadded, its slice past the copies' end starts earlier (dynamic_slice clamps)
    and reads other copies against the sizes of its own (survived: the tests' last chunks held no copy)."""
    x, chosen, weights, wg, wu, wd = dispatch_case(5, 8, 2)
    got = local_expert_ffn(x, chosen, weights, wg, wu, wd, expert_offset=0, impl="ragged", expected_copies=1,
                           chunked=True)
    np.testing.assert_allclose(np.asarray(got), dense_reference(x, chosen, weights, wg, wu, wd), atol=1e-5)


@pytest.mark.parametrize("impl,decode,backend,want", [
    ("auto", False, "cpu", "blocked"), ("auto", True, "cpu", "blocked"),  # ragged_dot is a dense product there
    ("auto", False, "tpu", "blocked"), ("auto", True, "tpu", "ragged"),  # the update's kernel; a decode step's
    ("auto", False, "gpu", "ragged"), ("auto", True, "gpu", "ragged"),
    ("ragged", False, "cpu", "ragged"), ("blocked", True, "tpu", "blocked"),  # named: as it is, anywhere
    ("blocked_autodiff", True, "gpu", "blocked_autodiff")])
def test_auto_resolves_per_platform_and_phase_and_a_named_kernel_is_kept(impl, decode, backend, want):
    """resolve_impl's table (its docstring): the tests' CPU runs reach only the CPU row."""
    assert dispatch.resolve_impl(impl, decode=decode, backend=backend) == want
