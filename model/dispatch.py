"""Dropless expert dispatch: sort token copies by expert, run a grouped SwiGLU, combine.

Compute scales with tokens x top-k, not with the number of experts. Two grouped-matmul kernels:
- "ragged": `jax.lax.ragged_dot` (TPU/GPU).
- "blocked": expert-sorted copies padded per expert to whole blocks of `block_size` rows (fewer when the
  copies per expert are fewer, as in decoding), then a loop over the blocks that hold rows, each multiplied
  by its own expert's weights. The static layout has room for the worst case (every copy on this device's
  experts, plus a partial block per expert); the loop runs only the used blocks (sum of the padded group
  sizes / block, a traced count), so under expert parallelism the work follows the copies routed to the
  local experts (DeepSeek-V3's update: ~160 of 2,576 blocks per layer and device). `ragged_dot` on CPU
  (jax 0.10.2) costs as much as a dense product over all experts (8192x256 @ [E,256,512]: 161 ms at E = 8,
  1,131 ms at E = 64, vs 12.6 ms as one dense matmul of the same FLOPs, on a 2-core CPU); this kernel is the
  CPU path. Its backward is written out (`_blocks`): a second loop over the same blocks that adds each
  block's weight gradient into its expert's [E, D, F] slot.
  Differentiating the forward scan instead stacks one [D, F] weight slice and one weight gradient per block
  ([blocks, D, F], 51 MB per matrix and layer on the side-by-side workload); the written-out backward moves
  0.48 GB instead of 0.74 GB and took 0.16-0.37 s instead of 0.32-0.61 s per layer there (6,144 tokens,
  top-2 of 8 experts, D 256, F 128, forward + backward, measured on a loaded 2-core CPU).
- "blocked_autodiff": the kernel before the written-out backward: the same forward as a scan over every
  block (a loop of traced length has no reverse-mode derivative), differentiated by JAX; gradients differ
  from "blocked" in float rounding only. configs/tiny.yaml keeps it, because the default run's measured
  figures were made with it.

Expert parallelism (`expert_ffn` under a mesh): a shard_map over the mesh. Each device holds E/ep experts
(and F/tp of their width). Tokens sharded over the expert axis are all-gathered along it, each device runs
only the copies routed to its own experts, and the partial outputs are summed back (reduce-scatter over
the expert axis, then all-reduce over the tensor axis). In a decode step the ragged kernel runs the local
copies in chunks of a few even shares (`_ragged_chunks`), so its work follows the copies routed here, not the
layout's worst case. Alphabet: A = token copies (T x K).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from r1jax.sharding.context import active_rules, mesh_shape


# A decode step's chunk of local copies (`chunk_rows`): this many times an even load's share, so an uneven
# step still takes one trip
CHUNK_OVER_EVEN_SHARE = 4


def resolve_impl(impl: str, *, decode: bool = False, backend: str | None = None) -> str:
    """The kernel `auto` stands for on `backend` (None: JAX's default). CPU: `blocked` (`ragged_dot` costs a
    dense product over all experts there). TPU: `ragged` for a decode step (one pass over each expert's
    weights per step), else `blocked`: any other forward may be differentiated (the update), and XLA compiles
    `ragged_dot`'s weight gradient for TPU as a dense product over every local expert (`qwen3_30b_a3b`'s
    update step estimated at 43.1 s per v5p chip with ragged, 8.15 s blocked; README, "Estimated ... one
    update step"). Other backends (GPU): `ragged`, not measured against `blocked`."""
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


