"""Dropless expert dispatch: sort token copies by expert, run a grouped SwiGLU, combine.

Compute scales with tokens x top-k, not with the number of experts. Two grouped-matmul kernels:
- "ragged": `jax.lax.ragged_dot` (TPU decode steps, GPU).
- "blocked" and "blocked_autodiff": copies in blocks of rows, each block multiplied by its own expert's
  weights (model.blocked). `resolve_impl` says which `auto` means where.

Expert parallelism (`expert_ffn` under a mesh): a shard_map over the mesh. Each device holds E/ep experts
(and F/tp of their width). Tokens sharded over the expert axis are all-gathered along it, each device runs
only the copies routed to its own experts, and the partial outputs are summed back (reduce-scatter over
the expert axis, then all-reduce over the tensor axis). In a decode step the ragged kernel runs the local
copies in chunks of a few even shares (`_ragged_chunks`), so its work follows the copies routed here, not the
layout's worst case; and where each device's experts get few of a device's copies (DeepSeek-V3's sampler: one
expert per device, about one copy from each other device per step), the copies are exchanged instead of the
tokens gathered (`_exchange`: an all-to-all to the devices holding their experts and back). Under FSDP the
tokens are split over the batch's axes even when their count does not divide them (`_pad_tokens`). Alphabet:
A = token copies (T x K), G = devices along the gathered axes, C = rows a device sends each of them per trip.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from r1jax.model.blocked import block_layout, block_loop, swiglu_blocked, swiglu_blocked_to_tokens, vary_together
from r1jax.sharding.context import active_rules, mesh_shape


# A decode step's chunk of local copies (`chunk_rows`): this many times an even load's share, so an uneven
# step still takes one trip; the same margin sizes the exchange's rows per destination (`exchange_capacity`)
CHUNK_OVER_EVEN_SHARE = 4
MIN_EXCHANGE_ROWS = 8


def resolve_impl(impl: str, *, decode: bool = False, backend: str | None = None) -> str:
    """The kernel `auto` stands for on `backend` (None: JAX's default). CPU: `blocked` (`ragged_dot` costs a
    dense product over all experts there). TPU: `ragged` for a decode step (one pass over each expert's
    weights per step), else `blocked`: any other forward may be differentiated (the update), and XLA compiles
    `ragged_dot`'s weight gradient for TPU as a dense product over every local expert (`qwen3_30b_a3b`'s
    update step estimated at 43.1 s per v5p chip with ragged, 8.15 s blocked in blocks of 64 rows;
    benchmarks/HISTORY.md, "Ahead-of-time compilation"). Other backends (GPU): `ragged`, not measured
    against `blocked`."""
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "blocked"
    return "ragged" if decode or backend != "tpu" else "blocked"


def swiglu_ragged(x_AD, group_sizes_E, w_gate_EDF, w_up_EDF, w_down_EFD):
    gate_AF = jax.lax.ragged_dot(x_AD, w_gate_EDF, group_sizes_E)
    up_AF = jax.lax.ragged_dot(x_AD, w_up_EDF, group_sizes_E)
    return jax.lax.ragged_dot(jax.nn.silu(gate_AF) * up_AF, w_down_EFD, group_sizes_E)


def local_expert_ffn(x_TD, experts_TK, weights_TK, w_gate_EDF, w_up_EDF, w_down_EFD, *,
                     expert_offset=None, impl: str = "auto", block_size: int = 64, used_blocks_only: bool = False,
                     expected_copies: int | None = None, chunked: bool = False):
    """The routed-expert output for these tokens, using only experts [offset, offset + E_local).

    `expert_offset` None: the weights hold every expert, so every copy is local and none is masked (the
    same numbers as offset 0 over all experts, without the masks' [copies, D] selects in the backward).
    `used_blocks_only`: `blocked_autodiff` skips empty blocks too (forward only; `blocked` always skips them:
    see `model.blocked`). `expected_copies`: the copies these experts get on average (None: all t x k), the
    blocked kernel's trip-count estimate (`block_loop`). `chunked` (forward only, "ragged" with
    `expected_copies`): the ragged dot runs over the local copies in chunks (`_ragged_chunks`)."""
    t, k = experts_TK.shape
    num_local = w_gate_EDF.shape[0]
    if expert_offset is None:
        key_A = experts_TK.reshape(-1)
        valid_A = None
    else:
        local_A = experts_TK.reshape(-1) - expert_offset
        valid_A = (local_A >= 0) & (local_A < num_local)
        key_A = jnp.where(valid_A, local_A, num_local)  # copies for other devices' experts sort last
    order_A = jnp.argsort(key_A, stable=True)
    group_sizes_E = jnp.bincount(key_A, length=num_local + 1)[:num_local].astype(jnp.int32)
    impl = resolve_impl(impl)
    if impl == "ragged" and num_local < k:
        # a token's top-k experts are distinct, so at most num_local of its copies are local: the first
        # t x num_local sorted copies hold every local one (exact; the rest would only add zeros). Fewer
        # experts per device than top-k (e.g. DeepSeek-V3's sampler layout, one expert per device) shrinks
        # the [copies, D] activations the dispatch gathers, multiplies and scatters by k / num_local.
        order_A = order_A[:t * num_local]
    token_A = order_A // k
    dt = x_TD.dtype
    weights = (w_gate_EDF.astype(dt), w_up_EDF.astype(dt), w_down_EFD.astype(dt))
    rows = chunk_rows(order_A.shape[0], expected_copies) if chunked and impl == "ragged" else None
    if rows is not None:
        combine_A = weights_TK.reshape(-1)[order_A]
        if valid_A is not None:
            combine_A = jnp.where(valid_A[order_A], combine_A, 0.0)
        with jax.named_scope("expert_ffn"):
            return _ragged_chunks(x_TD, token_A, combine_A.astype(dt), group_sizes_E, weights, rows,
                                  -(-expected_copies // rows))
    if impl == "blocked":
        lay = block_layout(group_sizes_E, order_A.shape[0], block_size, expected_copies)
        with jax.named_scope("expert_ffn"):
            return swiglu_blocked_to_tokens(x_TD, weights_TK.reshape(-1).astype(dt), order_A, k, lay, *weights)
    x_AD = x_TD[token_A]
    with jax.named_scope("expert_ffn"):
        if impl == "ragged":
            y_AD = swiglu_ragged(x_AD, group_sizes_E, *weights)
        else:
            y_AD = swiglu_blocked(x_AD, group_sizes_E, *weights, block_size=block_size,
                                  used_blocks_only=used_blocks_only, expected_rows=expected_copies)
    combine_A = weights_TK.reshape(-1)[order_A]
    if valid_A is not None:
        combine_A = jnp.where(valid_A[order_A], combine_A, 0.0)
        y_AD = jnp.where(valid_A[order_A][:, None], y_AD, 0)
    y_AD = y_AD * combine_A.astype(dt)[:, None]
    return jnp.zeros_like(x_TD).at[token_A].add(y_AD)


def chunk_rows(copies: int, expected_copies: int | None) -> int | None:
    """The rows of one chunk of `_ragged_chunks`: `CHUNK_OVER_EVEN_SHARE` x the expected copies, a power of two
    (at least 8); None (one pass over every copy) when that is not fewer than the `copies` the layout holds."""
    if expected_copies is None:
        return None
    rows = max(8, 1 << (CHUNK_OVER_EVEN_SHARE * expected_copies - 1).bit_length())
    return rows if rows < copies else None


def _ragged_chunks(x_TD, token_A, combine_A, group_sizes_E, weights, rows: int, expected_trips: int):
    """The local copies (sorted by expert: groups [0, sum(group_sizes)) of `token_A`) through their experts'
    SwiGLU in chunks of `rows` copies, each chunk's output weighted by `combine_A` and added to its tokens:
    a loop of traced length over the chunks that hold copies (`block_loop`, stating `expected_trips`).

    Why: the layout must hold every copy a device might get (a dropless dispatch's worst case: DeepSeek-V3's
    sampler, one expert per device, holds all 512 gathered tokens, where an even load routes 16 to it), and
    the compiled ragged dot's shape covers every row it is given (its activations are gathered, multiplied
    and scattered at that size). Chunked, a decode step's shapes follow what its experts got, rounded up to a
    chunk, and still take any load (more trips, each reading the local experts' weights again). Every copy
    is multiplied and added as in one pass, chunk after chunk."""
    a = token_A.shape[0]
    pad = -a % rows  # padded copies: token 0 with weight 0, past every group (the ragged dot gives zeros)
    token_A, combine_A = jnp.pad(token_A, (0, pad)), jnp.pad(combine_A, (0, pad))
    ends_E = jnp.cumsum(group_sizes_E)
    starts_E = ends_E - group_sizes_E

    def one_chunk(i, out_TD):
        start = i * rows
        tokens = jax.lax.dynamic_slice_in_dim(token_A, start, rows)
        sizes_E = jnp.clip(jnp.minimum(ends_E, start + rows) - jnp.maximum(starts_E, start), 0)
        y_CD = swiglu_ragged(x_TD[tokens], sizes_E.astype(group_sizes_E.dtype), *weights)
        combine_C1 = jax.lax.dynamic_slice_in_dim(combine_A, start, rows)[:, None]
        # copies of other devices' experts and padding (weight 0) add nothing, whatever the kernel left there
        return out_TD.at[tokens].add(jnp.where(combine_C1 != 0, y_CD * combine_C1, 0))

    used = (ends_E[-1] + rows - 1) // rows
    out = vary_together(jnp.zeros_like(x_TD), x_TD, token_A, *weights)[0]
    return block_loop(used, expected_trips, one_chunk, out)


def exchange_capacity(rows: int, top_k: int, destinations: int, columns: int) -> int | None:
    """Rows one device sends each destination per trip of `_exchange`: `CHUNK_OVER_EVEN_SHARE` x an even
    load's share (its `rows` x `top_k` copies spread over `destinations` x `columns` devices' experts), a power
    of two, at least `MIN_EXCHANGE_ROWS`; None when that is not fewer than its rows (gathering every token moves
    no more)."""
    even = -(-rows * top_k // (destinations * columns))
    capacity = max(MIN_EXCHANGE_ROWS, 1 << (CHUNK_OVER_EVEN_SHARE * even - 1).bit_length())
    return capacity if capacity < rows else None


def _exchange(x_TD, experts_TK, weights_TK, weights, *, gathered, columns, offset, capacity: int, impl: str,
              block_size: int):
    """A decode step's routed output for this device's tokens, each copy sent to the device holding its expert
    (an all-to-all over `gathered`, `capacity` rows per destination and trip) and its output sent back, where
    the gather path all-gathers every token to every device and reduce-scatters a [gathered tokens, D] sum
    back (DeepSeek-V3's sampler on v5p-512: 512 tokens x 7,168 each way per MoE layer, for about 16 copies a
    device's one expert gets). This device sends the copies of the experts in its own `columns` coordinate
    (the expert-parallel axes the tokens are replicated over; the devices at the other coordinates send the
    rest); the caller sums the columns' outputs. ceil(most copies any device sends one destination / capacity)
    trips: the first, and a loop of traced length over the rest, stating none (`block_loop`; an even load
    needs none): dropless under any load; each trip moves [G, capacity, D] each way. The combine weights stay
    here: only the rows and their experts travel."""
    k = experts_TK.shape[1]
    num_local = weights[0].shape[0]
    mesh = mesh_shape()
    g, r = math.prod(mesh[a] for a in gathered), math.prod(mesh[a] for a in columns)
    expert_A = experts_TK.reshape(-1)
    device_A = expert_A // num_local  # linear over gathered + columns (the experts' axes, major to minor)
    column = _linear_index(columns, mesh) if columns else 0
    key_A = jnp.where(device_A % r == column, device_A // r, g)  # the destination; g: another column's copy
    order_A = jnp.argsort(key_A, stable=True)
    counts_G = jnp.bincount(key_A, length=g + 1)[:g]
    starts_G = jnp.cumsum(counts_G) - counts_G
    trips = jax.lax.pmax((jnp.max(counts_G) + capacity - 1) // capacity, gathered + columns)
    combine_A = weights_TK.reshape(-1).astype(x_TD.dtype)

    def one_trip(i, out_TD):
        rank_GC = i * capacity + jnp.arange(capacity)[None, :]
        sent_GC = rank_GC < counts_G[:, None]
        copy_GC = order_A[jnp.minimum(starts_G[:, None] + rank_GC, order_A.shape[0] - 1)]
        token_GC = copy_GC // k
        rows_GCD = jnp.where(sent_GC[..., None], x_TD[token_GC], 0)
        experts_GC = jnp.where(sent_GC, expert_A[copy_GC], -1)  # -1: an empty row, no expert's
        rows_ND = jax.lax.all_to_all(rows_GCD, gathered, 0, 0, tiled=True).reshape(g * capacity, -1)
        if num_local == 1:  # every row received is this expert's, or empty (zeros, whose SwiGLU is zeros)
            y_ND = swiglu_ragged(rows_ND, jnp.full((1,), g * capacity, jnp.int32),
                                 *(w.astype(x_TD.dtype) for w in weights))
        else:
            experts_N1 = jax.lax.all_to_all(experts_GC, gathered, 0, 0, tiled=True).reshape(-1, 1)
            y_ND = local_expert_ffn(rows_ND, experts_N1, jnp.ones_like(experts_N1, x_TD.dtype), *weights,
                                    expert_offset=offset, impl=impl, block_size=block_size)
        y_GCD = jax.lax.all_to_all(y_ND.reshape(rows_GCD.shape), gathered, 0, 0, tiled=True)
        y_GCD = jnp.where(sent_GC[..., None], y_GCD * combine_A[copy_GC][..., None], 0)
        return out_TD.at[token_GC].add(y_GCD)

    out = vary_together(jnp.zeros_like(x_TD), x_TD, experts_TK, *weights)[0]
    with jax.named_scope("exchange"):
        # the trips past the first (none at an even load) before it: the first trip's work then follows the
        # loop, and on TPU the next layer's cache can be staged on chip while it runs (XLA starts no copy
        # across a loop; with the loop last, 57 of DeepSeek-V3's 61 layers read their latent from HBM twice)
        out = block_loop(trips - 1, 0, lambda i, o: one_trip(i + 1, o), out)
        return one_trip(0, out)


def expert_ffn(x_TD, experts_TK, weights_TK, w_gate_EDF, w_up_EDF, w_down_EFD, *, impl="auto",
               block_size=64, used_blocks_only: bool = False, chunked: bool = False):
    """Routed-expert output for all tokens; expert-parallel under an active mesh. `chunked` (decode steps):
    under expert parallelism the copies are exchanged (`_exchange`) where `exchange_capacity` says that moves
    fewer rows than gathering the tokens, else the ragged kernel runs over the local copies in chunks
    (`_ragged_chunks`). Rows whose copies all go to expert E (positions holding no token) read exactly 0."""
    kwargs = dict(impl=impl, block_size=block_size, used_blocks_only=used_blocks_only)
    num_experts = w_gate_EDF.shape[0]
    rules = active_rules()
    if rules is None:
        y_TD = local_expert_ffn(x_TD, experts_TK, weights_TK, w_gate_EDF, w_up_EDF, w_down_EFD, **kwargs)
        return _zero_unrouted(y_TD, experts_TK, num_experts)
    shape = mesh_shape()
    ep = _present(rules.mesh_axes("experts"), shape, w_gate_EDF.shape[0])
    tp = _present(rules.mesh_axes("expert_mlp"), shape, w_gate_EDF.shape[2])
    # the weights' hidden axis as the parameters lie (FSDP), gathered inside: the gradient's way back is then
    # a reduce-scatter to each device's shard, where a gather outside made it an all-reduce of the whole
    # gradient (sliced afterwards: twice the interconnect bytes)
    embed = tuple(a for a in _present(rules.mesh_axes("embed"), shape, w_gate_EDF.shape[1]) if a not in ep + tp)
    t = x_TD.shape[0]
    if embed:  # split over the batch's axes, padded to divide them: the weights' gather needs split tokens
        x_TD, experts_TK, weights_TK = _pad_tokens(x_TD, experts_TK, weights_TK, rules.mesh_axes("batch"), shape,
                                                   w_gate_EDF.shape[0])
    batch = _present(rules.mesh_axes("batch"), shape, x_TD.shape[0])
    # gathered inside only along the tokens' axes (each device's output then varies as its tokens do); a table
    # splitting `embed` over an axis the tokens are not split over gathers those weights before the shard_map
    embed = tuple(a for a in embed if a in batch)
    gathered = tuple(a for a in batch if a in ep)  # token shards to gather before the local experts run
    columns = tuple(a for a in ep if a not in batch)  # expert axes the tokens are replicated over
    summed = columns + tp  # partial outputs to all-reduce
    # a decode step whose devices' experts get few of a device's copies: exchange the copies (`_exchange`);
    # the experts' axes must run gathered (major) then columns, as the devices' linear index counts them
    capacity = (exchange_capacity(x_TD.shape[0] // math.prod(shape[a] for a in batch), experts_TK.shape[1],
                                  math.prod(shape[a] for a in gathered), math.prod(shape[a] for a in columns))
                if chunked and gathered and ep == tuple(a for a in ep if a in gathered) + columns else None)

    def per_device(x, experts, weights, wg, wu, wd):
        routed = experts  # this device's tokens' (before any gather)
        if embed:
            # varying as the tokens are before the gather, so the gradient's sum over the other token axes
            # (data) also runs on this device's shard, after the reduce-scatter
            wg, wu, wd = vary_together(wg, wu, wd, x, experts, weights)[:3]
            wg, wu = (jax.lax.all_gather(w, embed, axis=1, tiled=True) for w in (wg, wu))
            wd = jax.lax.all_gather(wd, embed, axis=2, tiled=True)
        offset = _linear_index(ep, shape) * wg.shape[0] if ep else None  # None: every expert is here
        if capacity is not None:
            y = _exchange(x, experts, weights, (wg, wu, wd), gathered=tuple(a for a in ep if a in gathered),
                          columns=columns, offset=offset, capacity=capacity, impl=impl, block_size=block_size)
            y = _zero_unrouted(y, routed, num_experts)
            return jax.lax.psum(y, summed) if summed else y
        if gathered:
            x, experts, weights = _gather_tokens(x, experts, weights, gathered)
        # an even load: each device's experts get their share of the gathered copies
        expected = -(-experts.size * wg.shape[0] // w_gate_EDF.shape[0])
        y = local_expert_ffn(x, experts, weights, wg, wu, wd, expert_offset=offset, expected_copies=expected,
                             chunked=chunked and bool(ep), **kwargs)
        # the sum over the gathered axes first: it scatters the rows back, so the all-reduce that follows
        # moves this device's rows only
        if gathered:
            y = jax.lax.psum_scatter(y, gathered, scatter_dimension=0, tiled=True)
        y = _zero_unrouted(y, routed, num_experts)
        if summed:
            y = jax.lax.psum(y, summed)
        return y

    tokens = P(batch or None, None)
    w_in, w_out = P(ep or None, embed or None, tp or None), P(ep or None, tp or None, embed or None)
    y_TD = jax.shard_map(per_device, in_specs=(tokens, tokens, tokens, w_in, w_in, w_out),
                         out_specs=tokens)(x_TD, experts_TK, weights_TK, w_gate_EDF, w_up_EDF, w_down_EFD)
    return y_TD[:t] if y_TD.shape[0] > t else y_TD


def _zero_unrouted(y_TD, experts_TK, num_experts: int):
    """`y_TD` with exactly 0 in the rows whose copies all go to expert `num_experts`, no device's (positions
    holding no token: model.moe), whatever a kernel left there: a value that is not finite, times weight 0,
    would reach real tokens through attention's values. Under a mesh it runs before the partial outputs' sum,
    so the compiler still adds the shared experts' partial output into that all-reduce (a select after the
    sum kept them apart: two all-reduces per MoE layer and decode step, +0.43 MB on DeepSeek-V3's v5p-512
    sampler, 2026-12-04)."""
    return jnp.where((experts_TK < num_experts).any(axis=1, keepdims=True), y_TD, 0)


def _pad_tokens(x_TD, experts_TK, weights_TK, batch_axes, shape, num_experts: int):
    """The tokens with rows appended up to a multiple of the batch's axes that split something (as they are
    when there are none to add): zero rows, each copy routed to expert `num_experts` with combine weight 0.
    That expert is no device's: its copies sort past every local group, so no group, block or chunk counts
    them (in `_exchange` they go to device `num_experts // local experts`: no destination), and whatever a
    kernel leaves for them is added, times 0, into their own padded token only. Every real row's output is
    that of the rows alone. Fewer padded rows than devices along those axes. Why: a count the axes do not
    divide (a sampler's few rows or last partial batch in the training layout, a batch of one) left the
    tokens whole on every device, and the FSDP weights, gathered inside the shard_map, made each device's
    output vary over `fsdp` where its tokens did not (a trace-time error: no out_specs fits)."""
    ways = math.prod(shape[a] for a in batch_axes if shape.get(a, 1) > 1)
    pad = -x_TD.shape[0] % ways
    if not pad:
        return x_TD, experts_TK, weights_TK
    rows = ((0, pad), (0, 0))
    padded = jnp.pad(x_TD, rows), jnp.pad(experts_TK, rows, constant_values=num_experts), jnp.pad(weights_TK, rows)
    # whole on each device, as rows the batch's axes do not divide are (sharding.context.constrain): stated, the
    # partitioner slices them into the shard_map (and gathers the tokens' gradient) without, for a backward
    # through a layer scan, resorting to a "full rematerialization" of them
    return tuple(jax.lax.with_sharding_constraint(a, P()) for a in padded)


def _gather_tokens(x_TD, experts_TK, weights_TK, axes):
    """The tokens, their experts and combine weights all-gathered along `axes`, in one collective where the
    tokens are float32 (two otherwise): the experts travel as float32 numbers beside the weights (exact below
    2^24), the three as one array. On a CPU mesh each collective is a rendezvous of every device."""
    k = experts_TK.shape[1]
    routes = jnp.concatenate([experts_TK.astype(jnp.float32), weights_TK.astype(jnp.float32)], axis=1)
    if x_TD.dtype == jnp.float32:
        both = jax.lax.all_gather(jnp.concatenate([x_TD, routes], axis=1), axes, axis=0, tiled=True)
        x_TD, routes = both[:, : x_TD.shape[1]], both[:, x_TD.shape[1]:]
    else:
        x_TD = jax.lax.all_gather(x_TD, axes, axis=0, tiled=True)
        routes = jax.lax.all_gather(routes, axes, axis=0, tiled=True)
    return x_TD, routes[:, :k].astype(experts_TK.dtype), routes[:, k:].astype(weights_TK.dtype)


def _present(axes, shape, dim_size):
    """The mesh axes of `axes` that exist, split something (size > 1) and divide `dim_size` (others leave the
    dimension unsharded). An axis of size 1 would only add collectives over one device each (a sum over
    `tensor` = 1 was an all-reduce at every MoE layer of every decode step)."""
    axes = tuple(a for a in axes if shape.get(a, 1) > 1)
    return axes if axes and dim_size % math.prod(shape[a] for a in axes) == 0 else ()


def _linear_index(axes, shape):
    index = jnp.int32(0)
    for axis in axes:
        index = index * shape[axis] + jax.lax.axis_index(axis)
    return index
