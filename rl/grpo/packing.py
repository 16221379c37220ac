"""Packed update batches: whole sequences (prompt + completion) laid end to end in shared rows.

The padded update batch (`rl.grpo.step.rollout_batch`) holds one sequence per row of length T (prompt bucket +
token budget), mostly padding when completions stop early. Packing copies each sequence's real tokens (which
are contiguous in its padded row: left-padded prompt, completion, padding after the stop) into shared rows of
length L >= T (`row_length`, default T; a sequence longer than L / 2 shares a row only with shorter ones),
each sequence a segment: segment ids 1, 2, ... within a row (0 = padding), positions restarting at 0
(copied: the padded positions already count from the first real token). The policy attends within a segment
only (`Policy(..., segment_ids_BT=...)`), so every real token sees the keys it saw padded.

Only the forward runs packed. Its per-token log-probs go back to the padded layout through `unpack_BT`
(`unpack_targets`), and the loss (advantages, masks, weights, sampler log-probs) stays padded: the loss is
the same function of the same log-probs, equal to the padded one up to float summation order.

Groups: the update splits a batch into M strided micro-batches (`rl.update`: micro-batch i holds rows i, i+M,
...) whose rows lie contiguously on the D data-parallel devices. Sequences are packed within their
(micro-batch, device) group into that group's own packed rows, so a micro-batch of packed rows holds exactly
the sequences of the same micro-batch of padded rows, and each device packs its own rows. Packed rows per
group are rounded up to a multiple of ceil(padded rows per group / shapes), so at most `shapes` row counts
compile (`grpo.pack_shapes`, default 8).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.errors import UserError



@dataclasses.dataclass(frozen=True)
class PackPlan:
    """Where each padded token goes. B padded rows of length T, R packed rows of length L."""

    src_RT: np.ndarray  # int32 [R, L]: flat padded index b * T + t of the token at packed (r, j); 0 on padding
    segments_RT: np.ndarray  # int32 [R, L]: segment id within the row, 0 on padding
    unpack_BT: np.ndarray  # int32 [B, T - 1]: micro-batch-local flat index r' * (L - 1) + j of the packed
    # target holding padded target (b, t) (r' = r // M); 0 where (b, t) is not inside a sequence

    @property
    def rows(self) -> int:
        return self.src_RT.shape[0]


def sequence_spans(valid_BT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start_B, length_B) of each row's real tokens; ValueError if they are not contiguous."""
    valid_BT = np.asarray(valid_BT, bool)
    length_B = valid_BT.sum(axis=1)
    start_B = np.where(length_B > 0, valid_BT.argmax(axis=1), 0)
    cols = np.arange(valid_BT.shape[1])
    contiguous = (cols >= start_B[:, None]) & (cols < (start_B + length_B)[:, None])
    if not np.array_equal(contiguous, valid_BT):
        raise ValueError("pack: every row's real tokens must be contiguous (prompt, completion, then padding)")
    return start_B, length_B


def _first_fit_decreasing(rows: list[int], length_B: np.ndarray, capacity: int) -> list[list[int]]:
    """Bins (packed rows) of padded rows, longest first, each into the first bin with room."""
    bins, free = [], []
    for b in sorted(rows, key=lambda b: (-length_B[b], b)):
        k = next((k for k, room in enumerate(free) if room >= length_B[b]), None)
        if k is None:
            bins.append([])
            free.append(capacity)
            k = len(bins) - 1
        bins[k].append(b)
        free[k] -= length_B[b]
    return bins


