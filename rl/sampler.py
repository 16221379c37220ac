"""The jitted sampler: prefill, then KV-cache decoding inside one `lax.while_loop`.

It runs the training policy's own code and weights (same NNX graph, same state, same mesh; or their copy in
the sampler's inference layout, rl.sampler_layout, on accelerators with each layer's weights apart), so the
log-probs it returns are the trainer's log-probs up to float rounding: no sampler/trainer mismatch.

Layout of a rollout row: the prompt left-padded to a bucket length P, then N completion slots. Positions
count real tokens only (`cumsum(valid) - 1`), so left padding changes nothing. Prompts are prefilled once and
their caches repeated for the G samples of each prompt. Every token's MoE routing is recorded for replay.
One compiled program per (batch, prompt bucket, token budget, G); temperature, top-p and top-k are traced.
With `sampling.slots` > 0, `Sampler.generate` decodes the same rollout by continuous batching (rl.continuous).

Stopping and the vocabulary: a row stops at the first token in `stop_ids` (a tokenizer's eos ids: Qwen3
stops on <|im_end|> and <|endoftext|>), and is padded with `pad_id` after it. A model whose embedding is
padded past its tokenizer (Qwen3: 151,936 rows for 151,669 tokens) never samples an id at or past the
tokenizer's `vocab_size`: those logits are -inf for the draw. Log-probs stay those of the model's whole
vocabulary, as the trainer computes them (like the top-p / top-k filters, the mask changes what is drawn,
not the distribution a log-prob is taken under). When the tokenizer fills the model's vocabulary the mask is
not compiled at all.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.errors import UserError
from r1jax.rl.continuous import generate_continuous
from r1jax.rl.decoding import (Rollout, filter_logits, grown_slots, is_stop, merged_policy,  # noqa: F401 (API)
                               padding_routes, phase_ends, sample_token)
from r1jax.rl.sampler_layout import LAYOUTS
from r1jax.rl.config_checks import INT32_MAX, check_sampling
from r1jax.sharding import MESH_AXES
from r1jax.sharding.distributed import replicated
from r1jax.sharding.rules import check_rules


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 1.0  # rejection sampling's (stages[].temperature unset); GRPO samples at grpo.temperature
    top_p: float = 1.0  # R1 evaluation: 0.95
    top_k: int = 0  # 0: off. Log-probs are the unfiltered softmax(logits / T)'s: see README, off-policy
    prompt_buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048)
    # The sampler's weight layout (rl.sampler_layout): auto | inference | train; an inference mesh
    # ({data, fsdp, expert, tensor}) and rule overrides replacing the family default.
    layout: str = "auto"
    mesh: Optional[dict[str, int]] = None
    rules: Optional[dict[str, list[str]]] = None
    # decode attention reads the KV cache in blocks of this many slots up to the longest row (online
    # softmax; equal to the dense read up to float rounding); 0: every step reads the whole budget. A cache
    # of at most two blocks is read whole all the same (model.kv_cache.DENSE_READ_BLOCKS)
    kv_block: int = 0
    # the decode loop in this many phases, each over a cache just long enough for it (the prompt bucket + the
    # slots its last step fills, rounded up to 8): a step reads the slots its phase can hold, not the whole
    # budget's, and the cache grows between phases (one copy each). Each phase is one more compiled loop;
    # 1: one loop over the budget's cache. Continuous batching's loop over `slots` runs in the same phases,
    # the next starting once its longest live row fills the phase's slots; its tail loops read the whole cache
    cache_phases: int = 1
    # continuous batching: this many decode slots serve all P x G rows, a stopped row's slot taking the next
    # pending one (rl.continuous); 0: the fixed-batch sampler, every row decoded together
    slots: int = 0
    # continuous batching's tail: once no row is pending and at most N rows are live, the live rows move into
    # N slots and decoding goes on with N (for each N here below `slots`; each is one more compiled loop), so
    # the few long rows at a rollout's end do not pay for every slot; e.g. [16, 4, 1] after slots 64
    tail_slots: tuple[int, ...] = ()
    # the sampler on devices of its own (rl.sampler_devices): `devices` in all, the last devices/P of each of
    # the P processes' devices, sample while the trainer's mesh is built on the others; 0: it shares the
    # trainer's devices
    devices: int = 0

    @property
    def filters(self) -> bool:
        """Whether top_k or top_p can remove a token: the sampler compiles its filters only then."""
        return self.top_k > 0 or self.top_p < 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"sampling.max_new_tokens={self.max_new_tokens}: must be >= 1")
        check_sampling("sampling", self.temperature, self.top_p, self.top_k)
        if not self.prompt_buckets or list(self.prompt_buckets) != sorted(set(self.prompt_buckets)) \
                or self.prompt_buckets[0] < 1:
            raise UserError(f"sampling.prompt_buckets={list(self.prompt_buckets)}: must be increasing lengths >= 1")
        if self.prompt_buckets[-1] + self.max_new_tokens > INT32_MAX:  # token positions are int32
            raise UserError(f"sampling.max_new_tokens={self.max_new_tokens}: the largest prompt bucket "
                            f"({self.prompt_buckets[-1]}) plus max_new_tokens must be at most 2^31-1")
        if self.layout not in LAYOUTS:
            raise UserError(f"sampling.layout={self.layout!r}: choose one of {', '.join(LAYOUTS)}")
        self._check_mesh()
        check_rules(self.rules, "sampling.rules")
        if self.kv_block < 0:
            raise UserError(f"sampling.kv_block={self.kv_block}: must be >= 0 (0 reads the whole cache)")
        if type(self.cache_phases) is not int or self.cache_phases < 1:
            raise UserError(f"sampling.cache_phases={self.cache_phases}: must be an integer >= 1 (1 decodes over "
                            "the whole budget's cache)")
        if self.slots < 0:
            raise UserError(f"sampling.slots={self.slots}: must be >= 0 (0 is the fixed-batch sampler)")
        if self.tail_slots and not self.slots:
            raise UserError(f"sampling.tail_slots={list(self.tail_slots)}: needs continuous batching "
                            "(sampling.slots > 0)")
        if any(type(n) is not int or not 0 < n < self.slots for n in self.tail_slots):
            raise UserError(f"sampling.tail_slots={list(self.tail_slots)}: each must be an integer in "
                            f"[1, sampling.slots={self.slots})")
        if type(self.devices) is not int or self.devices < 0:
            raise UserError(f"sampling.devices={self.devices}: must be an integer >= 0 (0 shares the trainer's "
                            "devices)")

    def _check_mesh(self) -> None:
        """`mesh` names mesh axes, each of size >= 1 or -1 (fill), one -1 at most (fsdp's unless it is given):
        the `auto` layout would otherwise fall back to the training layout without a word."""
        if self.mesh is None:
            return
        unknown = sorted(set(self.mesh) - set(MESH_AXES))
        if unknown:
            raise UserError(f"sampling.mesh: unknown axes {unknown}; use {', '.join(MESH_AXES)}")
        for axis, size in self.mesh.items():
            if type(size) is not int or not (size >= 1 or size == -1):
                raise UserError(f"sampling.mesh.{axis}={size}: a mesh axis size must be >= 1 or -1 (fill with the "
                                "remaining devices)")
        fills = [a for a, size in {"fsdp": -1, **self.mesh}.items() if size == -1]
        if len(fills) > 1:
            raise UserError(f"sampling.mesh: {' and '.join(fills)} are both -1 (fsdp is -1 unless given); at most "
                            "one axis fills the remaining devices")


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    for bucket in buckets:
        if length <= bucket:
            return bucket
    raise UserError(f"prompt of {length} tokens is longer than the largest prompt bucket ({buckets[-1]}); "
                    "raise sampling.prompt_buckets")


def check_token_ids(prompts: Sequence[Sequence[int]], vocab_size: int | None) -> None:
    """A UserError naming the first prompt id that is not a token: not an integer, negative, or (`vocab_size`
    given) past the vocabulary (an id past the embedding read row 0, a negative one wrapped around)."""
    for row, prompt in enumerate(prompts):
        ids = np.asarray(prompt)
        if ids.size == 0:
            continue
        if ids.dtype.kind not in "iu":
            raise UserError(f"prompt {row}: token ids must be integers, not {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= (vocab_size if vocab_size is not None else 2**31))]  # (int32 ids)
        if bad.size:
            raise UserError(f"prompt {row}: token id {int(bad[0])} is outside the vocabulary (ids 0 to "
                            f"{'the model vocabulary' if vocab_size is None else vocab_size - 1})")


def left_pad(prompts: Sequence[Sequence[int]], buckets: Sequence[int], pad_id: int):
    """[B, P] tokens and valid mask, each prompt right-aligned in the smallest bucket that fits all."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    width = bucket_length(max(len(p) for p in prompts), buckets)
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    valid = np.zeros((len(prompts), width), bool)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):] = prompt
        valid[row, width - len(prompt):] = True
    return tokens, valid


