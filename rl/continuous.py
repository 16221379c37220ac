"""Continuous batching inside one compiled loop: a fixed number of decode slots serve all P x G rows.

The fixed-batch sampler (rl.sampler.generate_padded) decodes every row together, so a batch runs as long as
its longest row while stopped rows idle. Here S slots decode at once; a slot whose row stops takes the next
pending request (prompt-major: request r = prompt * G + g) at the next iteration, until every row is done.

- Prefill runs once per prompt, before the loop, into caches of the prompts' P slots (the fixed-batch
  sampler's also holds its first phase's decode slots, masked); admitting a request copies its prompt's
  cache, last-position logits and valid mask into the slot.
- A slot's row writes its n-th token at cache slot P + n and positions count its real tokens, as a
  fixed-batch row does; its cache row past P is masked until written.
- Random draws are keyed by (prompt, sample, token index) (`fold_in` of the call's key), so a row's
  completion does not depend on the number of slots or on which slot served it.
- The tail (`tail_slots`): once nothing is pending, a loop over fewer slots takes over whenever the live rows
  fit it (compacted into its first slots), so a step of the rollout's last long rows costs their rows only.
- Results are scattered into [R, N] arrays by request (an extra sink row takes idle slots' writes) and come
  back as the fixed-batch sampler's Rollout: prompt-major, log-probs, lengths and routing for replay. Positions
  past a row's end hold pad tokens, zero log-probs and `rl.decoding.padding_routes` (the fixed-batch sampler
  records there the routes of the pads it forwards, and `padding_routes` past its last step). The loss masks
  them, but a replayed forward of unpacked rows routes every position, pads included (`padding_routes` says
  why theirs are K distinct experts).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from r1jax.rl.decoding import Rollout, grown_slots, is_stop, merged_policy, padding_routes, phase_ends, sample_token
from r1jax.sharding.context import constrain, constrain_whole_rows


class _Slots(NamedTuple):
    step: jax.Array  # loop iterations run
    next_request: jax.Array  # the first request not yet admitted
    finished: jax.Array  # rows done
    longest: jax.Array  # the most tokens a live row has generated (on every device: the step's gathered counts)
    request_S: jax.Array  # the request each slot serves (R: none)
    count_S: jax.Array  # tokens its row has generated
    active_S: jax.Array
    logits_SV: jax.Array  # the logits its next token is drawn from
    caches: list  # [L, S, ...] per segment, P + the phase's end slots (model.decoder.Policy.init_cache)
    kv_valid_SC: jax.Array
    next_pos_S: jax.Array
    tokens_RN: jax.Array  # by request, plus the sink row R
    logprobs_RN: jax.Array
    lengths_R: jax.Array
    experts_LRNK: jax.Array
    logits_RNV: jax.Array | None


def _row_keys(key, request_S, count_S, samples: int):
    """One key per slot: the call's key folded with (prompt, sample, token index)."""
    def one(request, count):
        return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, request // samples),
                                                     request % samples), count)
    return jax.vmap(one)(request_S, count_S)


def _sample_rows(logits_SV, keys_S, temperature, top_k, top_p, vocab_size, filters: bool = True):
    """`sample_token` row by row, each row with its own key."""
    logits_SV = constrain_whole_rows(logits_SV)  # each row drawn whole on one device (sample_token filters so)

    def one(logits_V, key):
        token, logp = sample_token(logits_V[None], key, temperature, top_k, top_p, vocab_size, filters)
        return token[0], logp[0]
    return jax.vmap(one)(logits_SV, keys_S)


