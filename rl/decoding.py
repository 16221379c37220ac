"""Per-token pieces the fixed-batch and continuous-batching samplers share: the rollout record, the policy a
state merges into, the draw of a token (filters, greedy, vocabulary mask) and the stop test. See rl.sampler
for the conventions."""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.sharding.context import constrain_whole_rows


PHASE_ALIGN = 8  # a decode phase's cache ends on a multiple of this many completion slots (or at the budget)


def phase_ends(max_new: int, phases: int) -> tuple[int, ...]:
    """The completion slots filled by the end of each decode phase (`SamplingConfig.cache_phases`): the budget
    split evenly, each end rounded up to `PHASE_ALIGN`, the last = `max_new`; phases that would be empty go."""
    ends: list[int] = []
    for j in range(1, phases + 1):
        even = -(-max_new * j // phases)  # ceil(max_new * j / phases)
        end = min(max_new, -(-even // PHASE_ALIGN) * PHASE_ALIGN)
        if not ends or end > ends[-1]:
            ends.append(end)
    return tuple(ends)


def grown_slots(tree, slot_axes, length: int):
    """Caches (or a valid-slot mask) with empty slots appended on their slot axes up to `length` slots: the
    next decode phase's. `slot_axes`: an int, or `tree`'s structure of them (Policy.cache_slot_axes)."""
    def pad(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - x.shape[axis])
        return jnp.pad(x, widths)
    return pad(tree, slot_axes) if isinstance(slot_axes, int) else jax.tree.map(pad, tree, slot_axes)


class Rollout(NamedTuple):
    tokens_BT: jax.Array  # int32 [B, P + N]: left-padded prompt, then completion (pad after the stop)
    valid_BT: jax.Array  # bool: real prompt tokens and generated tokens up to and including EOS
    positions_BT: jax.Array  # int32: cumsum(valid) - 1
    logprobs_BN: jax.Array  # float32: log-prob of each generated token, temperature-scaled, unfiltered
    lengths_B: jax.Array  # int32: generated tokens per row (EOS included)
    experts_LBTK: jax.Array  # int32: experts chosen per MoE layer and token, for routing replay
    steps: jax.Array  # int32: decode iterations run (the loop exits once every row has stopped)
    logits_BNV: jax.Array | None = None  # float32 raw logits of every step, only with keep_logits

    @property
    def prompt_length(self) -> int:
        return self.tokens_BT.shape[1] - self.logprobs_BN.shape[1]

    @property
    def completion_BN(self) -> jax.Array:
        return self.tokens_BT[:, self.prompt_length:]

    @property
    def completion_mask_BN(self) -> jax.Array:
        return self.valid_BT[:, self.prompt_length:]


def merged_policy(graphdef, state):
    """The policy of `graphdef` and `state`: an nnx.State, or a tuple of States (e.g. trainable params and
    routing bias) that `nnx.merge(graphdef, *state)` reassembles."""
    return nnx.merge(graphdef, *state) if isinstance(state, tuple) else nnx.merge(graphdef, state)


def filter_logits(logits_BV: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Top-k (k = 0: off) then nucleus filtering; removed entries become -inf. k and p may be traced.

    One descending sort serves both: the top-k filter of a sorted row keeps it sorted, so the nucleus is
    computed on it directly (the k-th value's ties are kept, as a filter `logits < kth` keeps them)."""
    vocab = logits_BV.shape[-1]
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)
    k = jnp.where(top_k > 0, jnp.clip(top_k, 1, vocab), vocab)
    kth_B1 = jax.lax.dynamic_slice_in_dim(sorted_BV, k - 1, 1, axis=-1)
    sorted_BV = jnp.where(sorted_BV < kth_B1, -jnp.inf, sorted_BV)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    # the top token is always kept; top_p = 1 keeps all (beside top-k, a float32 cumsum reaching 1.0 early
    # dropped the top-k's least likely tokens)
    keep_BV = ((jnp.cumsum(probs_BV, axis=-1) - probs_BV) < top_p) | (top_p >= 1)
    nucleus_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BV < jnp.maximum(kth_B1, nucleus_B1), -jnp.inf, logits_BV)


def first_argmax(x_BV: jax.Array) -> jax.Array:
    """`jnp.argmax(x_BV, axis=-1)` (int32), the same index for every input: the first maximum, or the first
    NaN when a row holds one (jnp.argmax counts NaN as the maximum).

    Two plain reductions (the maximum, then the smallest index holding it) instead of XLA's variadic
    (value, index) reduce, which its CPU backend runs element by element: 1.1 ms of a 64-row decode step
    over a 2,048-token vocabulary, most of the token draw."""
    vocab = x_BV.shape[-1]
    nan_BV = jnp.isnan(x_BV)
    hit_BV = jnp.where(jnp.any(nan_BV, axis=-1, keepdims=True), nan_BV,
                       x_BV == jnp.max(x_BV, axis=-1, keepdims=True))
    return jnp.min(jnp.where(hit_BV, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)


def categorical(key: jax.Array, logits_BV: jax.Array) -> jax.Array:
    """`jax.random.categorical(key, logits_BV, axis=-1)` (int32), the same draw: the Gumbel-max trick as
    JAX writes it (argmax of logits plus `jax.random.gumbel(key, shape, dtype)`), with `first_argmax`."""
    return first_argmax(jax.random.gumbel(key, logits_BV.shape, logits_BV.dtype) + logits_BV)


def sample_token(logits_BV, key, temperature, top_k, top_p, vocab_size: int | None = None, filters: bool = True):
    """(token, log-prob under softmax(logits / T), unfiltered). Greedy when temperature == 0.

    Ids at or past `vocab_size` (static; None: every id) are never drawn. The filters (a sort of the
    vocabulary) run only when they can remove something, and neither they nor the random draw run when
    decoding greedily: on a CPU they cost more than the model's decode step. `filters` (static) False: top_k
    and top_p are known to remove nothing (`SamplingConfig.filters`) and no filter is compiled; the branch,
    though never taken, cost a TPU decode step layout copies of the [B, V] logits for its sort (qwen3_30b_a3b
    on v5p-16: 1.09 GB of HBM a step with it, the costliest branch counted, of 2.44 on a 2-layer proxy).

    Without filters the logits stay as the LM head leaves them (vocabulary over `tensor` in the sampler's layout):
    the draw (Gumbel noise, the same bits however the row is split: JAX's partitionable threefry), its maxima and
    first index, the drawn logit (`picked`) and the logsumexp are elementwise work and reductions that each shard
    does on its own slice, joined by all-reduces of a few values a row; the filters' sort takes each row whole on
    one device (sharding.context.constrain_whole_rows), an all-to-all of the logits (qwen3_30b_a3b on v5p-16:
    233 MB of HBM and 29 MB over the interconnect a step)."""
    if filters:
        logits_BV = constrain_whole_rows(logits_BV)  # each row's sort on one device, not repeated per vocab shard
    safe_t = jnp.where(temperature > 0, temperature, 1.0)
    scaled_BV = logits_BV.astype(jnp.float32) / safe_t  # cast to fp32: log-probs are compared at 1e-5
    drawable_BV = scaled_BV
    if vocab_size is not None and vocab_size < logits_BV.shape[-1]:
        drawable_BV = jnp.where(jnp.arange(logits_BV.shape[-1]) < vocab_size, scaled_BV, -jnp.inf)

    def draw():
        if not filters:
            return categorical(key, drawable_BV)
        filtering = (top_k > 0) | (top_p < 1)
        filtered_BV = jax.lax.cond(filtering, filter_logits, lambda x, *_: x, drawable_BV, top_k, top_p)
        return categorical(key, filtered_BV)

    def greedy():
        return first_argmax(drawable_BV)

    token_B = jax.lax.cond(temperature > 0, draw, greedy)
    # the drawn logit less the row's logsumexp, as the trainer scores it (rl.grpo.logprobs): a log_softmax
    # wrote the whole [B, V] float32 row again to read one entry of it
    logp_B = picked(scaled_BV, token_B) - jax.nn.logsumexp(scaled_BV, axis=-1)
    return token_B, logp_B


def picked(x_BV: jax.Array, index_B: jax.Array) -> jax.Array:
    """`x_BV[b, index_B[b]]` for each row, exactly: a sum over the vocabulary of the one entry kept (the others
    +0.0), a reduction that XLA splits over the vocabulary's shards as it does the logsumexp's sum."""
    hit_BV = jnp.arange(x_BV.shape[-1], dtype=index_B.dtype) == index_B[:, None]
    return jnp.sum(jnp.where(hit_BV, x_BV, 0.0), axis=-1)


def is_stop(token_B: jax.Array, stop_ids: tuple[int, ...]) -> jax.Array:
    hits = [token_B == i for i in stop_ids]  # one id: exactly `token_B == eos_id`
    return functools.reduce(operator.or_, hits) if hits else jnp.zeros(token_B.shape, bool)


def padding_routes(shape: tuple[int, ...]) -> jax.Array:
    """int32 routes of `shape` ([..., K]) for positions no token was routed at (past a row's end, a merged
    rollout's extra left padding): experts 0..K-1 at each, K distinct experts as a router's top-k are (K is at
    most the routed experts: model.config checks it). A replayed forward routes these positions too, and a
    kernel may count on each token's K copies going to K different experts (model.dispatch's ragged path with
    fewer local experts than K keeps t x local copies): one expert repeated K times crowded real tokens'
    copies out. Which experts is immaterial otherwise: pads are masked out of the loss, and replay skips the
    selection (DeepSeek's group limit included)."""
    return jnp.broadcast_to(jnp.arange(shape[-1], dtype=jnp.int32), shape)