class _Loop(NamedTuple):
    step: jax.Array
    logits_BV: jax.Array
    tokens_BN: jax.Array
    logprobs_BN: jax.Array
    done_B: jax.Array
    caches: list
    kv_valid_BS: jax.Array
    next_pos_B: jax.Array
    experts_LBNK: jax.Array
    logits_BNV: jax.Array | None


def _repeat_rows(tree, samples: int, axis: int):
    return jax.tree.map(lambda x: jnp.repeat(x, samples, axis=axis), tree)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new", "samples", "stop_ids", "pad_id",
                                             "ignore_eos", "keep_logits", "vocab_size", "kv_block",
                                             "cache_phases", "filters"))
def generate_padded(graphdef, state, prompt_BP, prompt_valid_BP, key, temperature, top_k, top_p, *,
                    max_new: int, samples: int, stop_ids: tuple[int, ...], pad_id: int, ignore_eos: bool,
                    keep_logits: bool = False, vocab_size: int | None = None, kv_block: int = 0,
                    cache_phases: int = 1, row_max_new_B: jax.Array | None = None, filters: bool = True) -> Rollout:
    """Sample `samples` completions per left-padded prompt. Rows are prompt-major: row = prompt * G + g.

    A row stops at its first id in `stop_ids`; ids at or past `vocab_size` (None: none) are never sampled.
    `kv_block` > 0: decode steps read the cache block-wise up to the filled slots (`SamplingConfig.kv_block`).
    `cache_phases` > 1: the decode loop runs in phases over caches that grow (`SamplingConfig.cache_phases`);
    the same tokens and log-probs up to float rounding.
    `filters` False: top_k and top_p are known to remove nothing; no filter is compiled (`sample_token`).
    `row_max_new_B` (optional, [B]): a row also stops after that many tokens (a test and bench hook).

    `state` is the policy's nnx.State, or a tuple of States (e.g. trainable params and routing bias) that
    `nnx.merge(graphdef, *state)` reassembles."""
    policy = merged_policy(graphdef, state)
    policy = policy.for_decoding()
    prompts, p = prompt_BP.shape
    ends = phase_ends(max_new, cache_phases)
    total = p + ends[0]  # the first phase's cache; later phases grow it
    positions_BP = jnp.maximum(jnp.cumsum(prompt_valid_BP, axis=1) - 1, 0).astype(jnp.int32)
    kv_valid = jnp.zeros((prompts, total), bool).at[:, :p].set(prompt_valid_BP)
    with jax.named_scope("prefill"):
        out, caches = policy.forward_cached(prompt_BP, positions_BP, prompt_valid_BP,
                                            policy.init_cache(prompts, total), jnp.int32(0), kv_valid)
    batch = prompts * samples
    prompt_experts_LBPK = _repeat_rows(out.aux.experts_BTK, samples, axis=1)
    caches = [_repeat_rows(c, samples, axis=1) for c in caches]  # [L, B, S, ...]: batch is axis 1
    moe_layers, k = out.aux.experts_BTK.shape[0], out.aux.experts_BTK.shape[-1]
    init = _Loop(
        step=jnp.int32(0), logits_BV=jnp.repeat(out.logits_BTV[:, -1], samples, axis=0),
        tokens_BN=jnp.full((batch, max_new), pad_id, jnp.int32), logprobs_BN=jnp.zeros((batch, max_new)),
        done_B=jnp.zeros((batch,), bool), caches=caches, kv_valid_BS=jnp.repeat(kv_valid, samples, axis=0),
        next_pos_B=jnp.repeat(jnp.sum(prompt_valid_BP, axis=1).astype(jnp.int32), samples),
        experts_LBNK=padding_routes((moe_layers, batch, max_new, k)),  # the columns past the last step keep them
        logits_BNV=jnp.zeros((batch, max_new, out.logits_BTV.shape[-1])) if keep_logits else None)

    def body(s: _Loop) -> _Loop:
        token_B, logp_B = sample_token(s.logits_BV, jax.random.fold_in(key, s.step), temperature, top_k, top_p,
                                       vocab_size, filters)
        live_B = ~s.done_B
        token_B = jnp.where(live_B, token_B, pad_id)
        slot = p + s.step
        kv_valid_BS = s.kv_valid_BS.at[:, slot].set(live_B)
        out, caches = policy.forward_cached(token_B[:, None], s.next_pos_B[:, None], live_B[:, None],
                                            s.caches, slot, kv_valid_BS, kv_block=kv_block)
        stopped_B = live_B & is_stop(token_B, stop_ids) & (not ignore_eos)
        if row_max_new_B is not None:
            stopped_B = stopped_B | (live_B & (s.step + 1 >= row_max_new_B))
        return _Loop(
            step=s.step + 1, logits_BV=out.logits_BTV[:, 0],
            tokens_BN=s.tokens_BN.at[:, s.step].set(token_B),
            logprobs_BN=s.logprobs_BN.at[:, s.step].set(jnp.where(live_B, logp_B, 0.0)),
            done_B=s.done_B | stopped_B, caches=caches, kv_valid_BS=kv_valid_BS,
            next_pos_B=s.next_pos_B + live_B, experts_LBNK=s.experts_LBNK.at[:, :, s.step].set(
                out.aux.experts_BTK[:, :, 0]),
            logits_BNV=None if s.logits_BNV is None else s.logits_BNV.at[:, s.step].set(s.logits_BV))

    def running(s: _Loop, end: int) -> jax.Array:
        return (s.step < end) & ~jnp.all(s.done_B)

    final, slot_axes = init, policy.cache_slot_axes()
    for phase, end in enumerate(ends):
        if phase:
            final = final._replace(caches=grown_slots(final.caches, slot_axes, p + end),
                                   kv_valid_BS=grown_slots(final.kv_valid_BS, 1, p + end))
        # the first loop is the decode step `r1jax compile` reads (sharding.decode_stats: "decode/while")
        with jax.named_scope("decode" if phase == 0 else f"decode_phase_{end}"):
            final = jax.lax.while_loop(functools.partial(running, end=end), body, final)
    completion_valid_BN = final.kv_valid_BS[:, p:]
    valid_BT = jnp.concatenate([jnp.repeat(prompt_valid_BP, samples, axis=0), completion_valid_BN], axis=1)
    tokens_BT = jnp.concatenate([jnp.repeat(prompt_BP, samples, axis=0), final.tokens_BN], axis=1)
    experts = jnp.concatenate([prompt_experts_LBPK, final.experts_LBNK], axis=2)
    return Rollout(tokens_BT, valid_BT, jnp.maximum(jnp.cumsum(valid_BT, axis=1) - 1, 0).astype(jnp.int32),
                   final.logprobs_BN, jnp.sum(completion_valid_BN, axis=1).astype(jnp.int32), experts,
                   final.step, final.logits_BNV)