def fitted_block_size(copies: int, experts: int, block_size: int) -> int:
    """The configured block, shrunk to the copies an expert gets on average (a power of two, at least 8) when
    those are fewer: every expert's last block is padded, so a decode step (a few copies per expert) would
    otherwise multiply experts x block_size rows for far fewer real ones."""
    per_expert = -(-copies // experts)
    return min(block_size, max(8, 1 << (per_expert - 1).bit_length()))


def swiglu_blocked(x_AD, group_sizes_E, w_gate_EDF, w_up_EDF, w_down_EFD, block_size: int,
                   written_backward: bool = True, used_blocks_only: bool = False, expected_rows: int | None = None):
    """Grouped SwiGLU over rows sorted by group; rows past sum(group_sizes) come back as zeros.

    `used_blocks_only`: run only the blocks holding rows (`_used_blocks`), else a scan over every block of
    the static layout (the worst case); the same numbers either way. With `written_backward` both have a
    gradient; without it (`blocked_autodiff`) the used-blocks loop is forward only (decoding).
    `expected_rows`: the rows expected to be in groups (None: all `a`), for the loop's trip-count estimate."""
    a, d = x_AD.shape
    e = group_sizes_E.shape[0]
    block_size = fitted_block_size(a, e, block_size)
    num_blocks = -(-a // block_size) + e  # enough for every group's last partial block
    padded_E = -(-group_sizes_E // block_size) * block_size
    ends_E, padded_ends_E = jnp.cumsum(group_sizes_E), jnp.cumsum(padded_E)
    row_group_A = jnp.searchsorted(ends_E, jnp.arange(a), side="right")
    group_A = jnp.minimum(row_group_A, e - 1)
    rank_A = jnp.arange(a) - (ends_E - group_sizes_E)[group_A]
    dest_A = jnp.where(row_group_A < e, (padded_ends_E - padded_E)[group_A] + rank_A, num_blocks * block_size)
    x_pad = jnp.zeros((num_blocks * block_size, d), x_AD.dtype).at[dest_A].set(x_AD, mode="drop")
    block_group = jnp.searchsorted(padded_ends_E, jnp.arange(num_blocks) * block_size, side="right")
    block_group = jnp.minimum(block_group, e - 1)
    x_NbD = x_pad.reshape(num_blocks, block_size, d)
    # blocks [0, used) hold rows (each group's padded blocks are contiguous and start full); the rest are empty
    used = padded_ends_E[-1] // block_size if used_blocks_only else None  # None: every block
    expected = min(num_blocks, -(-(a if expected_rows is None else expected_rows) // block_size) + e)
    if written_backward:
        # inside a shard_map rows and weights vary over different mesh axes (rows: data, fsdp; weights:
        # tensor): give all operands the union, so the loops' carries have one type; JAX's transpose of
        # these casts sums the gradients over the added axes, as it does for the autodiff kernel
        x_NbD, *weights = _vary_together(x_NbD, w_gate_EDF, w_up_EDF, w_down_EFD)
        y_blocks = _blocks(x_NbD, block_group, used, expected, *weights)
    elif used_blocks_only:
        y_blocks = _used_blocks(x_NbD, block_group, used, expected, w_gate_EDF, w_up_EDF, w_down_EFD)[0]
    else:
        y_blocks = _blocks_autodiff(x_NbD, block_group, w_gate_EDF, w_up_EDF, w_down_EFD)
    y_pad = y_blocks.reshape(num_blocks * block_size, -1)
    return jnp.where((row_group_A < e)[:, None], y_pad[jnp.minimum(dest_A, num_blocks * block_size - 1)], 0)


def _vary_together(*arrays):
    varying = [jax.typeof(a).manual_axis_type.varying for a in arrays]
    union = frozenset().union(*varying)
    return tuple(jax.lax.pcast(a, tuple(sorted(union - v)), to="varying") if union - v else a
                 for a, v in zip(arrays, varying))


def _on_cpu_in_float32(dtype, kernel):
    """`kernel(acc)`, `acc` the dtype of the blocks' products, loop buffers and sums: float32 when lowered for a
    CPU, else `dtype` (the operands'). On a CPU, XLA widens a bfloat16 loop buffer to float32 and back around
    each trip's write (the whole buffer, every block: a bfloat16 update step took 3x the float32 one), runs a
    bfloat16 product with a bfloat16 result slowly (a 4096^3 one at 353 GFLOP/s, with a float32 result at 769;
    float32: 420, on the 2-core host) and would sum an expert's weight gradient over its blocks in bfloat16.
    A TPU or GPU program keeps its operands' dtype (its memory figures are `r1jax compile`'s); for float32
    operands both are the same program."""
    if dtype == jnp.float32:
        return kernel(jnp.float32)
    return jax.lax.platform_dependent(cpu=lambda: kernel(jnp.float32), default=lambda: kernel(dtype))


def _dot(a, b, acc):
    return jnp.matmul(a, b, preferred_element_type=acc)


def _block_forward(x_bD, g, w_gate_EDF, w_up_EDF, w_down_EFD, acc):
    """One block of rows through expert g's SwiGLU: (output, gate and up pre-activations), in `acc`; the
    hidden activation enters the down projection in x's dtype."""
    gate_bF, up_bF = _dot(x_bD, w_gate_EDF[g], acc), _dot(x_bD, w_up_EDF[g], acc)
    return _dot((jax.nn.silu(gate_bF) * up_bF).astype(x_bD.dtype), w_down_EFD[g], acc), gate_bF, up_bF


def _blocks_forward(x_NbD, group_N, w_gate_EDF, w_up_EDF, w_down_EFD):
    """Every block through its own expert's SwiGLU, a scan: (outputs, gate and up pre-activations)."""
    def one_block(_, inputs):
        return None, _block_forward(*inputs, w_gate_EDF, w_up_EDF, w_down_EFD, x_NbD.dtype)

    _, outputs = jax.lax.scan(one_block, None, (x_NbD, group_N))
    return outputs


def _block_loop(used, expected: int, num_blocks: int, body, init):
    """`body(i, carry)` for blocks i in [0, used): a while loop of traced length, or a scan over all
    `num_blocks` when `used` is None. A traced trip count is unknown to the compiled program, so the loop
    states the count to assume in its name scope (`expected_trips_N`, read by `sharding.decode_stats`)."""
    if used is None:
        return jax.lax.fori_loop(0, num_blocks, body, init)
    with jax.named_scope(f"expected_trips_{expected}"):
        return jax.lax.fori_loop(0, used, body, init)


def _used_blocks(x_NbD, group_N, used, expected: int, w_gate_EDF, w_up_EDF, w_down_EFD,
                 keep_activations: bool = False):
    """`_block_forward` for blocks [0, used) (a traced count; None: every block), zeros for the rest:
    (outputs, and with `keep_activations` the gate and up pre-activations, else None), in x's dtype, computed
    in `_on_cpu_in_float32`'s. The layout reserves a last partial block for every group and, under expert
    parallelism, room for every gathered copy, so most blocks may be empty (a decode step, 64 tokens x top-2
    over 16 experts: 32 blocks of 8 rows, about 20 used; DeepSeek-V3's update, 16 of 256 experts per device:
    2,576 blocks, about 160 used). Each block runs the same products as in the scan."""
    rows = x_NbD.shape[:2]
    shapes = [rows + w_down_EFD.shape[-1:]] + [rows + w_gate_EDF.shape[-1:]] * (2 if keep_activations else 0)

    def kernel(acc):
        def one_block(i, buffers):
            outputs = _block_forward(x_NbD[i], group_N[i], w_gate_EDF, w_up_EDF, w_down_EFD, acc)
            return tuple(buf.at[i].set(out) for buf, out in zip(buffers, outputs))  # y (and gate, up)

        # inside a shard_map the blocks' outputs vary over the operands' mesh axes: so must the loop's carry
        zeros = tuple(_vary_together(jnp.zeros(s, acc), x_NbD, group_N, w_gate_EDF, w_up_EDF, w_down_EFD)[0]
                      for s in shapes)
        outputs = _block_loop(used, expected, x_NbD.shape[0], one_block, zeros)
        return tuple(out.astype(x_NbD.dtype) for out in outputs)

    outputs = _on_cpu_in_float32(x_NbD.dtype, kernel)
    return outputs[0], (outputs[1:] if keep_activations else None)


def _blocks_autodiff(x_NbD, group_N, w_gate_EDF, w_up_EDF, w_down_EFD):
    return _blocks_forward(x_NbD, group_N, w_gate_EDF, w_up_EDF, w_down_EFD)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _blocks(x_NbD, group_N, used, expected, w_gate_EDF, w_up_EDF, w_down_EFD):
    return _used_blocks(x_NbD, group_N, used, expected, w_gate_EDF, w_up_EDF, w_down_EFD)[0]


def _blocks_fwd(x_NbD, group_N, used, expected, w_gate_EDF, w_up_EDF, w_down_EFD):
    y_NbD, (gate_NbF, up_NbF) = _used_blocks(x_NbD, group_N, used, expected, w_gate_EDF, w_up_EDF, w_down_EFD,
                                             keep_activations=True)
    return y_NbD, (x_NbD, group_N, used, w_gate_EDF, w_up_EDF, w_down_EFD, gate_NbF, up_NbF)


def _blocks_bwd(expected, residuals, dy_NbD):
    """y = (silu(x Wg) * (x Wu)) Wd per block, over the forward's blocks [0, used) in the same order; weight
    gradients accumulate in the loop's carry, in place (on a CPU in float32: `_on_cpu_in_float32`), and come
    back in the weights' dtype; the input gradient of an empty block is zero. The products take operands in
    x's dtype, as the forward's do."""
    x_NbD, group_N, used, w_gate_EDF, w_up_EDF, w_down_EFD, gate_NbF, up_NbF = residuals
    lo = x_NbD.dtype

    def kernel(acc):
        def one_block(i, carry):
            dw_gate, dw_up, dw_down, dx_NbD = carry
            x_bD, g, gate_bF, up_bF, dy_bD = (x_NbD[i], group_N[i], gate_NbF[i].astype(acc), up_NbF[i].astype(acc),
                                              dy_NbD[i])
            sigmoid_bF = jax.nn.sigmoid(gate_bF)
            act_bF = gate_bF * sigmoid_bF  # silu
            dh_bF = _dot(dy_bD, w_down_EFD[g].T, acc)
            dup_bF = (dh_bF * act_bF).astype(lo)
            dgate_bF = (dh_bF * up_bF * (sigmoid_bF * (1 + gate_bF * (1 - sigmoid_bF)))).astype(lo)  # silu'
            return (dw_gate.at[g].add(_dot(x_bD.T, dgate_bF, acc)), dw_up.at[g].add(_dot(x_bD.T, dup_bF, acc)),
                    dw_down.at[g].add(_dot((act_bF * up_bF).astype(lo).T, dy_bD, acc)),
                    dx_NbD.at[i].set(_dot(dgate_bF, w_gate_EDF[g].T, acc) + _dot(dup_bF, w_up_EDF[g].T, acc)))

        zeros = tuple(jnp.zeros_like(a, acc) for a in (w_gate_EDF, w_up_EDF, w_down_EFD, x_NbD))
        grads = _block_loop(used, expected, x_NbD.shape[0], one_block, zeros)
        return tuple(grad.astype(a.dtype) for grad, a in zip(grads, (w_gate_EDF, w_up_EDF, w_down_EFD, x_NbD)))

    dw_gate, dw_up, dw_down, dx_NbD = _on_cpu_in_float32(lo, kernel)
    return dx_NbD, None, None, dw_gate, dw_up, dw_down


_blocks.defvjp(_blocks_fwd, _blocks_bwd)


def local_expert_ffn(x_TD, experts_TK, weights_TK, w_gate_EDF, w_up_EDF, w_down_EFD, *,
                     expert_offset=None, impl: str = "auto", block_size: int = 64, used_blocks_only: bool = False,
                     expected_copies: int | None = None, chunked: bool = False):
    """The routed-expert output for these tokens, using only experts [offset, offset + E_local).

    `expert_offset` None: the weights hold every expert, so every copy is local and none is masked (the
    same numbers as offset 0 over all experts, without the masks' [copies, D] selects in the backward).
    `used_blocks_only`: `blocked_autodiff` skips empty blocks too (forward only; `blocked` always skips them:
    see `_used_blocks`). `expected_copies`: the copies these experts get on average (None: all t x k), the
    blocked kernel's trip-count estimate (`_block_loop`). `chunked` (forward only, "ragged" with
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
    x_AD = x_TD[token_A]
    with jax.named_scope("expert_ffn"):
        if impl == "ragged":
            y_AD = swiglu_ragged(x_AD, group_sizes_E, *weights)
        else:
            y_AD = swiglu_blocked(x_AD, group_sizes_E, *weights, block_size=block_size,
                                  written_backward=impl == "blocked",
                                  used_blocks_only=used_blocks_only or impl == "blocked", expected_rows=expected_copies)
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
    a loop of traced length over the chunks that hold copies (`_block_loop`, stating `expected_trips`).

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
    out = _vary_together(jnp.zeros_like(x_TD), x_TD, token_A, *weights)[0]
    return _block_loop(used, expected_trips, (a + pad) // rows, one_chunk, out)


def expert_ffn(x_TD, experts_TK, weights_TK, w_gate_EDF, w_up_EDF, w_down_EFD, *, impl="auto",
               block_size=64, used_blocks_only: bool = False, chunked: bool = False):
    """Routed-expert output for all tokens; expert-parallel under an active mesh. `chunked` (decode steps):
    under expert parallelism the ragged kernel runs over the local copies in chunks (`_ragged_chunks`)."""
    kwargs = dict(impl=impl, block_size=block_size, used_blocks_only=used_blocks_only)
    rules = active_rules()
    if rules is None:
        return local_expert_ffn(x_TD, experts_TK, weights_TK, w_gate_EDF, w_up_EDF, w_down_EFD, **kwargs)
    shape = mesh_shape()
    batch = _present(rules.mesh_axes("batch"), shape, x_TD.shape[0])
    ep = _present(rules.mesh_axes("experts"), shape, w_gate_EDF.shape[0])
    tp = _present(rules.mesh_axes("expert_mlp"), shape, w_gate_EDF.shape[2])
    gathered = tuple(a for a in batch if a in ep)  # token shards to gather before the local experts run
    summed = tuple(a for a in ep if a not in batch) + tp  # partial outputs to all-reduce

    def per_device(x, experts, weights, wg, wu, wd):
        if gathered:
            x, experts, weights = (jax.lax.all_gather(v, gathered, axis=0, tiled=True)
                                   for v in (x, experts, weights))
        offset = _linear_index(ep, shape) * wg.shape[0] if ep else None  # None: every expert is here
        # an even load: each device's experts get their share of the gathered copies
        expected = -(-experts.size * wg.shape[0] // w_gate_EDF.shape[0])
        y = local_expert_ffn(x, experts, weights, wg, wu, wd, expert_offset=offset, expected_copies=expected,
                             chunked=chunked and bool(ep), **kwargs)
        # the sum over the gathered axes first: it scatters the rows back, so the all-reduce that follows
        # moves this device's rows only
        if gathered:
            y = jax.lax.psum_scatter(y, gathered, scatter_dimension=0, tiled=True)
        if summed:
            y = jax.lax.psum(y, summed)
        return y

    tokens = P(batch or None, None)
    w_in, w_out = P(ep or None, None, tp or None), P(ep or None, tp or None, None)
    return jax.shard_map(per_device, in_specs=(tokens, tokens, tokens, w_in, w_in, w_out),
                         out_specs=tokens)(x_TD, experts_TK, weights_TK, w_gate_EDF, w_up_EDF, w_down_EFD)


def _present(axes, shape, dim_size):
    """The mesh axes of `axes` that exist and divide `dim_size` (others leave the dimension unsharded)."""
    axes = tuple(a for a in axes if a in shape)
    return axes if axes and dim_size % math.prod(shape[a] for a in axes) == 0 else ()


def _linear_index(axes, shape):
    index = jnp.int32(0)
    for axis in axes:
        index = index * shape[axis] + jax.lax.axis_index(axis)
    return index
