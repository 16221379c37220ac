"""The blocked grouped SwiGLU: expert-sorted token copies in blocks of rows, each block multiplied by its own
expert's weights (model.dispatch's `blocked` and `blocked_autodiff` kernels).

The copies of each expert are padded to whole blocks of `block_size` rows (fewer when an expert's copies are
fewer, as in decoding: `fitted_block_size`). The static layout has room for the worst case (every copy on
this device's experts, plus a partial block per expert); a loop runs only the used blocks (sum of the padded
group sizes / block, a traced count), so under expert parallelism the work follows the copies routed to the
local experts (DeepSeek-V3's update: ~56 of 656 blocks of 256 rows per layer and device). `ragged_dot` on
CPU (jax 0.10.2) costs as much as a dense product over all experts (8192x256 @ [E,256,512]: 161 ms at E = 8,
1,131 ms at E = 64, vs 12.6 ms as one dense matmul of the same FLOPs, on a 2-core CPU): this is the CPU
kernel, and on TPU the update's (XLA compiles ragged_dot's weight gradient there as a dense product over every
local expert).

- `blocked` (`swiglu_blocked_to_tokens`): each used block gathers its own rows from the tokens, runs its
  expert's SwiGLU and adds its weighted output into the tokens inside the loop; the backward is written out
  (a second loop over the same blocks, recomputing their gate and up products, adding each block's weight
  gradient into its expert's [E, D, F] slot and its input gradient into the tokens). No [copies, D] buffer
  exists, so the traffic follows the used blocks: compiled for TPU, one DeepSeek-V3 MoE layer's forward and
  backward per device (20,480 gathered tokens x top-8, 16 local experts of 256, blocks of 256) moved 24.8
  instead of 128.4 GB and held 0.01 instead of 18.9 GB of temporaries; a Qwen3-30B-A3B layer (40,960 tokens,
  128 local experts, blocks of 512) 60.2 instead of 107.6 GB. On the 2-core CPU a bench_qwen3-sized layer
  (6,144 tokens, top-2 of 8, D 256, F 128) took 90-111 instead of 105-109 ms, the same numbers to the bit in
  float32.
- `blocked_autodiff` (`swiglu_blocked`): the copies gathered into the padded layout, a scan over every block
  (a loop of traced length has no reverse-mode derivative), differentiated by JAX; gradients differ from
  `blocked`'s in float rounding only. configs/tiny.yaml keeps it, because the default run's measured figures
  were made with it. With `used_blocks_only` (decode steps) the forward loops over the used blocks only.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


def fitted_block_size(copies: int, experts: int, block_size: int) -> int:
    """The configured block, shrunk to the copies an expert gets on average (a power of two, at least 8) when
    those are fewer: every expert's last block is padded, so a decode step (a few copies per expert) would
    otherwise multiply experts x block_size rows for far fewer real ones."""
    per_expert = -(-copies // experts)
    return min(block_size, max(8, 1 << (per_expert - 1).bit_length()))


class BlockLayout(NamedTuple):
    """Rows sorted by group, each group padded to whole blocks of `block` rows, the groups' blocks in order.
    Blocks [0, used) hold rows (each group's padded blocks are contiguous and start full); the rest are empty."""
    block: int
    num_blocks: int  # the static layout: every row (a) in blocks, plus a last partial block per group
    expected: int  # the used blocks to assume for a compile estimate (`block_loop`)
    sizes_E: jax.Array  # rows per group
    starts_E: jax.Array  # first sorted row of each group
    padded_starts_E: jax.Array  # first padded row of each group
    group_N: jax.Array  # the group of each block
    used: jax.Array  # blocks holding rows (traced)


def block_layout(group_sizes_E, rows: int, block_size: int, expected_rows: int | None = None) -> BlockLayout:
    """The layout of `rows` sorted rows in groups of `group_sizes_E` (rows past their sum belong to none);
    `expected_rows`: the rows expected to be in groups (None: all), for the trip-count estimate."""
    e = group_sizes_E.shape[0]
    block = fitted_block_size(rows, e, block_size)
    num_blocks = -(-rows // block) + e
    padded_E = -(-group_sizes_E // block) * block
    padded_ends_E = jnp.cumsum(padded_E)
    group_N = jnp.minimum(jnp.searchsorted(padded_ends_E, jnp.arange(num_blocks) * block, side="right"), e - 1)
    expected = min(num_blocks, -(-(rows if expected_rows is None else expected_rows) // block) + e)
    return BlockLayout(block, num_blocks, expected, group_sizes_E, jnp.cumsum(group_sizes_E) - group_sizes_E,
                       padded_ends_E - padded_E, group_N, padded_ends_E[-1] // block)


def swiglu_blocked(x_AD, group_sizes_E, w_gate_EDF, w_up_EDF, w_down_EFD, block_size: int,
                   used_blocks_only: bool = False, expected_rows: int | None = None):
    """Grouped SwiGLU over rows sorted by group (`blocked_autodiff`); rows past sum(group_sizes) come back as
    zeros. `used_blocks_only`: run only the blocks holding rows (`_used_blocks`: forward only, for decoding),
    else a scan over every block of the static layout (the worst case), differentiated by JAX; the same
    numbers either way."""
    a, d = x_AD.shape
    e = group_sizes_E.shape[0]
    lay = block_layout(group_sizes_E, a, block_size, expected_rows)
    ends_E = lay.starts_E + lay.sizes_E
    row_group_A = jnp.searchsorted(ends_E, jnp.arange(a), side="right")
    group_A = jnp.minimum(row_group_A, e - 1)
    rows = lay.num_blocks * lay.block
    dest_A = jnp.where(row_group_A < e, lay.padded_starts_E[group_A] + jnp.arange(a) - lay.starts_E[group_A], rows)
    x_NbD = jnp.zeros((rows, d), x_AD.dtype).at[dest_A].set(x_AD, mode="drop").reshape(lay.num_blocks, lay.block, d)
    if used_blocks_only:
        y_blocks = _used_blocks(x_NbD, lay.group_N, lay.used, lay.expected, w_gate_EDF, w_up_EDF, w_down_EFD)
    else:
        y_blocks = _blocks_autodiff(x_NbD, lay.group_N, w_gate_EDF, w_up_EDF, w_down_EFD)
    y_pad = y_blocks.reshape(rows, -1)
    return jnp.where((row_group_A < e)[:, None], y_pad[jnp.minimum(dest_A, rows - 1)], 0)


def vary_together(*arrays):
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


def _transposed(a, on_cpu: bool):
    """`a.T` for a weight gradient's product. On a CPU it is materialised (an optimization barrier keeps XLA
    from folding it back into the product): XLA's CPU runs a product that contracts both operands over their
    major axis at ~30 GFLOP/s, a third of the same product on a transposed copy (bench_qwen3's MoE backward
    964-996 -> 664-676 ms of thread time a step, the parameters bit for bit the same). Elsewhere the product
    takes the transpose as it is."""
    return jax.lax.optimization_barrier(a.T) if on_cpu else a.T


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


def block_loop(used, expected: int, body, init):
    """`body(i, carry)` for blocks i in [0, used): a while loop of traced length. A traced trip count is unknown
    to the compiled program, so the loop states the count to assume in its name scope (`expected_trips_N`,
    read by `sharding.decode_stats`)."""
    with jax.named_scope(f"expected_trips_{expected}"):
        return jax.lax.fori_loop(0, used, body, init)


def _used_blocks(x_NbD, group_N, used, expected: int, w_gate_EDF, w_up_EDF, w_down_EFD):
    """`_block_forward` for blocks [0, used) (a traced count), zeros for the rest, in x's dtype, computed in
    `_on_cpu_in_float32`'s. The layout reserves a last partial block for every group and, under expert
    parallelism, room for every gathered copy, so most blocks may be empty (a decode step, 64 tokens x top-2
    over 16 experts: 32 blocks of 8 rows, about 20 used). Each block runs the same products as in the scan."""
    def kernel(acc):
        def one_block(i, y_NbD):
            return y_NbD.at[i].set(_block_forward(x_NbD[i], group_N[i], w_gate_EDF, w_up_EDF, w_down_EFD, acc)[0])

        # inside a shard_map the blocks' outputs vary over the operands' mesh axes: so must the loop's carry
        zeros = vary_together(jnp.zeros(x_NbD.shape[:2] + w_down_EFD.shape[-1:], acc), x_NbD, group_N,
                              w_gate_EDF, w_up_EDF, w_down_EFD)[0]
        return block_loop(used, expected, one_block, zeros).astype(x_NbD.dtype)

    return _on_cpu_in_float32(x_NbD.dtype, kernel)


def _blocks_autodiff(x_NbD, group_N, w_gate_EDF, w_up_EDF, w_down_EFD):
    return _blocks_forward(x_NbD, group_N, w_gate_EDF, w_up_EDF, w_down_EFD)[0]


def swiglu_blocked_to_tokens(x_TD, weights_A, order_A, top_k: int, lay: BlockLayout, w_gate_EDF, w_up_EDF,
                             w_down_EFD):
    """`blocked`: the copies' SwiGLU, weighted and added into their tokens, [T, D], in x's dtype. Copy c (token
    c // top_k, weight weights_A[c]) sits at sorted position p with order_A[p] = c; the groups' copies are the
    first sum(sizes) sorted positions. Each used block gathers its own rows from `x_TD`, runs its expert's
    SwiGLU and adds its weighted output into the tokens inside the loop, so no [copies, D] buffer exists (under
    expert parallelism that buffer holds every gathered copy, the dropless worst case: DeepSeek-V3's
    [163,840, 7,168] per device where its experts get ~10,240). The backward (`_to_tokens_bwd`) runs the same
    blocks, recomputes their gate and up products, adds each block's weight gradient into its expert's slot
    and its input gradient into the tokens: nothing but the inputs is kept between the passes."""
    # inside a shard_map rows and weights vary over different mesh axes (rows: data, fsdp; weights: tensor):
    # give all operands the union, so the loops' carries have one type; JAX's transpose of these casts sums
    # the gradients over the added axes, as it does for the autodiff kernel
    x_TD, weights_A, *weights = vary_together(x_TD, weights_A, w_gate_EDF, w_up_EDF, w_down_EFD)
    return _to_tokens((lay.block, lay.expected, top_k), x_TD, weights_A, *weights,
                      (order_A, lay.sizes_E, lay.starts_E, lay.padded_starts_E, lay.group_N, lay.used))


def _block_rows(i, statics, index):
    """Block i's expert, which of its rows hold a copy, those copies and their tokens."""
    block, _, top_k = statics
    order_A, sizes_E, starts_E, padded_starts_E, group_N, _ = index
    g = group_N[i]
    rank_b = i * block + jnp.arange(block) - padded_starts_E[g]
    real_b = rank_b < sizes_E[g]
    copy_b = order_A[jnp.where(real_b, starts_E[g] + rank_b, 0)]
    return g, real_b, copy_b, copy_b // top_k


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _to_tokens(statics, x_TD, weights_A, w_gate_EDF, w_up_EDF, w_down_EFD, index):
    return _to_tokens_fwd(statics, x_TD, weights_A, w_gate_EDF, w_up_EDF, w_down_EFD, index)[0]


def _to_tokens_fwd(statics, x_TD, weights_A, w_gate_EDF, w_up_EDF, w_down_EFD, index):
    expected = statics[1]
    lo = x_TD.dtype

    def kernel(acc):
        def one_block(i, out_TD):
            g, real_b, copy_b, token_b = _block_rows(i, statics, index)
            y_bD = _block_forward(x_TD[token_b], g, w_gate_EDF, w_up_EDF, w_down_EFD, acc)[0]
            # a padding row repeats a real copy's product: it adds zero (a where: an overflow there adds no NaN)
            y_bD = jnp.where(real_b[:, None], y_bD * weights_A[copy_b].astype(acc)[:, None], 0)
            return out_TD.at[token_b].add(y_bD)

        zeros = vary_together(jnp.zeros(x_TD.shape, acc), x_TD, weights_A, w_gate_EDF, w_up_EDF, w_down_EFD,
                              *index)[0]
        return block_loop(index[-1], expected, one_block, zeros).astype(lo)

    return (_on_cpu_in_float32(lo, kernel),
            (x_TD, weights_A, w_gate_EDF, w_up_EDF, w_down_EFD, index))


def _to_tokens_bwd(statics, residuals, dout_TD):
    """y = (silu(x Wg) * (x Wu)) Wd per block, out[token] += w * y; over the forward's blocks in the same order.
    Eight block-sized products (eleven with the forward's three): gate and up recomputed, dout Wd^T, which
    gives both the hidden gradient and the routing weight's, two for the input gradient, three for the
    weights'. Gradients accumulate in the loop's carry, in place (on a CPU in float32: `_on_cpu_in_float32`),
    and come back in their inputs' dtypes; the products take operands in x's dtype, as the forward's do."""
    x_TD, weights_A, w_gate_EDF, w_up_EDF, w_down_EFD, index = residuals
    expected = statics[1]
    lo = x_TD.dtype

    def kernel(acc, on_cpu):
        def one_block(i, carry):
            dw_gate, dw_up, dw_down, dx_TD, dweights_A = carry
            g, real_b, copy_b, token_b = _block_rows(i, statics, index)
            x_bD = x_TD[token_b]
            gate_bF, up_bF = _dot(x_bD, w_gate_EDF[g], acc), _dot(x_bD, w_up_EDF[g], acc)
            sigmoid_bF = jax.nn.sigmoid(gate_bF)
            act_bF = gate_bF * sigmoid_bF  # silu
            h_bF = (act_bF * up_bF).astype(lo)
            dout_bD = dout_TD[token_b].astype(lo)
            dhw_bF = _dot(dout_bD, w_down_EFD[g].T, acc)  # d(out)/d(h) for a weight of 1
            weight_b = jnp.where(real_b, weights_A[copy_b], 0).astype(acc)
            dweight_b = jnp.where(real_b, jnp.sum(h_bF.astype(acc) * dhw_bF, axis=-1), 0)
            dh_bF = jnp.where(real_b[:, None], dhw_bF * weight_b[:, None], 0)
            dy_bD = (dout_bD.astype(acc) * weight_b[:, None]).astype(lo)
            dup_bF = (dh_bF * act_bF).astype(lo)
            dgate_bF = (dh_bF * up_bF * (sigmoid_bF * (1 + gate_bF * (1 - sigmoid_bF)))).astype(lo)  # silu'
            dx_bD = _dot(dgate_bF, w_gate_EDF[g].T, acc) + _dot(dup_bF, w_up_EDF[g].T, acc)
            xT_Db, hT_Fb = _transposed(x_bD, on_cpu), _transposed(h_bF, on_cpu)
            return (dw_gate.at[g].add(_dot(xT_Db, dgate_bF, acc)), dw_up.at[g].add(_dot(xT_Db, dup_bF, acc)),
                    dw_down.at[g].add(_dot(hT_Fb, dy_bD, acc)), dx_TD.at[token_b].add(dx_bD),
                    dweights_A.at[copy_b].add(dweight_b))

        inputs = (w_gate_EDF, w_up_EDF, w_down_EFD, x_TD, weights_A)
        zeros = tuple(vary_together(jnp.zeros(a.shape, acc), *inputs, dout_TD, *index)[0] for a in inputs)
        grads = block_loop(index[-1], expected, one_block, zeros)
        return tuple(grad.astype(a.dtype) for grad, a in zip(grads, inputs))

    dw_gate, dw_up, dw_down, dx_TD, dweights_A = jax.lax.platform_dependent(
        cpu=lambda: kernel(jnp.float32, True), default=lambda: kernel(lo, False))  # (_on_cpu_in_float32's rule)
    return dx_TD, dweights_A, dw_gate, dw_up, dw_down, (None,) * len(index)


_to_tokens.defvjp(_to_tokens_fwd, _to_tokens_bwd)