class Sampler:
    """Generates from a policy's graph and state; advances its own key so no two calls share one.

    `stop_ids`: the ids that stop a row (a tokenizer's `eos_ids`); `pad_id` fills prompts' left padding and
    rows after they stopped; `vocab_size`: the tokenizer's, when the model's vocabulary is padded past it
    (None: every id of the model may be sampled). `layout` (rl.sampler_layout.SamplerLayout; None: the
    state's own layout) reshards the state before each rollout (each layer's parameters apart, merged by
    `layout.graphdef`) and traces the sampler under its rules."""

    def __init__(self, graphdef, config: SamplingConfig, stop_ids: Sequence[int], pad_id: int, seed: int = 0,
                 vocab_size: int | None = None, layout=None):
        self.graphdef, self.config, self.layout = graphdef, config, layout
        self.stop_ids, self.pad_id, self.vocab_size = tuple(int(i) for i in stop_ids), pad_id, vocab_size
        self.key = jax.random.key(seed)

    def next_key(self) -> jax.Array:
        self.key, key = jax.random.split(self.key)
        return key

    def generate(self, state, prompts: Sequence[Sequence[int]], samples: int = 1, *, key=None,
                 ignore_eos: bool = False, keep_logits: bool = False, row_max_new: Sequence[int] | None = None,
                 **overrides) -> Rollout:
        """G = `samples` completions for each prompt (lists of token ids). `overrides` replace fields of
        the SamplingConfig for this call (temperature, top_p, top_k, max_new_tokens, slots, ...).
        `row_max_new` (a test and bench hook): per row (prompt-major), stop after that many tokens."""
        cfg = dataclasses.replace(self.config, **overrides) if overrides else self.config
        if samples < 1:
            raise UserError(f"samples={samples}: completions per prompt must be >= 1")
        check_token_ids(prompts, self.vocab_size)
        tokens, valid = left_pad(prompts, cfg.prompt_buckets, self.pad_id)
        key = self.next_key() if key is None else key
        rows = len(prompts) * samples
        if row_max_new is not None and len(row_max_new) != rows:
            raise UserError(f"row_max_new has {len(row_max_new)} entries for {rows} rows")
        options = dict(max_new=cfg.max_new_tokens, samples=samples, stop_ids=self.stop_ids, pad_id=self.pad_id,
                       ignore_eos=ignore_eos, keep_logits=keep_logits, vocab_size=self.vocab_size,
                       kv_block=cfg.kv_block, cache_phases=cfg.cache_phases, filters=cfg.filters)

        # the inference layout's copy holds each layer's parameters apart: its own graph merges it
        graphdef = self.graphdef if self.layout is None else self.layout.graphdef

        def decode(placed):  # `placed`: (state, key), in the sampler's layout
            limits = None if row_max_new is None else jnp.asarray(row_max_new, jnp.int32)
            args = (graphdef, placed[0], jnp.asarray(tokens), jnp.asarray(valid), placed[1],
                    jnp.float32(cfg.temperature), jnp.int32(cfg.top_k), jnp.float32(cfg.top_p))
            if cfg.slots > 0:  # more slots than rows would decode idle slots
                return generate_continuous(*args, limits, slots=min(cfg.slots, rows),
                                           tail_slots=tuple(cfg.tail_slots), **options)
            return generate_padded(*args, row_max_new_B=limits, **options)

        run = self.layout.run if self.layout is not None else lambda placed, generate: generate(placed)
        rollout = run((state, key), decode)
        return _host_readable(rollout)


def _host_readable(rollout: Rollout) -> Rollout:
    """Under several JAX processes, the fields the host reads (tokens, the valid mask, lengths, log-probs:
    small) are gathered onto every device so each process can decode, score and lay out every row (GRPO's
    padding and packing read the mask); the rest stays sharded."""
    if jax.process_count() == 1:
        return rollout
    return rollout._replace(tokens_BT=replicated(rollout.tokens_BT), valid_BT=replicated(rollout.valid_BT),
                            lengths_B=replicated(rollout.lengths_B), logprobs_BN=replicated(rollout.logprobs_BN))