def plan_packing(valid_BT: np.ndarray, micro_batches: int = 1, devices: int = 1,
                 row_length: int | None = None, shapes: int = 8) -> PackPlan:
    """The packing of the sequences in `valid_BT` ([B, T] bool) for M micro-batches on D devices into rows of
    max(row_length, T) tokens (None: T), in one of at most `shapes` packed row counts."""
    valid_BT = np.asarray(valid_BT, bool)
    b_rows, t = valid_BT.shape
    length = max(row_length or t, t)
    if b_rows % (micro_batches * devices):
        raise UserError(f"grpo.pack: a batch of {b_rows} rows does not split into update.micro_batches="
                        f"{micro_batches} x {devices} data-parallel devices; make it a multiple of "
                        f"{micro_batches * devices}")
    start_B, length_B = sequence_spans(valid_BT)
    per_device = b_rows // devices
    groups = {(i, d): [b for b in range(d * per_device, (d + 1) * per_device) if b % micro_batches == i]
              for i in range(micro_batches) for d in range(devices)}
    bins = {key: _first_fit_decreasing([b for b in rows if length_B[b]], length_B, length)
            for key, rows in groups.items()}
    group_rows = max(len(rows) for rows in groups.values())
    step = -(-group_rows // shapes)
    needed = max(1, max(len(b) for b in bins.values()))
    rows_per_group = min(group_rows, -(-needed // step) * step)
    src_RT = np.zeros((rows_per_group * micro_batches * devices, length), np.int32)
    segments_RT = np.zeros_like(src_RT)
    unpack_BT = np.zeros((b_rows, t - 1), np.int32)
    for (i, d), group_bins in bins.items():
        for k, members in enumerate(group_bins):
            r = d * rows_per_group * micro_batches + k * micro_batches + i  # r % M = i, on device d
            offset = 0
            for segment, b in enumerate(members, start=1):
                n, s = length_B[b], start_B[b]
                src_RT[r, offset:offset + n] = b * t + np.arange(s, s + n)
                segments_RT[r, offset:offset + n] = segment
                # padded target t' (predicting token t' + 1) sits at packed target offset + t' - s
                unpack_BT[b, s:s + n - 1] = (r // micro_batches) * (length - 1) + offset + np.arange(n - 1)
                offset += n
    return PackPlan(src_RT, segments_RT, unpack_BT)


def pack_batch(batch: dict, plan: PackPlan) -> dict:
    """The padded training batch (`rollout_batch`'s keys) with its forward inputs packed: `tokens`,
    `positions`, `valid` and `replay` become [R, ...] (rows of length L), `segments` [R, L] and `target_mask`
    [R, L - 1] (the packed targets to score) join; `unpack` [B, T - 1] maps them back. The loss inputs stay
    padded."""
    src_RT, seg_RT = plan.src_RT, plan.segments_RT
    real_RT = seg_RT > 0
    tokens_BT = np.asarray(batch["tokens"])
    b_rows, t = tokens_BT.shape
    take = lambda x_BT: np.asarray(x_BT).reshape(b_rows * t, *np.shape(x_BT)[2:])[src_RT]
    mask_BT = np.concatenate([np.asarray(batch["mask"], bool), np.zeros((b_rows, 1), bool)], axis=1)
    packed = {**batch, "tokens": np.where(real_RT, take(tokens_BT), 0).astype(tokens_BT.dtype),
              "positions": np.where(real_RT, take(batch["positions"]), 0).astype(np.int32), "valid": real_RT,
              "segments": seg_RT, "target_mask": (take(mask_BT) & real_RT)[:, :-1], "unpack": plan.unpack_BT}
    if "replay" in batch:  # [B, L, T, K] -> [R, L, T, K]
        replay_BTLK = np.moveaxis(np.asarray(batch["replay"]), 1, 2)
        packed["replay"] = np.moveaxis(take(replay_BTLK), 2, 1)
    return packed


def unpack_targets(x_RT: jax.Array, unpack_BT: jax.Array, mask_BT: jax.Array) -> jax.Array:
    """Per-target values of a micro-batch's packed rows in its padded layout; exactly 0 off `mask_BT`."""
    return jnp.where(mask_BT, x_RT.reshape(-1)[unpack_BT], 0.0)


def padding_fraction(valid_BT, slots: int | None = None) -> float:
    """Share of the token slots that are padding: of `valid_BT`'s own, or of `slots` (a packed layout's R * L)."""
    valid_BT = np.asarray(valid_BT, bool)
    slots = valid_BT.size if slots is None else slots
    return 1.0 - float(valid_BT.sum()) / slots