def _admit(s: _Slots, prompt_caches, slot_axes, prompt_logits_PV, prompt_valid_PP, prompt_len_P, samples: int,
           requests: int) -> _Slots:
    """Free slots take the next pending requests, in order, with their prompts' prefilled state."""
    free_S = ~s.active_S
    request_S = s.next_request + jnp.cumsum(free_S) - 1
    admit_S = free_S & (request_S < requests)
    prompt_S = jnp.where(admit_S, request_S, 0) // samples
    p = prompt_valid_PP.shape[1]

    def admitted(c, pc, axis):  # the prompt's p slots (pc's whole slot axis) into the admitted slots' rows
        # every slot's first p slots rewritten, from its prompt or as they were: a write at a fixed slot, which
        # a mesh splitting the slots runs where they lie (a write at the admitted slots' indices gathers every
        # slot's rows to every device)
        admit = admit_S.reshape((1, -1) + (1,) * (c.ndim - 2))
        rows = jnp.where(admit, pc[:, prompt_S].astype(c.dtype), jax.lax.slice_in_dim(c, 0, p, axis=axis))
        return jax.lax.dynamic_update_slice_in_dim(c, rows, 0, axis=axis)

    caches = jax.tree.map(admitted, s.caches, prompt_caches, slot_axes)
    fresh_SC = jnp.zeros_like(s.kv_valid_SC).at[:, :p].set(prompt_valid_PP[prompt_S])
    return s._replace(
        next_request=s.next_request + jnp.sum(admit_S), request_S=jnp.where(admit_S, request_S, s.request_S),
        count_S=jnp.where(admit_S, 0, s.count_S), active_S=s.active_S | admit_S,
        logits_SV=jnp.where(admit_S[:, None], prompt_logits_PV[prompt_S], s.logits_SV), caches=caches,
        kv_valid_SC=jnp.where(admit_S[:, None], fresh_SC, s.kv_valid_SC),
        next_pos_S=jnp.where(admit_S, prompt_len_P[prompt_S], s.next_pos_S))


def _compact(s: _Slots, size: int) -> _Slots:
    """The state of the first `size` slots after the live ones moved there, in slot order (at most `size` are
    live; the rest are idle slots, whose writes go to the sink row)."""
    keep_S = jnp.argsort(~s.active_S, stable=True)[:size]

    def take(x, axis=0):
        return jnp.take(x, keep_S, axis=axis)
    return s._replace(request_S=take(s.request_S), count_S=take(s.count_S), active_S=take(s.active_S),
                      logits_SV=take(s.logits_SV), caches=jax.tree.map(lambda c: take(c, 1), s.caches),
                      kv_valid_SC=take(s.kv_valid_SC), next_pos_S=take(s.next_pos_S))


def _on_every_device(row_S, count_S, token_S, stopped_S, logp_S, experts_LSK):
    """A step's per-slot results (request row, token index, token, stopped, log-prob, [L, S, K] experts), whole
    on every device: packed as int32 columns (the log-prob's bits) and gathered at once. Under a mesh that
    splits the slots, scattering them into the [R, N] results row by request makes XLA gather each array
    separately: on a CPU mesh each gather is a rendezvous of all devices, ~26 of them per step."""
    layers, slots, k = experts_LSK.shape
    packed_SX = jnp.concatenate([
        jnp.stack([row_S, count_S, token_S, stopped_S.astype(jnp.int32),
                   jax.lax.bitcast_convert_type(logp_S.astype(jnp.float32), jnp.int32)], axis=1),
        jnp.transpose(experts_LSK, (1, 0, 2)).reshape(slots, layers * k).astype(jnp.int32)], axis=1)
    packed_SX = constrain(packed_SX, (None, None))
    row_S, count_S, token_S, stopped_S, bits_S = (packed_SX[:, i] for i in range(5))
    experts_LSK = jnp.transpose(packed_SX[:, 5:].reshape(slots, layers, k), (1, 0, 2))
    return (row_S, count_S, token_S, stopped_S.astype(bool), jax.lax.bitcast_convert_type(bits_S, jnp.float32),
            experts_LSK)


def _live_rows(s: _Slots) -> jax.Array:
    """The rows in the slots: admitted, not finished (counted on every device, where the sum of `active_S`
    would be a collective over the devices holding the slots)."""
    return s.next_request - s.finished


def slot_phases(slots: int, tail_slots: tuple[int, ...]) -> tuple[int, ...]:
    """The slot counts the loop runs with, in order: `slots`, then each smaller tail count, largest first."""
    return (slots,) + tuple(sorted({n for n in tail_slots if 0 < n < slots}, reverse=True))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new", "samples", "slots", "tail_slots", "stop_ids",
                                             "pad_id", "ignore_eos", "keep_logits", "vocab_size", "kv_block",
                                             "cache_phases", "filters"))
def generate_continuous(graphdef, state, prompt_PP, prompt_valid_PP, key, temperature, top_k, top_p,
                        row_max_new_R=None, *, max_new: int, samples: int, slots: int,
                        stop_ids: tuple[int, ...], pad_id: int, ignore_eos: bool, keep_logits: bool = False,
                        vocab_size: int | None = None, kv_block: int = 0,
                        tail_slots: tuple[int, ...] = (), cache_phases: int = 1, filters: bool = True) -> Rollout:
    """`generate_padded`'s rollout (same arguments and conventions) decoded by `slots` slots.

    `tail_slots`: smaller slot counts for the rollout's tail. Once no request is pending and at most N rows
    are live, the loop stops, the live rows move into the first N slots (their caches, logits and positions
    with them) and a loop over N slots runs on; each count is one more compiled loop. A step's cost follows
    its slots (the cache rows read, the MoE's row blocks), so the tail, where a few long rows run on alone,
    costs what those rows need. The same tokens; log-probs to float rounding (a batch of another size).
    `cache_phases` > 1: the loop over `slots` runs in phases over a cache that grows (as `generate_padded`'s),
    the next phase starting once the longest live row fills its phase's slots; the tail's loops read the
    whole budget's cache.
    `row_max_new_R` (optional, [P * G]): a row also stops after that many tokens (a test and bench hook)."""
    policy = merged_policy(graphdef, state)
    policy = policy.for_decoding()
    prompts, p = prompt_PP.shape
    requests = prompts * samples
    ends = phase_ends(max_new, cache_phases)
    positions_PP = jnp.maximum(jnp.cumsum(prompt_valid_PP, axis=1) - 1, 0).astype(jnp.int32)
    with jax.named_scope("prefill"):  # into caches of the prompts' P slots: admission copies those
        out, prompt_caches = policy.forward_cached(prompt_PP, positions_PP, prompt_valid_PP,
                                                   policy.init_cache(prompts, p), jnp.int32(0), prompt_valid_PP)
    slot_axes = policy.cache_slot_axes()
    # every prompt's cache rows on every device that holds slots: an admission then copies any prompt into the
    # slots at hand, where prompts split over the devices like the slots were gathered to every device at every
    # admission (an all-gather per cache entry and layer: 8 on bench_qwen3, each a rendezvous on a CPU mesh)
    prompt_caches = jax.tree.map(lambda c, axes: constrain(c, (None, None, *axes[2:])), prompt_caches,
                                 policy.cache_logical_axes())
    moe_layers, k = out.aux.experts_BTK.shape[0], out.aux.experts_BTK.shape[-1]
    vocab = out.logits_BTV.shape[-1]
    row_max_new_R = jnp.full((requests,), max_new, jnp.int32) if row_max_new_R is None else row_max_new_R
    init = _Slots(
        step=jnp.int32(0), next_request=jnp.int32(0), finished=jnp.int32(0), longest=jnp.int32(0),
        request_S=jnp.full((slots,), requests, jnp.int32), count_S=jnp.zeros((slots,), jnp.int32),
        active_S=jnp.zeros((slots,), bool), logits_SV=jnp.zeros((slots, vocab), out.logits_BTV.dtype),
        caches=policy.init_cache(slots, p + ends[0]), kv_valid_SC=jnp.zeros((slots, p + ends[0]), bool),
        next_pos_S=jnp.zeros((slots,), jnp.int32),
        tokens_RN=jnp.full((requests + 1, max_new), pad_id, jnp.int32),
        logprobs_RN=jnp.zeros((requests + 1, max_new)), lengths_R=jnp.zeros((requests + 1,), jnp.int32),
        experts_LRNK=padding_routes((moe_layers, requests + 1, max_new, k)),
        logits_RNV=jnp.zeros((requests + 1, max_new, vocab)) if keep_logits else None)
    admit = functools.partial(_admit, prompt_caches=prompt_caches, slot_axes=slot_axes,
                              prompt_logits_PV=constrain(out.logits_BTV[:, -1], (None, None)),
                              prompt_valid_PP=prompt_valid_PP,
                              prompt_len_P=jnp.sum(prompt_valid_PP, axis=1).astype(jnp.int32),
                              samples=samples, requests=requests)

    def body(s: _Slots, admitting: bool) -> _Slots:
        if admitting:  # the tail's loops start with every request admitted
            s = jax.lax.cond((_live_rows(s) < slots) & (s.next_request < requests), admit, lambda s: s, s)
        live_S, count_S = s.active_S, s.count_S
        token_S, logp_S = _sample_rows(s.logits_SV, _row_keys(key, s.request_S, count_S, samples), temperature,
                                       top_k, top_p, vocab_size, filters)
        token_S = jnp.where(live_S, token_S, pad_id)
        slot_S = jnp.where(live_S, p + count_S, p)  # an idle slot writes a masked entry at P
        kv_valid_SC = jax.vmap(lambda row, slot, live: row.at[slot].set(live))(s.kv_valid_SC, slot_S, live_S)
        out, caches = policy.forward_cached(token_S[:, None], s.next_pos_S[:, None], live_S[:, None], s.caches,
                                            slot_S, kv_valid_SC, kv_block=kv_block)
        row_S = jnp.where(live_S, s.request_S, requests)  # idle slots write to the sink row
        stopped_S = live_S & ((is_stop(token_S, stop_ids) & (not ignore_eos)) | (count_S + 1 >= max_new)
                              | (count_S + 1 >= row_max_new_R[jnp.minimum(s.request_S, requests - 1)]))
        # the scatters by request need every slot's results on every device: one gather of them all
        at_row_S, at_S, token_S, ended_S, logp_S, experts_LSK = _on_every_device(
            row_S, count_S, token_S, stopped_S, jnp.where(live_S, logp_S, 0.0), out.aux.experts_BTK[:, :, 0])
        running_on_S = (at_row_S < requests) & ~ended_S
        return s._replace(
            step=s.step + 1, finished=s.finished + jnp.sum(ended_S), count_S=count_S + live_S,
            longest=jnp.max(jnp.where(running_on_S, at_S + 1, 0)),
            active_S=live_S & ~stopped_S, logits_SV=out.logits_BTV[:, 0], caches=caches, kv_valid_SC=kv_valid_SC,
            next_pos_S=s.next_pos_S + live_S, tokens_RN=s.tokens_RN.at[at_row_S, at_S].set(token_S),
            logprobs_RN=s.logprobs_RN.at[at_row_S, at_S].set(logp_S),
            lengths_R=s.lengths_R.at[jnp.where(ended_S, at_row_S, requests)].set(at_S + 1),
            experts_LRNK=s.experts_LRNK.at[:, at_row_S, at_S].set(experts_LSK),
            logits_RNV=None if s.logits_RNV is None else s.logits_RNV.at[row_S, count_S].set(s.logits_SV))

    phases = slot_phases(slots, tail_slots)
    final = init
    for i, size in enumerate(phases):
        following = phases[i + 1] if i + 1 < len(phases) else 0

        def running(s: _Slots, following=following):
            more = s.finished < requests
            if following:  # on until nothing is pending and the live rows fit the next count
                more &= (s.next_request < requests) | (_live_rows(s) > following)
            return more
        if i:
            final = _compact(final, size)
        for j, end in enumerate(ends if i == 0 else ends[-1:]):  # the tail runs on the whole cache
            if i == 0 and j:
                final = final._replace(caches=grown_slots(final.caches, slot_axes, p + end),
                                       kv_valid_SC=grown_slots(final.kv_valid_SC, 1, p + end))

            def in_phase(s: _Slots, running=running, end=end):  # the next step writes below slot P + end
                return running(s) & (s.longest < end) if end < max_new else running(s)
            # the first loop is the decode step `r1jax compile` reads (sharding.decode_stats: "decode/while")
            name = "decode" if i == j == 0 else f"decode_phase_{end}" if i == 0 else f"decode_tail_{size}"
            with jax.named_scope(name):
                final = jax.lax.while_loop(in_phase, functools.partial(body, admitting=i == 0), final)
    lengths_R = final.lengths_R[:requests]
    completion_valid_RN = jnp.arange(max_new)[None, :] < lengths_R[:, None]
    valid_RT = jnp.concatenate([jnp.repeat(prompt_valid_PP, samples, axis=0), completion_valid_RN], axis=1)
    tokens_RT = jnp.concatenate([jnp.repeat(prompt_PP, samples, axis=0), final.tokens_RN[:requests]], axis=1)
    experts = jnp.concatenate([jnp.repeat(out.aux.experts_BTK, samples, axis=1),
                               final.experts_LRNK[:, :requests]], axis=2)
    return Rollout(tokens_RT, valid_RT, jnp.maximum(jnp.cumsum(valid_RT, axis=1) - 1, 0).astype(jnp.int32),
                   final.logprobs_RN[:requests], lengths_R, experts, final.step,
                   None if final.logits_RNV is None else final.logits_RNV[:requests])
